//! OpenTelemetry export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a run of the real binary sends
//! its batch spans and its counters over OTLP/HTTP to a local receiver.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_batch_spans_and_counters_over_otlp() {
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .fallback(
            |State(s): State<Received>, uri: Uri, body: Bytes| async move {
                s.lock()
                    .unwrap()
                    .push((uri.path().to_string(), body.to_vec()));
                ""
            },
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otlp.yaml");
    std::fs::write(
        &file,
        "options: {name: otlp_test}\npipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{id: 1}, {id: 2}, {id: 3}]}\n    - type: LogForTesting\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&file)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("RUST_LOG", "sluice=info")
        .env("SLUICE_LOG_FORMAT", "json")
        .env_remove("GOOGLE_CLOUD_PROJECT")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // LogForTesting logs each row inside its batch span: the lines carry that span's trace id,
    // which is the one exported.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let trace_ids: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sluice::transforms::log")
        .map(|v| {
            v["logging.googleapis.com/trace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(trace_ids.len(), 3, "{stderr}");
    assert!(
        trace_ids
            .iter()
            .all(|t| t == &trace_ids[0] && t.len() == 32),
        "{trace_ids:?}"
    );
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_ids[0][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let got = got.lock().unwrap();
    let traces: Vec<&Vec<u8>> = got
        .iter()
        .filter(|(p, _)| p == "/v1/traces")
        .map(|(_, b)| b)
        .collect();
    assert!(
        traces.iter().any(|b| contains(b, b"batch")
            && contains(b, b"LogForTesting")
            && contains(b, &trace_bytes)),
        "no batch span of LogForTesting with the logged trace id in {} trace exports",
        traces.len()
    );
    assert!(
        traces.iter().any(|b| contains(b, b"Create")),
        "no batch span of the source `Create` in {} trace exports (paths: {:?})",
        traces.len(),
        got.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(
        got.iter().any(|(p, b)| p == "/v1/metrics"
            && contains(b, b"sluice_records_in")
            && contains(b, b"otlp_test")),
        "no sluice_records_in export (paths: {:?})",
        got.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
}
