//! The admin server over real HTTP: /health, /ready following readiness, and /metrics with
//! help text and the explicit latency buckets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use hcp_telemetry::{install_metrics, AdminServer, Readiness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    (status, buf)
}

#[tokio::test]
async fn the_admin_server_reports_health_readiness_and_bucketed_metrics() {
    let handle = install_metrics().unwrap();
    metrics::describe_histogram!(
        "hcp_test_op_duration_seconds",
        metrics::Unit::Seconds,
        "Time a test operation took."
    );
    metrics::histogram!("hcp_test_op_duration_seconds").record(0.003);

    let readiness = Readiness::default();
    readiness.register("db");
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), handle, readiness.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(server.run(token.clone()));

    assert_eq!(get(addr, "/health").await.0, 200);
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"db\":false"), "{body}");
    readiness.set("db", true);
    assert_eq!(get(addr, "/ready").await.0, 200);

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# HELP hcp_test_op_duration_seconds Time a test operation took."),
        "{body}"
    );
    assert!(
        body.contains("hcp_test_op_duration_seconds_bucket{le=\"0.0025\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("hcp_test_op_duration_seconds_bucket{le=\"0.005\"} 1"),
        "{body}"
    );

    token.cancel();
    task.await.unwrap().unwrap();
}
