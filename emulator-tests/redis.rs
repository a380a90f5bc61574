//! `WriteToRedis` against a real server (at `SLUICE_TEST_REDIS_ADDR`; see
//! emulator-tests/run-stores-tests.sh, which starts a private one). Every test writes under its own key prefix. Without
//! the server these tests fail: they never skip.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};
use sluice::sinks::redis::WriteToRedis;

fn url() -> String {
    format!("redis://{}", support::redis_addr())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000)
}

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running at SLUICE_TEST_REDIS_ADDR (emulator-tests/run-stores-tests.sh starts it)")
}

/// Every key under `prefix` with its type and contents, for exact comparisons.
async fn dump(c: &mut redis::aio::MultiplexedConnection, prefix: &str) -> BTreeMap<String, Value> {
    let keys: Vec<String> = c.keys(format!("{prefix}*")).await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let ty: String = redis::cmd("TYPE").arg(&k).query_async(c).await.unwrap();
        let v = match ty.as_str() {
            "hash" => {
                let h: BTreeMap<String, String> = c.hgetall(&k).await.unwrap();
                json!(h)
            }
            "string" => {
                let s: String = c.get(&k).await.unwrap();
                json!(s)
            }
            "zset" => {
                let z: Vec<(String, f64)> = c.zrange_withscores(&k, 0, -1).await.unwrap();
                json!(z)
            }
            other => json!(other),
        };
        out.insert(k, v);
    }
    out
}

async fn clear(c: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = c.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = c.del(keys).await.unwrap();
    }
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn pipeline(input: &Path, sink: &str, config: &str, errors: &Path) -> String {
    format!(
        r#"
options: {{batch_size: 500}}
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config: {{path: "{input}"}}
    - type: WriteToRedis
      name: {sink}
      input: Read
      config: {config}
      error_handling: {{output: rejected}}
    - type: WriteToJson
      name: Rejected
      input: {sink}.rejected
      config: {{path: "{errors}"}}
"#,
        input = input.display(),
        errors = errors.display()
    )
}

