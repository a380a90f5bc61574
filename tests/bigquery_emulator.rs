//! `WriteToBigQuery`, `ReadFromBigQuery`, `sluice setup` and the dashboard views against the
//! BigQuery emulator (bqemulator 1.4.0). Run with `emulator-tests/run-bigquery-tests.sh`, which
//! starts the emulator and exports `BIGQUERY_EMULATOR_HOST`; without it every test FAILS (it
//! does not skip). Each test uses its own dataset. Tables are read back through REST
//! (`jobs.query`), independently of the code under test.

mod common;

use common::*;
use serde_json::{Value, json};

const PROJECT: &str = "test-project";

fn base() -> String {
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!(
            "BIGQUERY_EMULATOR_HOST is not set: run these tests with emulator-tests/run-bigquery-tests.sh"
        )
    });
    format!("http://{host}/bigquery/v2/projects/{PROJECT}")
}

async fn post(path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "POST {path}: {status} {v}");
    v
}

async fn get(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn create_dataset(ds: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/datasets", base()))
        .json(&json!({"datasetReference": {"projectId": PROJECT, "datasetId": ds}}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success() || resp.status().as_u16() == 409,
        "{}",
        resp.status()
    );
}

async fn create_table(ds: &str, table: &str, fields: Value) {
    create_dataset(ds).await;
    post(
        &format!("/datasets/{ds}/tables"),
        json!({
            "tableReference": {"projectId": PROJECT, "datasetId": ds, "tableId": table},
            "schema": {"fields": fields}
        }),
    )
    .await;
}

async fn insert(ds: &str, table: &str, rows: Value) {
    let rows: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!({"json": r}))
        .collect();
    let v = post(
        &format!("/datasets/{ds}/tables/{table}/insertAll"),
        json!({"rows": rows}),
    )
    .await;
    assert!(
        v["insertErrors"].as_array().is_none_or(|e| e.is_empty()),
        "{v}"
    );
}

/// Runs `sql` and returns the rows as plain JSON objects (cells as BigQuery returns them:
/// strings, TIMESTAMP as int64 µs, RECORD/REPEATED unwrapped).
async fn query(sql: &str) -> Vec<Value> {
    let v = post("/queries", json!({"query": sql, "useLegacySql": false})).await;
    assert!(v["errors"].as_array().is_none_or(|e| e.is_empty()), "{v}");
    let fields = v["schema"]["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    v["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| unwrap_row(&fields, r))
        .collect()
}

fn unwrap_row(fields: &[Value], row: &Value) -> Value {
    let cells = row["f"].as_array().cloned().unwrap_or_default();
    let mut obj = serde_json::Map::new();
    for (f, c) in fields.iter().zip(cells) {
        obj.insert(
            f["name"].as_str().unwrap().to_string(),
            unwrap_cell(f, &c["v"]),
        );
    }
    Value::Object(obj)
}

fn unwrap_cell(field: &Value, v: &Value) -> Value {
    if field["mode"] == "REPEATED" {
        let mut one = field.clone();
        one["mode"] = json!("NULLABLE");
        return Value::Array(
            v.as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|x| unwrap_cell(&one, &x["v"]))
                .collect(),
        );
    }
    if field["type"] == "RECORD" && v.is_object() {
        return unwrap_row(field["fields"].as_array().unwrap(), v);
    }
    v.clone()
}

async fn run_err(spec: &sluice::config::PipelineSpec) -> String {
    match run_spec(spec).await {
        Ok(_) => panic!("the run should fail"),
        Err(e) => e.to_string(),
    }
}

fn yaml(text: &str) -> sluice::config::PipelineSpec {
    parse("bq.yaml", text)
}

