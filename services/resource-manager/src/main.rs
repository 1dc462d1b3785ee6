//! `hcp-resource-manager`: see the crate docs.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hcp_service::main(
        "hcp-resource-manager",
        &[hcp_resource_manager::DEFAULTS],
        |settings: hcp_resource_manager::Settings, mut ctx| async move {
            hcp_resource_manager::start(&settings, &mut ctx)?;
            Ok(ctx)
        },
    )
    .await
}