#[tokio::test]
async fn hash_mode_writes_exact_hashes_with_ttl_and_a_replay_changes_nothing() {
    let mut c = conn().await;
    let p = unique("t:hash:");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"recipe_id": "r1", "window_start": "10:00", "views": 3, "title": "Soup"}),
            json!({"recipe_id": "r2", "window_start": "10:00", "views": 1, "title": "Pie"}),
            // A later pane of (r1, 10:00): replaces the first, and its null title is removed.
            json!({"recipe_id": "r1", "window_start": "10:00", "views": 7, "title": null}),
        ],
    );
    let url = url();
    let cfg = format!(
        "{{url: \"{url}\", key: \"{p}recipe:{{recipe_id}}:views:{{window_start}}\", \
         fields: [views, title], ttl: 1h}}"
    );
    let spec = parse(
        "r.yaml",
        &pipeline(&input, "Hashes", &cfg, &dir.path().join("err")),
    );
    run_spec(&spec).await.unwrap();
    let want: BTreeMap<String, Value> = [
        (format!("{p}recipe:r1:views:10:00"), json!({"views": "7"})),
        (
            format!("{p}recipe:r2:views:10:00"),
            json!({"views": "1", "title": "Pie"}),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(dump(&mut c, &p).await, want);
    let ttl: i64 = c.ttl(format!("{p}recipe:r2:views:10:00")).await.unwrap();
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    run_spec(&spec).await.unwrap();
    assert_eq!(dump(&mut c, &p).await, want);
    clear(&mut c, &p).await;
}

#[tokio::test]
async fn json_string_and_zset_modes() {
    let mut c = conn().await;
    let p = unique("t:modes:");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"recipe_id": "r1", "hour": "10", "views": 30, "title": "Soup"}),
            json!({"recipe_id": "r2", "hour": "10", "views": 12, "title": "Pie"}),
            json!({"recipe_id": "r1", "hour": "11", "views": 4, "title": "Soup"}),
            json!({"recipe_id": "r2", "hour": "10", "views": 15, "title": "Pie"}),
        ],
    );
    let url = url();
    let text = format!(
        r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config: {{path: "{input}"}}
    - type: WriteToRedis
      name: Top
      input: Read
      config: {{url: "{url}", mode: zset, key: "{p}top:{{hour}}", member: "{{recipe_id}}", score: views}}
    - type: WriteToRedis
      name: Json
      input: Read
      config: {{url: "{url}", mode: json, key: "{p}json:{{recipe_id}}:{{hour}}"}}
    - type: WriteToRedis
      name: Title
      input: Read
      config: {{url: "{url}", mode: string, key: "{p}title:{{recipe_id}}", value: title, ttl: 30s}}
"#,
        input = input.display()
    );
    let spec = parse("r.yaml", &text);
    run_spec(&spec).await.unwrap();
    let want: BTreeMap<String, Value> = [
        (format!("{p}top:10"), json!([["r2", 15.0], ["r1", 30.0]])),
        (format!("{p}top:11"), json!([["r1", 4.0]])),
        (
            format!("{p}json:r1:10"),
            json!(r#"{"recipe_id":"r1","hour":"10","views":30,"title":"Soup"}"#),
        ),
        (
            format!("{p}json:r1:11"),
            json!(r#"{"recipe_id":"r1","hour":"11","views":4,"title":"Soup"}"#),
        ),
        (
            format!("{p}json:r2:10"),
            json!(r#"{"recipe_id":"r2","hour":"10","views":15,"title":"Pie"}"#),
        ),
        (format!("{p}title:r1"), json!("Soup")),
        (format!("{p}title:r2"), json!("Pie")),
    ]
    .into_iter()
    .collect();
    assert_eq!(dump(&mut c, &p).await, want);
    run_spec(&spec).await.unwrap();
    assert_eq!(dump(&mut c, &p).await, want);
    clear(&mut c, &p).await;
}

#[tokio::test]
async fn killed_connections_are_retried_and_nothing_is_lost() {
    let mut c = conn().await;
    let p = unique("t:kill:");
    let sink = unique("Store");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let n = 30_000;
    let rows: Vec<Value> = (0..n)
        .map(|i| json!({"id": i, "views": i * 2, "title": format!("recipe {i}")}))
        .collect();
    write_jsonl(&input, &rows);
    let url = url();
    let cfg = format!("{{url: \"{url}\", key: \"{p}{{id}}\"}}");
    let spec = parse(
        "r.yaml",
        &pipeline(&input, &sink, &cfg, &dir.path().join("err")),
    );
    let name = WriteToRedis::client_name(&sink);
    let killer = tokio::spawn(async move {
        let mut c = conn().await;
        let mut kills = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while kills < 3 && tokio::time::Instant::now() < deadline {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap();
            let ids: Vec<String> = list
                .lines()
                .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .map(str::to_string)
                .collect();
            for id in &ids {
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
            if ids.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            } else {
                kills += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        kills
    });
    run_spec(&spec).await.unwrap();
    let kills = killer.await.unwrap();
    assert!(kills >= 1, "the test never caught the sink's connection");
    let state = dump(&mut c, &p).await;
    assert_eq!(state.len(), n);
    for i in [0, 1, n / 2, n - 1] {
        assert_eq!(
            state[&format!("{p}{i}")],
            json!({"id": i.to_string(), "views": (i * 2).to_string(), "title": format!("recipe {i}")})
        );
    }
    assert!(read_json_outputs(&dir.path().join("err")).is_empty());
    run_spec(&spec).await.unwrap();
    assert_eq!(dump(&mut c, &p).await, state);
    clear(&mut c, &p).await;
    eprintln!("killed the sink's connection {kills} times");
}

#[tokio::test]
async fn rows_that_cannot_be_written_reach_the_error_output() {
    let mut c = conn().await;
    let p = unique("t:bad:");
    // A key that already holds a string: ZADD gets WRONGTYPE for that row only.
    let _: () = c.set(format!("{p}top:wrong"), "x").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"board": "ok", "recipe_id": "r1", "score": "1.5", "note": "fine"}),
            json!({"board": null, "recipe_id": "r2", "score": "2", "note": "no key"}),
            json!({"board": "ok", "recipe_id": "r3", "score": "lots", "note": "bad score"}),
            json!({"board": "ok", "recipe_id": "r4".repeat(40), "score": "3", "note": "long member"}),
            json!({"board": "wrong", "recipe_id": "r5", "score": "4", "note": "wrong type"}),
            json!({"board": "ok", "recipe_id": "r6", "score": "-2e3", "note": "fine"}),
        ],
    );
    let errors = dir.path().join("err");
    let url = url();
    let cfg = format!(
        "{{url: \"{url}\", mode: zset, key: \"{p}top:{{board}}\", member: \"{{recipe_id}}\", \
         score: score, max_value_bytes: 64}}"
    );
    let spec = parse("r.yaml", &pipeline(&input, "Board", &cfg, &errors));
    run_spec(&spec).await.unwrap();
    let state = dump(&mut c, &p).await;
    assert_eq!(
        state[&format!("{p}top:ok")],
        json!([["r6", -2000.0], ["r1", 1.5]])
    );
    let rejected = read_json_outputs(&errors);
    let why = |note: &str| -> String {
        rejected
            .iter()
            .find(|r| r["element"].as_str().unwrap().contains(note))
            .map(|r| r["msg"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no error for {note}: {rejected:#?}"))
    };
    assert_eq!(rejected.len(), 4, "{rejected:#?}");
    assert!(why("no key").contains("key field `board` is null"));
    assert!(why("bad score").contains("not a number: lots"));
    assert!(why("long member").contains("over max_value_bytes"));
    assert!(
        why("wrong type").contains("WRONGTYPE"),
        "{}",
        why("wrong type")
    );
    clear(&mut c, &p).await;
}
