//! Helpers shared by the emulator test files (each is its own crate and includes this module):
//! the emulator connection, resource names, running `sluice`, reading outputs, a webhook
//! receiver.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use serde_json::Value;
use sluice::pubsub::Connection;
use tokio::process::Child;

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

/// Writes the pipeline `yaml` to `dir/p.yaml`; returns its path.
pub fn write_pipeline(dir: &Path, yaml: &str) -> String {
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).expect("write pipeline");
    path.to_str().expect("utf-8 path").to_string()
}

/// The `sluice` binary with `args`, pointed at the emulator (logs at info).
pub fn sluice_command(args: &[&str], conn: &Connection) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .env("PUBSUB_EMULATOR_HOST", host(conn))
        .env("GOOGLE_CLOUD_PROJECT", PROJECT)
        .env("RUST_LOG", "sluice=info")
        .env_remove("SLUICE_STATUS_URL");
    c
}

/// Runs `sluice ARGS` against the emulator to completion.
pub async fn sluice(args: &[&str], conn: &Connection) -> std::process::Output {
    sluice_command(args, conn)
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

/// The committed files in `dir` whose names start with `stem-` (a file sink's outputs: on a
/// stream `stem-N-…` or `stem-START-END-PANE-…`), sorted; temporary files are left out.
pub fn output_names(dir: &Path, stem: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("{stem}-")) && !n.ends_with(".inprogress"))
        .collect();
    names.sort();
    names
}