#[tokio::test]
async fn write_creates_the_table_and_stores_exact_rows() {
    let spec = yaml(
        "
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements:
          - {name: a, qty: 1, price: 1.5, ok: true, tags: [x, y], dims: {w: 2}}
          - {name: b, qty: 2, price: 0.25, ok: false, tags: [], dims: {w: 3}}
    - type: WriteToBigQuery
      config:
        table: test-project.w_exact.items
",
    );
    run_spec(&spec).await.unwrap();
    let rows = query(
        "SELECT name, qty, price, ok, tags, dims FROM `test-project.w_exact.items` ORDER BY name",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            json!({"name": "a", "qty": "1", "price": "1.5", "ok": "true", "tags": ["x", "y"], "dims": {"w": "2"}}),
            json!({"name": "b", "qty": "2", "price": "0.25", "ok": "false", "tags": [], "dims": {"w": "3"}}),
        ]
    );
    let table = get("/datasets/w_exact/tables/items").await;
    let types: Vec<(String, String, String)> = table["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
                f["mode"].as_str().unwrap_or("NULLABLE").to_string(),
            )
        })
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        types,
        vec![
            t("name", "STRING", "NULLABLE"),
            t("qty", "INT64", "NULLABLE"),
            t("price", "FLOAT64", "NULLABLE"),
            t("ok", "BOOL", "NULLABLE"),
            t("tags", "STRING", "REPEATED"),
            t("dims", "RECORD", "NULLABLE"),
        ]
    );
}

#[tokio::test]
async fn rejected_rows_reach_the_error_output_with_the_reason() {
    create_table(
        "w_errors",
        "counts",
        json!([{"name": "k", "type": "STRING"}, {"name": "n", "type": "INT64"}]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("errors");
    let spec = yaml(&format!(
        "
pipeline:
  transforms:
    - type: Create
      name: Rows
      config:
        elements:
          - {{k: a, n: '12'}}
          - {{k: b, n: not-a-number}}
          - {{k: c, n: '7'}}
    - type: WriteToBigQuery
      name: Write
      input: Rows
      config:
        table: test-project:w_errors.counts
        create_disposition: CREATE_NEVER
        error_handling:
          output: rejected
    - type: WriteToJson
      name: Errors
      input: Write.rejected
      config:
        path: {}
",
        out.display()
    ));
    let report = run_spec(&spec).await.unwrap();
    assert_eq!(stat(&report, "Write").2, 1);
    let rows = query("SELECT k, n FROM `test-project.w_errors.counts` ORDER BY k").await;
    assert_eq!(
        rows,
        vec![json!({"k": "a", "n": "12"}), json!({"k": "c", "n": "7"})]
    );
    let errors = read_json_outputs(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e["transform"], "Write");
    assert_eq!(
        serde_json::from_str::<Value>(e["element"].as_str().unwrap()).unwrap(),
        json!({"k": "b", "n": "not-a-number"})
    );
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("BigQuery rejected the row: invalid"),
        "{msg}"
    );
}

#[tokio::test]
async fn create_never_fails_on_a_missing_table() {
    create_dataset("w_never").await;
    let spec = yaml(
        "
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{a: 1}]
    - type: WriteToBigQuery
      config:
        table: test-project.w_never.missing
        create_disposition: CREATE_NEVER
",
    );
    let err = run_err(&spec).await;
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn table_is_created_with_partitioning_and_clustering() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"at\": \"2026-01-02T03:04:05Z\", \"shop\": \"s1\", \"amount\": 3}\n\
         {\"at\": \"2026-01-03T00:00:00Z\", \"shop\": \"s2\", \"amount\": 4}\n",
    )
    .unwrap();
    let spec = yaml(&format!(
        "
pipeline:
  type: chain
  transforms:
    - type: ReadFromJson
      config:
        path: {}
        schema:
          type: object
          properties:
            at: {{type: string, format: date-time}}
            shop: {{type: string}}
            amount: {{type: integer}}
    - type: WriteToBigQuery
      config:
        table: test-project.w_layout.sales
        partition_by: at
        cluster_by: [shop]
",
        input.display()
    ));
    run_spec(&spec).await.unwrap();
    let table = get("/datasets/w_layout/tables/sales").await;
    assert_eq!(table["timePartitioning"]["type"], "DAY", "{table}");
    assert_eq!(table["timePartitioning"]["field"], "at");
    assert_eq!(table["clustering"]["fields"], json!(["shop"]));
    let rows =
        query("SELECT `at`, shop, amount FROM `test-project.w_layout.sales` ORDER BY `at`").await;
    assert_eq!(
        rows,
        vec![
            json!({"at": "1767323045000000", "shop": "s1", "amount": "3"}),
            json!({"at": "1767398400000000", "shop": "s2", "amount": "4"}),
        ]
    );
}

