//! Trace export over OTLP/HTTP reaches a collector. The collector here is a plain HTTP listener
//! on loopback that records what it is sent (a stand-in for Jaeger, a third-party component).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use hcp_telemetry::{init_tracing, TelemetrySettings};

#[test]
fn spans_are_exported_over_otlp_http_when_an_endpoint_is_set() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            // Read headers and body (small) until the peer pauses.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
        }
    });

    let settings = TelemetrySettings {
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    };
    let guard = init_tracing("hcp-otlp-test", &settings).unwrap();
    {
        let span = tracing::info_span!("exported_span_for_test");
        let _g = span.enter();
        tracing::info!("inside");
    }
    drop(guard); // shutdown flushes the batch

    let request = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the collector got a request");
    assert!(
        request.starts_with("POST /v1/traces"),
        "{}",
        &request[..request.len().min(200)]
    );
    assert!(
        request.contains("exported_span_for_test"),
        "the span name is in the payload"
    );
    assert!(
        request.contains("hcp-otlp-test"),
        "the service name is in the resource"
    );
}
