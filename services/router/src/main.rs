//! `hcp-router`: see the crate docs. Settings: `config/default.toml`, then
//! `services/router/config.toml`, then `HCP_CONFIG`, then `HCP_*` variables.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hcp_service::main(
        "hcp-router",
        &[hcp_router::config::DEFAULTS],
        |settings: hcp_router::Settings, ctx| hcp_router::start(settings, ctx),
    )
    .await
}