#[tokio::test]
async fn write_truncate_replaces_and_write_empty_refuses_a_full_table() {
    create_table("w_disp", "t", json!([{"name": "v", "type": "INT64"}])).await;
    insert("w_disp", "t", json!([{"v": 1}, {"v": 2}])).await;
    let pipeline = |disp: &str| {
        yaml(&format!(
            "
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{{v: 9}}]
    - type: WriteToBigQuery
      config:
        table: test-project.w_disp.t
        write_disposition: {disp}
"
        ))
    };
    run_spec(&pipeline("WRITE_TRUNCATE")).await.unwrap();
    assert_eq!(
        query("SELECT v FROM `test-project.w_disp.t`").await,
        vec![json!({"v": "9"})]
    );
    let err = run_err(&pipeline("WRITE_EMPTY")).await;
    assert!(err.contains("not empty"), "{err}");
    run_spec(&pipeline("WRITE_APPEND")).await.unwrap();
    assert_eq!(
        query("SELECT v FROM `test-project.w_disp.t`").await,
        vec![json!({"v": "9"}), json!({"v": "9"})]
    );
}

async fn seed_read_table(ds: &str) {
    create_table(
        ds,
        "events",
        json!([
            {"name": "id", "type": "INT64"},
            {"name": "user", "type": "STRING"},
            {"name": "at", "type": "TIMESTAMP"},
            {"name": "amount", "type": "NUMERIC"},
            {"name": "score", "type": "FLOAT64"},
            {"name": "day", "type": "DATE"},
            {"name": "paid", "type": "BOOL"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "geo", "type": "RECORD", "fields": [{"name": "city", "type": "STRING"}]}
        ]),
    )
    .await;
    insert(
        ds,
        "events",
        json!([
            {"id": 1, "user": "ann", "at": "2026-01-02T03:04:05Z", "amount": "1.25", "score": 0.5,
             "day": "2026-01-02", "paid": true, "tags": ["a"], "geo": {"city": "Oslo"}},
            {"id": 2, "user": "bob", "at": "2026-01-03T00:00:00Z", "amount": "10", "score": 2.0,
             "day": "2026-01-03", "paid": false, "tags": [], "geo": {"city": "Rome"}},
            {"id": 3, "user": "cy", "at": "2026-01-04T00:00:00Z", "amount": "0.5", "score": null,
             "day": null, "paid": null, "tags": ["b", "c"], "geo": null}
        ]),
    )
    .await;
}

#[tokio::test]
async fn read_a_table_with_fields_and_row_restriction() {
    seed_read_table("r_table").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spec = yaml(&format!(
        "
pipeline:
  type: chain
  transforms:
    - type: ReadFromBigQuery
      config:
        table: test-project.r_table.events
        fields: [id, user, at, amount, score, day, paid, tags, geo]
        row_restriction: id >= 2
    - type: WriteToJson
      config:
        path: {}
",
        out.display()
    ));
    run_spec(&spec).await.unwrap();
    let rows = read_json_outputs(&out);
    assert_rows_eq(
        &[
            json!({"id": 2, "user": "bob", "at": "2026-01-03T00:00:00Z", "amount": 10.0,
                   "score": 2.0, "day": "2026-01-03", "paid": false, "tags": [], "geo": {"city": "Rome"}}),
            json!({"id": 3, "user": "cy", "at": "2026-01-04T00:00:00Z", "amount": 0.5,
                   "score": null, "day": null, "paid": null, "tags": ["b", "c"], "geo": null}),
        ],
        &rows,
    );
}

#[tokio::test]
async fn read_a_query_gives_typed_rows_across_pages() {
    seed_read_table("r_query").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // batch_size 1 makes every row its own page (maxResults → pageToken → getQueryResults).
    let spec = yaml(&format!(
        "
options:
  batch_size: 1
pipeline:
  type: chain
  transforms:
    - type: ReadFromBigQuery
      config:
        query: SELECT user, id * 10 AS id10, paid FROM `test-project.r_query.events` WHERE id < 3
    - type: WriteToJson
      config:
        path: {}
",
        out.display()
    ));
    let report = run_spec(&spec).await.unwrap();
    assert_eq!(stat(&report, "ReadFromBigQuery").1, 2);
    let rows = read_json_outputs(&out);
    assert_rows_eq(
        &[
            json!({"user": "ann", "id10": 10, "paid": true}),
            json!({"user": "bob", "id10": 20, "paid": false}),
        ],
        &rows,
    );
}

