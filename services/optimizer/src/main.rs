//! `hcp-optimizer`: see the crate docs.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hcp_service::main(
        "hcp-optimizer",
        &[hcp_optimizer::DEFAULTS],
        |settings: hcp_optimizer::Settings, mut ctx| async move {
            hcp_optimizer::start(&settings, &mut ctx)?;
            Ok(ctx)
        },
    )
    .await
}
