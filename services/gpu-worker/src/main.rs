//! `hcp-gpu-worker`: see the crate docs. Runs without PostgreSQL: its own small main with
//! layered settings, logs and traces, the admin server and a drained shutdown on SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hcp_gpu_worker::backend::cuda::runner::CudaBackend;
use hcp_gpu_worker::{BackendKind, Settings, WorkerNode, COMMON_DEFAULTS, DEFAULTS};
use hcp_runtime::Shutdown;
use hcp_telemetry::{AdminServer, Readiness};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hcp-gpu-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings: Settings = hcp_runtime::load_layered(&[COMMON_DEFAULTS, DEFAULTS])?;
    settings.worker.validate()?;
    if settings.worker.backend == BackendKind::Cuda {
        // Before anything else, so a host without a driver gets one clear line and exit 1.
        hcp_gpu_worker::backend::cuda::require(&settings.worker)?;
    }
    let _telemetry = hcp_telemetry::init_tracing(&settings.service_name, &settings.telemetry)?;
    hcp_gpu_worker::metrics::describe();
    hcp_bus::metrics_names::describe();
    let metrics = hcp_telemetry::install_metrics()
        .map_err(|e| anyhow::anyhow!("failed to install the metrics recorder: {e}"))?;
    let shutdown = Shutdown::new(Duration::from_millis(settings.shutdown.drain_deadline_ms));
    let _signals = shutdown.listen_for_signals();

    let readiness = Readiness::default();
    readiness.register("kafka");
    let addr: SocketAddr = format!("{}:{}", settings.admin.host, settings.admin.port)
        .parse()
        .context("invalid admin address")?;
    let admin = AdminServer::bind(addr, metrics, readiness.clone())
        .await
        .with_context(|| format!("failed to bind the admin server on {addr}"))?;
    let admin_task = tokio::spawn(admin.run(shutdown.token()));

    // The worker may start before any service that creates the topics (idempotent).
    hcp_bus::admin::ensure_all_topics(&settings.kafka)
        .await
        .with_context(|| format!("failed to create topics on {}", settings.kafka.brokers))?;
    let (ids, mut node_task) = match settings.worker.backend {
        BackendKind::Sim => {
            let node = WorkerNode::simulated(settings.worker.clone(), settings.kafka.clone());
            (node.worker_ids(), tokio::spawn(node.run(shutdown.token())))
        }
        BackendKind::Cuda => {
            // Opening GPUs (contexts, NVRTC compiles) blocks: off the runtime.
            let worker = settings.worker.clone();
            let backend = tokio::task::spawn_blocking(move || CudaBackend::open(&worker))
                .await
                .context("GPU setup panicked")??;
            let id = settings.worker.base_id();
            let node = WorkerNode::new(
                settings.worker.clone(),
                settings.kafka.clone(),
                vec![(id, backend)],
            );
            (node.worker_ids(), tokio::spawn(node.run(shutdown.token())))
        }
    };
    tracing::info!(
        workers = ids.len(),
        first = ids.first().map(String::as_str).unwrap_or_default(),
        site = %settings.worker.site,
        backend = ?settings.worker.backend,
        brokers = %settings.kafka.brokers,
        "gpu worker starting"
    );
    readiness.set("kafka", true);
    let token = shutdown.token();
    tokio::select! {
        res = &mut node_task => {
            shutdown.trigger();
            res.context("worker task panicked")?.context("worker failed")?;
        }
        _ = token.cancelled() => {
            readiness.set("kafka", false);
            shutdown
                .drain(node_task)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .context("worker task panicked")?
                .context("worker failed")?;
        }
    }
    let _ = admin_task.await;
    Ok(())
}
