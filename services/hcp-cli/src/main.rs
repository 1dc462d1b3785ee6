//! `hcp`: see `hcp --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match hcp_cli::cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
