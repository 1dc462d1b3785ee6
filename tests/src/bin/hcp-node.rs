//! The `hcp` binary under another name, so the crash tests can start it as a child process
//! and SIGKILL it (Cargo exposes only a package's own binaries to its tests).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match hcp_cli::cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
