//! Helpers shared by the emulator test files (each is its own crate and includes this module):
//! the emulator connection, resource names, running `sluice`, reading outputs, a webhook
//! receiver.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice::pubsub::Connection;

pub const PROJECT: &str = "test-project";

/// The emulator from `PUBSUB_EMULATOR_HOST`. Without it a test returns early with a note,
/// unless `SLUICE_REQUIRE_EMULATORS` is set (as the scripts do): then it fails, so a script's
/// run can never pass by skipping.
pub fn emulator() -> Option<Connection> {
    match std::env::var("PUBSUB_EMULATOR_HOST") {
        Ok(h) if !h.trim().is_empty() => Some(Connection {
            emulator: Some(format!("http://{h}")),
            project: Some(PROJECT.into()),
        }),
        _ => {
            assert!(
                std::env::var_os("SLUICE_REQUIRE_EMULATORS").is_none(),
                "SLUICE_REQUIRE_EMULATORS is set but PUBSUB_EMULATOR_HOST is not"
            );
            eprintln!(
                "note: PUBSUB_EMULATOR_HOST is not set; run emulator-tests/run-pubsub-tests.sh"
            );
            None
        }
    }
}

/// Resource ids unique to this test and process (ids must start with a letter, ≥ 3 chars).
pub fn ids(test: &str) -> impl Fn(&str) -> String {
    let pid = std::process::id();
    let test = test.to_string();
    move |what: &str| format!("{test}-{what}-{pid}")
}

pub fn topic(name: &str) -> String {
    format!("projects/{PROJECT}/topics/{name}")
}

pub fn sub(name: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{name}")
}

/// `host:port` of the emulator, as `PUBSUB_EMULATOR_HOST` wants it.
pub fn host(conn: &Connection) -> String {
    conn.emulator
        .as_deref()
        .expect("emulator")
        .trim_start_matches("http://")
        .to_string()
}

/// Runs `sluice ARGS` against the emulator to completion.
pub async fn sluice(args: &[&str], conn: &Connection) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("PUBSUB_EMULATOR_HOST", host(conn))
        .env("GOOGLE_CLOUD_PROJECT", PROJECT)
        .env("RUST_LOG", "sluice=info")
        .env_remove("SLUICE_STATUS_URL")
        .output()
        .await
        .expect("the sluice binary runs")
}

pub fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A webhook receiver on a loopback port that keeps every JSON body posted to `/hook`; returns
/// its URL and the bodies.
pub async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().expect("not poisoned").push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, bodies)
}

pub async fn create_topic(conn: &Connection, name: &str) {
    conn.topic_admin()
        .await
        .expect("admin")
        .create_topic()
        .set_name(topic(name))
        .send()
        .await
        .expect("create topic");
}

pub async fn create_subscription(conn: &Connection, name: &str, on_topic: &str) {
    conn.subscription_admin()
        .await
        .expect("admin client")
        .create_subscription()
        .set_name(sub(name))
        .set_topic(topic(on_topic))
        .set_ack_deadline_seconds(10)
        .send()
        .await
        .expect("create subscription");
}
