//! `hcp-workload-gen`: submits a realistic mix of AI workloads over REST or Kafka at a set
//! rate and prints progress every second. See `--help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match hcp_workload_gen::run(<hcp_workload_gen::Args as clap::Parser>::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp-workload-gen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
