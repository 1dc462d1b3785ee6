//! `hcp-gateway`: the REST API and Kafka intake (see the crate docs). Settings: the common
//! defaults, `services/gateway/config.toml`, then `HCP_CONFIG`, then `HCP_*` variables.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    hcp_service::main(
        hcp_gateway::SERVICE_NAME,
        &[hcp_gateway::config::DEFAULTS],
        hcp_gateway::build,
    )
    .await
}
