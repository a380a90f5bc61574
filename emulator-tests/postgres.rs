//! `WriteToPostgres` against a real server (database `test`, at `SLUICE_TEST_PG_ADDR`; see
//! emulator-tests/run-stores-tests.sh, which starts a private one). Every test writes its own table, named with a unique
//! suffix. Without the server these tests fail: they never skip.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sluice::sinks::postgres::WriteToPostgres;

fn url() -> String {
    support::pg_url()
}

fn jdbc_url() -> String {
    format!("jdbc:postgresql://{}/test", support::pg_addr())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("{}?application_name=sluice-tests", url()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("Postgres must be running at SLUICE_TEST_PG_ADDR (emulator-tests/run-stores-tests.sh starts it)");
    tokio::spawn(conn);
    client
}

/// The table's rows as JSON objects, ordered by `order`.
async fn table_rows(c: &tokio_postgres::Client, table: &str, order: &str) -> Vec<Value> {
    let q = format!("SELECT coalesce(json_agg(t ORDER BY {order}), '[]') FROM {table} t");
    let v: Value = c.query_one(&q, &[]).await.unwrap().get(0);
    v.as_array().unwrap().clone()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A pipeline reading `input` into `WriteToPostgres` (named `sink`) with `config`, its error
/// output written as JSON Lines under `errors`.
fn pipeline(input: &Path, sink: &str, config: &str, errors: &Path) -> String {
    format!(
        r#"
options: {{batch_size: 500}}
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config: {{path: "{input}"}}
    - type: WriteToPostgres
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

fn views(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "recipe_id": format!("r{:05}", i % (n / 2).max(1)),
                "window_start": format!("2026-11-26T10:{:02}:00Z", (i / (n / 2).max(1)) % 60),
                "views": i as i64,
                "rating": (i % 7) as f64 / 2.0,
                "featured": i % 3 == 0,
                "tags": ["a", format!("t{}", i % 4)],
            })
        })
        .collect()
}

