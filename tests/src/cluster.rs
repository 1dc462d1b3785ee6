//! The whole workload path as separate processes: `hcp-gateway`, `hcp-router`,
//! `hcp-resource-manager` and `hcp-gpu-worker`, each started from its built binary against one
//! test's database and namespace, so tests can SIGKILL and restart any of them.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test` does it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{kill_hard, wait_until, TestEnv};

/// The local admin key the cluster's gateway is started with.
pub const ADMIN_KEY: &str = "test-admin-key";

/// Path of a workspace binary next to the test executable's profile directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Svc {
    /// REST + Kafka intake.
    Gateway,
    /// Classification, queue, placement.
    Router,
    /// Allocations.
    ResourceManager,
    /// Simulated GPUs.
    Worker,
}

impl Svc {
    /// Binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Svc::Gateway => "hcp-gateway",
            Svc::Router => "hcp-router",
            Svc::ResourceManager => "hcp-resource-manager",
            Svc::Worker => "hcp-gpu-worker",
        }
    }
}

/// Options for a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated workers (one process), `gpus_per_worker` GPUs each.
    pub workers: u32,
    /// GPUs per worker.
    pub gpus_per_worker: u32,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            gpus_per_worker: 8,
            time_scale: 20.0,
            env: Vec::new(),
        }
    }
}

/// The running processes.
#[derive(Debug)]
pub struct Cluster {
    /// Base URL of the gateway's REST API (`http://127.0.0.1:<port>`).
    pub gateway_url: String,
    gateway_port: u16,
    options: ClusterOptions,
    procs: BTreeMap<Svc, Child>,
    database_url: String,
    brokers: String,
    namespace: String,
}

impl Cluster {
    /// Starts all four services and waits until the gateway answers.
    pub async fn start(env: &TestEnv, options: ClusterOptions) -> Self {
        let mut c = Cluster {
            gateway_port: free_port(),
            gateway_url: String::new(),
            options,
            procs: BTreeMap::new(),
            database_url: env.database_url.clone(),
            brokers: env.kafka.brokers.clone(),
            namespace: env.kafka.namespace.clone(),
        };
        c.gateway_url = format!("http://127.0.0.1:{}", c.gateway_port);
        for svc in [Svc::ResourceManager, Svc::Router, Svc::Worker, Svc::Gateway] {
            c.start_svc(svc);
        }
        c.wait_for_gateway().await;
        c
    }