#[tokio::test]
async fn a_failing_query_fails_the_run_with_bigquerys_message() {
    let spec = yaml(
        "
pipeline:
  type: chain
  transforms:
    - type: ReadFromBigQuery
      config:
        query: SELECT * FROM `test-project.nowhere.nothing`
    - type: LogForTesting
",
    );
    let err = run_err(&spec).await;
    assert!(err.contains("query failed"), "{err}");
}

#[tokio::test]
async fn setup_creates_the_datasets_a_pipeline_declares() {
    let spec = yaml(
        "
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{a: 1}]
    - type: WriteToBigQuery
      config:
        table: test-project.s_setup.out
",
    );
    let first = sluice::bigquery::setup(&spec).await.unwrap();
    assert_eq!(
        first,
        vec![
            "created dataset test-project.s_setup".to_string(),
            "table test-project.s_setup.out: created by WriteToBigQuery on its first write (schema from the data)".to_string(),
        ]
    );
    let again = sluice::bigquery::setup(&spec).await.unwrap();
    assert_eq!(again[0], "dataset test-project.s_setup exists");
    run_spec(&spec).await.unwrap();
    let after = sluice::bigquery::setup(&spec).await.unwrap();
    assert_eq!(after[1], "table test-project.s_setup.out exists");
}

#[tokio::test]
async fn latest_pane_view_keeps_the_last_pane_per_window_and_key() {
    let ds = "v_latest";
    create_table(
        ds,
        "results",
        json!([
            {"name": "window_start", "type": "TIMESTAMP"},
            {"name": "window_end", "type": "TIMESTAMP"},
            {"name": "pane_timing", "type": "STRING"},
            {"name": "pane_index", "type": "INT64"},
            {"name": "sluice_id", "type": "STRING"},
            {"name": "recipe_id", "type": "STRING"},
            {"name": "views", "type": "INT64"}
        ]),
    )
    .await;
    let w0 = "2026-01-01T00:00:00Z";
    let w0e = "2026-01-01T00:01:00Z";
    let w1 = "2026-01-01T00:01:00Z";
    let w1e = "2026-01-01T00:02:00Z";
    let row = |ws: &str, we: &str, timing: &str, pane: i64, key: &str, views: i64| {
        json!({"window_start": ws, "window_end": we, "pane_timing": timing, "pane_index": pane,
               "sluice_id": format!("{key}-{ws}-{pane}"), "recipe_id": key, "views": views})
    };
    insert(
        ds,
        "results",
        json!([
            row(w0, w0e, "EARLY", 0, "r1", 3),
            row(w0, w0e, "ON_TIME", 1, "r1", 5),
            row(w0, w0e, "LATE", 2, "r1", 6),
            row(w0, w0e, "ON_TIME", 0, "r2", 1),
            row(w1, w1e, "EARLY", 0, "r1", 2),
            row(w1, w1e, "ON_TIME", 1, "r1", 4),
            // A redelivered duplicate of the same pane: the view keeps one row.
            row(w1, w1e, "ON_TIME", 1, "r1", 4)
        ]),
    )
    .await;
    let view = std::fs::read_to_string(repo_root().join("sql/latest_pane.sql")).unwrap();
    let sql = view
        .replace("${view}", &format!("`{PROJECT}.{ds}.latest`"))
        .replace("${results_table}", &format!("`{PROJECT}.{ds}.results`"))
        .replace("${keys}", "recipe_id");
    query(sql.trim().trim_end_matches(';')).await;
    let mut rows =
        query("SELECT * FROM `test-project.v_latest.latest` ORDER BY window_start, recipe_id")
            .await;
    for r in &mut rows {
        let o = r.as_object_mut().unwrap();
        o.retain(|k, _| ["window_start", "recipe_id", "pane_index", "views"].contains(&k.as_str()));
    }
    assert_eq!(
        rows,
        vec![
            json!({"window_start": "1767225600000000", "pane_index": "2", "recipe_id": "r1", "views": "6"}),
            json!({"window_start": "1767225600000000", "pane_index": "0", "recipe_id": "r2", "views": "1"}),
            json!({"window_start": "1767225660000000", "pane_index": "1", "recipe_id": "r1", "views": "4"}),
        ]
    );
}