#[tokio::test]
async fn upsert_writes_exact_rows_and_a_replay_leaves_the_table_unchanged() {
    let c = client().await;
    let table = unique("views");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // Two panes of one window: the later row of (r1, 10:00) must win.
    let rows = vec![
        json!({"recipe_id": "r1", "window_start": "10:00", "views": 3, "rating": 4.5, "featured": true, "tags": ["x"]}),
        json!({"recipe_id": "r2", "window_start": "10:00", "views": 1, "rating": null, "featured": false, "tags": []}),
        json!({"recipe_id": "r1", "window_start": "10:00", "views": 5, "rating": 4.25, "featured": true, "tags": ["x", "y"]}),
        json!({"recipe_id": "r1", "window_start": "10:01", "views": 2, "rating": 3.5, "featured": false, "tags": ["it's"]}),
    ];
    write_jsonl(&input, &rows);
    let url = url();
    let cfg = format!(
        "{{url: \"{url}\", table: {table}, upsert_key: [recipe_id, window_start], tls: disable}}"
    );
    let spec = parse(
        "pg.yaml",
        &pipeline(&input, "Store", &cfg, &dir.path().join("err")),
    );
    run_spec(&spec).await.unwrap();
    let expected = vec![
        json!({"recipe_id": "r1", "window_start": "10:00", "views": 5, "rating": 4.25, "featured": true, "tags": ["x", "y"]}),
        json!({"recipe_id": "r1", "window_start": "10:01", "views": 2, "rating": 3.5, "featured": false, "tags": ["it's"]}),
        json!({"recipe_id": "r2", "window_start": "10:00", "views": 1, "rating": null, "featured": false, "tags": []}),
    ];
    let order = "recipe_id, window_start";
    assert_eq!(table_rows(&c, &table, order).await, expected);
    // The table was created from the Arrow schema, keyed on upsert_key.
    let types: Vec<(String, String)> = c
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want = [
        ("recipe_id", "text"),
        ("window_start", "text"),
        ("views", "bigint"),
        ("rating", "double precision"),
        ("featured", "boolean"),
        ("tags", "jsonb"),
    ];
    assert_eq!(
        types,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let pk: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index i WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, 1);

    // Replaying the same input leaves the table exactly as it was.
    run_spec(&spec).await.unwrap();
    assert_eq!(table_rows(&c, &table, order).await, expected);
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn killed_connections_are_retried_and_nothing_is_lost() {
    let c = client().await;
    let table = unique("killed");
    let sink = unique("Store");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let n = 40_000;
    write_jsonl(&input, &views(n));
    let url = url();
    let cfg = format!(
        "{{url: \"{url}\", table: {table}, upsert_key: [recipe_id, window_start], batch_size: 100}}"
    );
    let spec = parse(
        "pg.yaml",
        &pipeline(&input, &sink, &cfg, &dir.path().join("err")),
    );
    let app = WriteToPostgres::application_name(&sink);

    // Kill the sink's sessions a few times while it writes.
    let killer = tokio::spawn(async move {
        let c = client().await;
        let mut kills = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while kills < 3 && tokio::time::Instant::now() < deadline {
            let killed: i64 = c
                .query_one(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1) k",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            if killed > 0 {
                kills += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        kills
    });
    run_spec(&spec).await.unwrap();
    let kills = killer.await.unwrap();
    assert!(kills >= 1, "the test never caught the sink's connection");

    let check = format!("SELECT count(*), sum(views)::bigint FROM {table}");
    let row = c.query_one(&check, &[]).await.unwrap();
    let (count, sum): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(count, n as i64);
    assert_eq!(sum, (0..n as i64).sum::<i64>());
    let before = table_rows(&c, &table, "recipe_id, window_start").await;
    assert!(read_json_outputs(&dir.path().join("err")).is_empty());

    // Same input again: identical state.
    run_spec(&spec).await.unwrap();
    assert_eq!(
        table_rows(&c, &table, "recipe_id, window_start").await,
        before
    );
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    eprintln!("killed the sink's connection {kills} times");
}

#[tokio::test]
async fn rows_the_database_refuses_reach_the_error_output_and_the_rest_are_written() {
    let c = client().await;
    let table = unique("strict");
    c.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name varchar(5) NOT NULL, \
         qty integer CHECK (qty >= 0))"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut rows = Vec::new();
    let mut good = Vec::new();
    for i in 0..1000i64 {
        let row = match i {
            17 => json!({"id": i, "name": "far too long", "qty": 1}),
            400 => json!({"id": i, "name": "neg", "qty": -1}),
            401 => json!({"id": i, "name": null, "qty": 1}),
            999 => json!({"id": i, "name": "big", "qty": 3_000_000_000i64}),
            _ => {
                let r = json!({"id": i, "name": format!("n{}", i % 100), "qty": i});
                good.push(r.clone());
                r
            }
        };
        rows.push(row);
    }
    // A null key cannot be upserted: rejected before it reaches the database.
    rows.push(json!({"id": null, "name": "nokey", "qty": 0}));
    write_jsonl(&input, &rows);
    let errors = dir.path().join("err");
    let jdbc = jdbc_url();
    let cfg = format!(
        "{{url: \"{jdbc}\", username: postgres, table: {table}, \
         upsert_key: [id], create_table: false, batch_size: 250}}"
    );
    let spec = parse("pg.yaml", &pipeline(&input, "Strict", &cfg, &errors));
    run_spec(&spec).await.unwrap();
    assert_eq!(table_rows(&c, &table, "id").await, good);

    let mut rejected = read_json_outputs(&errors);
    rejected.sort_by_key(|r| r["msg"].as_str().unwrap().to_string());
    let msgs: Vec<&str> = rejected
        .iter()
        .map(|r| r["msg"].as_str().unwrap())
        .collect();
    assert_eq!(rejected.len(), 5, "{msgs:#?}");
    let has = |code: &str, id: &str| {
        rejected.iter().any(|r| {
            r["msg"].as_str().unwrap().contains(code)
                && r["element"].as_str().unwrap().contains(id)
                && r["transform"] == "Strict"
        })
    };
    assert!(has("SQLSTATE 22001", "\"id\":17"), "{msgs:#?}"); // value too long
    assert!(has("SQLSTATE 23514", "\"id\":400"), "{msgs:#?}"); // check constraint
    assert!(has("SQLSTATE 23502", "\"id\":401"), "{msgs:#?}"); // not null
    assert!(has("SQLSTATE 22003", "\"id\":999"), "{msgs:#?}"); // integer out of range
    assert!(has("upsert key field `id` is null", "nokey"), "{msgs:#?}");
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn beam_write_statement_and_tls_require() {
    let c = client().await;
    let table = unique("stmt");
    c.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, at timestamptz)"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"id": 1, "name": "o'brien", "at": "2026-11-26 10:00:00"}),
            json!({"id": 2, "name": "?", "at": "2026-11-26T10:01:00Z"}),
            json!({"id": 1, "name": "again", "at": "2026-11-26 10:02:00"}),
        ],
    );
    let stmt = format!(
        "INSERT INTO {table} (id, name, at) VALUES (?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, at = EXCLUDED.at"
    );
    let jdbc = jdbc_url();
    let cfg = format!(
        "{{jdbc_url: \"{jdbc}\", username: postgres, \
         write_statement: \"{stmt}\", tls: require}}"
    );
    let spec = parse(
        "pg.yaml",
        &pipeline(&input, "Beam", &cfg, &dir.path().join("err")),
    );
    run_spec(&spec).await.unwrap();
    let rows = c
        .query(
            &format!("SELECT id, name, to_char(at AT TIME ZONE 'UTC', 'HH24:MI') FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "again".to_string(), "10:02".to_string()),
            (2, "?".to_string(), "10:01".to_string())
        ]
    );
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_table_without_create_table_stops_the_run_with_a_config_error() {
    let _ = client().await;
    let table = unique("absent");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &[json!({"id": 1})]);
    let url = url();
    let cfg = format!("{{url: \"{url}\", table: {table}, create_table: false}}");
    let spec = parse(
        "pg.yaml",
        &pipeline(&input, "Absent", &cfg, &dir.path().join("err")),
    );
    let Err(err) = run_spec(&spec).await else {
        panic!("the run should fail")
    };
    assert!(
        matches!(err, sluice::pipeline::EngineError::Config { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}