    /// Starts (or restarts) one service.
    pub fn start_svc(&mut self, svc: Svc) {
        let log = std::env::temp_dir().join(format!("{}-{}.log", self.namespace, svc.binary()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("service log");
        let mut cmd = Command::new(workspace_bin(svc.binary()));
        cmd.env("HCP_DATABASE__URL", &self.database_url)
            .env("HCP_KAFKA__BROKERS", &self.brokers)
            .env("HCP_KAFKA__NAMESPACE", &self.namespace)
            .env("HCP_ADMIN__PORT", "0")
            .env("HCP_TELEMETRY__LOG_FILTER", "info,rdkafka=warn,sqlx=warn")
            .env("HCP_GATEWAY__PORT", self.gateway_port.to_string())
            .env("HCP_GATEWAY__ADMIN_KEY", ADMIN_KEY)
            .env("HCP_WORKER__WORKER_ID", format!("{}-w", self.namespace))
            .env("HCP_WORKER__COUNT", self.options.workers.to_string())
            .env(
                "HCP_WORKER__GPUS_PER_WORKER",
                self.options.gpus_per_worker.to_string(),
            )
            .env(
                "HCP_WORKER__TIME_SCALE",
                self.options.time_scale.to_string(),
            )
            // The tests poll the API; the limiter has its own test.
            .env("HCP_GATEWAY__RATE_LIMITS__FREE__PER_SECOND", "1000")
            .env("HCP_GATEWAY__RATE_LIMITS__FREE__BURST", "1000")
            .env("HCP_GATEWAY__RATE_LIMITS__PRO__PER_SECOND", "1000")
            .env("HCP_GATEWAY__RATE_LIMITS__PRO__BURST", "1000")
            .stdout(Stdio::null())
            .stderr(
                file.try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", svc.binary()));
        if let Some(mut old) = self.procs.insert(svc, child) {
            kill_hard(&mut old);
        }
    }

    /// SIGKILLs one service (no drain, no goodbye).
    pub fn kill(&mut self, svc: Svc) {
        if let Some(mut c) = self.procs.remove(&svc) {
            kill_hard(&mut c);
        }
    }

    /// Stops one service with SIGTERM and waits for it to drain.
    pub fn stop(&mut self, svc: Svc) {
        if let Some(mut c) = self.procs.remove(&svc) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// The log file of a service (for failure messages).
    pub fn log_of(&self, svc: Svc) -> String {
        let log = std::env::temp_dir().join(format!("{}-{}.log", self.namespace, svc.binary()));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Waits until the gateway answers (after a start or a restart).
    pub async fn wait_for_gateway(&mut self) {
        let url = format!("{}/api/v1/openapi.json", self.gateway_url);
        let ok = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(
            ok,
            "the gateway did not answer on {url}; its log:\n{}",
            self.log_of(Svc::Gateway)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            kill_hard(&mut c);
        }
    }
}

/// A tenant's REST client.
#[derive(Debug, Clone)]
pub struct Api {
    /// Gateway base URL.
    pub base: String,
    /// Bearer key.
    pub key: String,
    /// Tenant id.
    pub tenant: String,
    http: reqwest::Client,
}

impl Api {
    /// Creates a tenant with `tier` through the admin API and returns a client with a new key.
    pub async fn tenant(cluster: &Cluster, tenant: &str, tier: &str) -> Api {
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{}/api/v1/admin/tenants", cluster.gateway_url))
            .bearer_auth(ADMIN_KEY)
            .json(&serde_json::json!({"id": tenant, "name": tenant, "tier": tier}))
            .send()
            .await
            .expect("create tenant");
        assert!(
            res.status().is_success() || res.status().as_u16() == 409,
            "create tenant: {}",
            res.status()
        );
        let res = http
            .post(format!(
                "{}/api/v1/admin/tenants/{tenant}/keys",
                cluster.gateway_url
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("create key");
        assert!(res.status().is_success(), "create key: {}", res.status());
        let v: serde_json::Value = res.json().await.expect("key json");
        Api {
            base: cluster.gateway_url.clone(),
            key: v["key"].as_str().expect("key").to_owned(),
            tenant: tenant.to_owned(),
            http,
        }
    }

    /// POST /workloads; returns (status, body).
    pub async fn submit(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let res = self
            .http
            .post(format!("{}/api/v1/workloads", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Submits and returns the workload id, asserting 202.
    pub async fn submit_ok(&self, body: serde_json::Value) -> uuid::Uuid {
        let (status, v) = self.submit(body).await;
        assert_eq!(status, 202, "submit refused: {v}");
        v["workload_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("workload_id")
    }

    /// GET a path under /api/v1; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("get");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POST a path under /api/v1 with no body; returns (status, body).
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POST a JSON body to a path under /api/v1; returns (status, `Location`, body).
    pub async fn post_json(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, Option<String>, serde_json::Value) {
        let res = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (
            status,
            location,
            res.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// The workload's state as the API shows it.
    pub async fn state(&self, id: uuid::Uuid) -> String {
        let (_, v) = self.get(&format!("/workloads/{id}")).await;
        v["state"].as_str().unwrap_or("").to_owned()
    }

    /// Waits until the API shows `state` for the workload.
    pub async fn wait_state(&self, id: uuid::Uuid, state: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(100), || async move {
            self.state(id).await == state
        })
        .await
    }
}

/// One workload event from the log, in global order.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// Stream.
    pub stream_id: String,
    /// Type.
    pub event_type: String,
    /// Payload.
    pub payload: serde_json::Value,
}

/// Every event in the log, in global order.
pub async fn event_log(pool: &hcp_db::sqlx::PgPool) -> Vec<LoggedEvent> {
    let rows: Vec<(String, String, serde_json::Value)> = hcp_db::sqlx::query_as(
        "SELECT stream_id, event_type, payload FROM events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .expect("read the event log");
    rows.into_iter()
        .map(|(stream_id, event_type, payload)| LoggedEvent {
            stream_id,
            event_type,
            payload,
        })
        .collect()
}

/// Replays the log in global order and panics if a GPU is ever held by two workloads at once.
/// Returns how many allocations it replayed.
pub fn assert_no_double_booking(log: &[LoggedEvent]) -> usize {
    use std::collections::HashMap;
    let mut held_by: HashMap<String, String> = HashMap::new();
    let mut holding: HashMap<String, Vec<String>> = HashMap::new();
    let mut allocations = 0;
    for e in log {
        let wid = e.payload["workload_id"].as_str().unwrap_or("").to_owned();
        match e.event_type.as_str() {
            "workload.scheduled" => {
                allocations += 1;
                let gpus: Vec<String> = e.payload["gpu_ids"]
                    .as_array()
                    .expect("gpu_ids")
                    .iter()
                    .map(|g| g.as_str().unwrap_or("").to_owned())
                    .collect();
                for g in &gpus {
                    if let Some(other) = held_by.insert(g.clone(), wid.clone()) {
                        panic!("{g} double-booked: held by {other}, scheduled for {wid}");
                    }
                }
                assert!(
                    holding.insert(wid.clone(), gpus).is_none(),
                    "{wid} scheduled twice without a release"
                );
            }
            "workload.completed" | "workload.failed" | "workload.cancelled"
            | "workload.requeued" => {
                for g in holding.remove(&wid).unwrap_or_default() {
                    held_by.remove(&g);
                }
            }
            _ => {}
        }
    }
    allocations
}
