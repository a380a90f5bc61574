//! The operations endpoints over a real socket: health, readiness (and valves), metrics, status.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice::http::{Status, serve};
use sluice::pipeline::operator::StageStats;
use sluice::telemetry::metrics::PipelineMetrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn health_readiness_metrics_and_status() {
    let spec = sluice::config::parse(
        "ops.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{a: 1}]}\n    - type: LogForTesting\n",
        &Default::default(),
    )
    .unwrap();
    let graph = sluice::pipeline::validate(&spec).unwrap();
    let read = Arc::new(StageStats::default());
    StageStats::add(&read.rows_out, 42);
    read.watermark.store(1_767_225_600_000, Ordering::Relaxed);
    let log = Arc::new(StageStats::default());
    // 2 of Create's 42 records still wait in LogForTesting's inbox.
    StageStats::add(&log.rows_in, 40);
    StageStats::add(&log.errors, 3);
    let valves = Arc::new(sluice::pipeline::valve::Valves::default());
    valves.register("VolumeCheck", sluice::pipeline::valve::ValveKind::Check);
    let metrics = Arc::new(PipelineMetrics {
        pipeline: "ops".into(),
        stages: vec![("Create".into(), read), ("LogForTesting".into(), log)],
        checks: vec![],
        valves: valves.clone(),
        alerts: None,
    });
    let status = Status::new(metrics, &graph);
    let addr = serve("127.0.0.1:0", status.clone()).await.unwrap();

    assert_eq!(
        request(addr, "GET", "/healthz").await,
        (200, "ok".to_string())
    );
    assert_eq!(
        request(addr, "GET", "/readyz").await,
        (503, "not running".to_string())
    );
    status.running.store(true, Ordering::Relaxed);
    assert_eq!(
        request(addr, "GET", "/readyz").await,
        (200, "ready".to_string())
    );
    valves.close(
        "VolumeCheck",
        "row_count: 3 rows (expected at least 10 rows)",
    );
    assert_eq!(
        request(addr, "GET", "/readyz").await,
        (503, "valves closed: VolumeCheck".to_string())
    );
    assert_eq!(
        request(addr, "POST", "/valves/VolumeCheck/open").await.0,
        200
    );
    assert_eq!(request(addr, "POST", "/valves/Nope/open").await.0, 404);
    assert_eq!(request(addr, "GET", "/readyz").await.0, 200);

    let (code, text) = request(addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        text.contains("sluice_records_out_total{pipeline=\"ops\",transform=\"Create\"} 42\n"),
        "{text}"
    );
    assert!(
        text.contains("sluice_errors_total{pipeline=\"ops\",transform=\"LogForTesting\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "sluice_watermark_seconds{pipeline=\"ops\",transform=\"Create\"} 1767225600.0\n"
        ),
        "{text}"
    );

    let (code, body) = request(addr, "GET", "/api/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pipeline"], "ops");
    assert_eq!(
        v["graph"][1],
        serde_json::json!({"name": "LogForTesting", "type": "LogForTesting", "inputs": ["Create"]})
    );
    assert_eq!(v["stages"][1]["errors"], 3);
    assert_eq!(v["stages"][0]["queued"], serde_json::Value::Null);
    assert_eq!(v["stages"][1]["queued"], 2);
    assert_eq!(v["valves"]["VolumeCheck"]["open"], true);
    assert_eq!(v["valves"]["VolumeCheck"]["state"], "open");
    let (code, page) = request(addr, "GET", "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>Sluice status</title>"));
}