/// Every JSON line of [`output_names`]`(dir, stem)`, file after file.
pub fn json_outputs(dir: &Path, stem: &str) -> Vec<Value> {
    output_names(dir, stem)
        .iter()
        .flat_map(|n| json_lines(&dir.join(n)))
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

/// Pulls and acknowledges what `name` delivers within 3 s, through the emulator's REST API: the
/// `message` objects (`messageId`, `data` in base64, `attributes`). A unary pull sees a nacked
/// or dead-lettered message at once.
///
/// Every pull says `returnImmediately` and is repeated every 200 ms: a waiting pull that the
/// client gives up on stays open in the emulator for about 90 s and takes the next message that
/// arrives, leasing it to nobody (docs/pubsub.md, "The emulator's zombie streams").
pub async fn rest_pull_messages(conn: &Connection, name: &str) -> Vec<Value> {
    let base = conn.emulator.as_deref().expect("emulator");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let got = loop {
        let r: Value = http
            .post(format!("{base}/v1/{}:pull", sub(name)))
            .json(&serde_json::json!({"maxMessages": 1000, "returnImmediately": true}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("pull")
            .json()
            .await
            .expect("JSON");
        let got = r["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ack_ids: Vec<&str> = got.iter().filter_map(|m| m["ackId"].as_str()).collect();
    if !ack_ids.is_empty() {
        http.post(format!("{base}/v1/{}:acknowledge", sub(name)))
            .json(&serde_json::json!({ "ackIds": ack_ids }))
            .send()
            .await
            .expect("acknowledge");
    }
    got.into_iter().map(|m| m["message"].clone()).collect()
}

pub async fn rest_pull(conn: &Connection, name: &str) -> Vec<String> {
    rest_pull_messages(conn, name)
        .await
        .iter()
        .filter_map(|m| m["messageId"].as_str().map(str::to_string))
        .collect()
}

/// Collects (and acknowledges) everything a subscription delivers, in the background.
pub struct Collector {
    pub got: Arc<Mutex<Vec<Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(conn: &Connection, name: &str) -> Collector {
        let subscriber = conn.subscriber().await.expect("subscriber");
        let got: Arc<Mutex<Vec<Message>>> = Arc::default();
        let sink = got.clone();
        let mut stream = subscriber.subscribe(sub(name)).build();
        let task = tokio::spawn(async move {
            while let Some(Ok((m, h))) = stream.next().await {
                h.ack();
                sink.lock().unwrap().push(m);
            }
        });
        Collector { got, task }
    }

    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until `n` messages arrived (at most `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} messages, got {} within {limit:?}",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `sluice_id` attribute of every message received.
    pub fn ids(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.attributes.get("sluice_id").cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `sluice run FILE --http 127.0.0.1:PORT [extra]`; returns the child and the base URL.
pub fn start(conn: &Connection, file: &Path, extra: &[&str]) -> (Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(file)
        .args(["--http", &addr])
        .args(extra)
        .env("PUBSUB_EMULATOR_HOST", host(conn))
        .env("GOOGLE_CLOUD_PROJECT", PROJECT)
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "sluice=info".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sluice starts");
    (child, format!("http://{addr}"))
}

pub async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

/// Waits until `probe` holds (at most `limit`), polling every 100 ms.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn finish(child: Child) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sluice exits")
        .expect("output")
}

pub fn sigterm(child: &Child) {
    let pid = child.id().expect("running");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
}

/// A stage's `records_out` in the status JSON of the pipeline served at `base`.
pub async fn records_out(base: &str, stage: &str) -> Option<u64> {
    let (_, body) = get(&format!("{base}/api/status")).await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["stages"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stage)?["records_out"]
        .as_u64()
}

/// Publishes `messages` to topic `to` and waits until the emulator accepted every one; returns
/// their message ids in order.
pub async fn publish_all(conn: &Connection, to: &str, messages: Vec<Message>) -> Vec<String> {
    let p = conn
        .publisher(&topic(to), 100, Duration::from_millis(1))
        .await
        .expect("publisher");
    let futures: Vec<_> = messages.into_iter().map(|m| p.publish(m)).collect();
    let mut ids = Vec::with_capacity(futures.len());
    for f in futures {
        ids.push(f.await.expect("published"));
    }
    ids
}

// --- Postgres sinks and fault schedules (faults_emulator.rs, streams_emulator.rs) ---

/// `host:port` of the test Postgres: `SLUICE_TEST_PG_ADDR` (set for the private server
/// emulator-tests/stores-emulator.sh starts), else 127.0.0.1:5432. User `postgres` (trust auth).
pub fn pg_addr() -> String {
    std::env::var("SLUICE_TEST_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

/// `host:port` of the test Redis: `SLUICE_TEST_REDIS_ADDR`, else 127.0.0.1:6379.
pub fn redis_addr() -> String {
    std::env::var("SLUICE_TEST_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// The test Postgres, database `test`.
pub fn pg_url() -> String {
    format!("postgres://postgres@{}/test", pg_addr())
}

/// The test Redis, database 0.
pub fn redis_url() -> String {
    format!("redis://{}/", redis_addr())
}

pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("postgres");
    tokio::spawn(conn);
    client
}

pub async fn drop_table(table: &str) {
    pg().await
        .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .expect("drop table");
}

/// A small deterministic generator for kill schedules (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        Duration::from_millis(lo_ms + r % (hi_ms - lo_ms).max(1))
    }
}

/// `SLUICE_FAULT_SEED`, or one from the clock (print it, so a schedule can be replayed).
pub fn seed() -> u64 {
    std::env::var("SLUICE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        })
}

/// Starts `sluice run FILE [extra]` with its log in `log` (read after a kill: a pipe nobody
/// reads could fill up and stall the worker).
pub fn worker(conn: &Connection, file: &str, extra: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let mut args = vec!["run", file];
    args.extend_from_slice(extra);
    sluice_command(&args, conn)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("sluice starts")
}

/// Fails with the entries that differ (not two whole maps).
pub fn assert_totals<K: std::fmt::Debug + Ord, V: std::fmt::Debug + PartialEq>(
    got: &std::collections::BTreeMap<K, V>,
    want: &std::collections::BTreeMap<K, V>,
    context: &str,
) {
    let mut diff = Vec::new();
    for (k, w) in want {
        if got.get(k) != Some(w) {
            diff.push(format!("{k:?}: got {:?}, want {w:?}", got.get(k)));
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            diff.push(format!("{k:?}: got {g:?}, want nothing"));
        }
    }
    assert!(
        diff.is_empty(),
        "{context}: {} of {} rows differ, e.g.\n{}",
        diff.len(),
        want.len(),
        diff.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
}
