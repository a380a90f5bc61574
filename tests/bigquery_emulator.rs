//! `WriteToBigQuery` (Storage Write API, the default, and `insert_all`), `ReadFromBigQuery`,
//! `sluice setup` and the dashboard views against the BigQuery emulator (bqemulator 1.4.0). Run with `emulator-tests/run-bigquery-tests.sh`, which
//! starts the emulator and exports `BIGQUERY_EMULATOR_HOST`; without it every test FAILS (it
//! does not skip). Each test uses its own dataset. Tables are read back through REST
//! (`jobs.query`), independently of the code under test.

#[path = "support/bq_rest.rs"]
mod bq_rest;
mod common;

use bq_rest::*;
use common::*;
use serde_json::{Value, json};

const PROJECT: &str = "test-project";

/// The tests run one at a time: bqemulator 1.4.0 serves Storage Write appends on gRPC worker
/// threads that use its DuckDB connection without the lock its REST handlers take, so an append
/// concurrent with another test's REST call fails that call (HTTP 500, "Attempting to execute
/// an unsuccessful or closed pending query result") or deadlocks the emulator.
static EMULATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = EMULATOR.lock().await;
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
        method: insert_all
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
    let _serial = EMULATOR.lock().await;
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
        method: insert_all
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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
        method: STORAGE_API_AT_LEAST_ONCE
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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
    let _serial = EMULATOR.lock().await;
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

// --- Storage Write API -----------------------------------------------------------------------

#[tokio::test]
async fn storage_write_stores_exact_rows_of_every_type() {
    let _serial = EMULATOR.lock().await;
    create_table(
        "sw_types",
        "t",
        json!([
            {"name": "k", "type": "INT64"},
            {"name": "s", "type": "STRING"},
            {"name": "i", "type": "INT64"},
            {"name": "f", "type": "FLOAT64"},
            {"name": "n", "type": "NUMERIC"},
            {"name": "b", "type": "BOOL"},
            {"name": "ts", "type": "TIMESTAMP"},
            {"name": "d", "type": "DATE"},
            {"name": "j", "type": "JSON"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "nums", "type": "INT64", "mode": "REPEATED"}
        ]),
    )
    .await;
    // Three rows over two write streams, values converted to the table's types by the encoder
    // (text → NUMERIC/TIMESTAMP/DATE/JSON).
    let spec = yaml(
        r#"
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements:
          - {k: 1, s: a, i: 1, f: 1.5, n: '1.25', b: true, ts: '2026-01-02T03:04:05Z', d: '2026-01-02', j: '{"k":[1,2]}', tags: [x, y], nums: [1, 2]}
          - {k: 2, s: b, i: -7, f: null, n: '-10', b: false, ts: '1970-01-01T00:00:00.000001Z', d: '0001-01-01', j: '"text"', tags: [], nums: [300]}
          - {k: 3, s: null, i: null, f: 0.25, n: null, b: null, ts: null, d: null, j: null, tags: [z], nums: []}
    - type: WriteToBigQuery
      config:
        table: test-project.sw_types.t
        method: STORAGE_WRITE_API
        create_disposition: CREATE_NEVER
        num_streams: 2
"#,
    );
    let report = run_spec(&spec).await.unwrap();
    assert_eq!(stat(&report, "WriteToBigQuery").2, 0);
    let rows = query(
        "SELECT k, s, i, f, n, b, ts, d, j, tags, nums FROM `test-project.sw_types.t` ORDER BY k",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            json!({"k": "1", "s": "a", "i": "1", "f": "1.5", "n": "1.250000000", "b": "true",
                   "ts": "1767323045000000", "d": "2026-01-02", "j": "{\"k\":[1,2]}",
                   "tags": ["x", "y"], "nums": ["1", "2"]}),
            json!({"k": "2", "s": "b", "i": "-7", "f": null, "n": "-10.000000000", "b": "false",
                   "ts": "1", "d": "0001-01-01", "j": "\"text\"", "tags": [], "nums": ["300"]}),
            json!({"k": "3", "s": null, "i": null, "f": "0.25", "n": null, "b": null, "ts": null,
                   "d": null, "j": null, "tags": ["z"], "nums": []}),
        ]
    );
}

#[tokio::test]
async fn storage_write_rejected_rows_reach_the_error_output_with_the_reason() {
    let _serial = EMULATOR.lock().await;
    create_table(
        "sw_errors",
        "t",
        json!([
            {"name": "k", "type": "STRING"},
            {"name": "n", "type": "INT64"},
            {"name": "m", "type": "NUMERIC"}
        ]),
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
          - {{k: a, n: '12', m: '1.5'}}
          - {{k: b, n: not-a-number, m: '2'}}
          - {{k: c, n: '7', m: '0.1234567891'}}
          - {{k: d, n: '8', m: '3'}}
    - type: WriteToBigQuery
      name: Write
      input: Rows
      config:
        table: test-project:sw_errors.t
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
    assert_eq!(stat(&report, "Write").2, 2, "{:?}", read_json_outputs(&out));
    let rows = query("SELECT k, n, m FROM `test-project.sw_errors.t` ORDER BY k").await;
    assert_eq!(
        rows,
        vec![
            json!({"k": "a", "n": "12", "m": "1.500000000"}),
            json!({"k": "d", "n": "8", "m": "3.000000000"}),
        ]
    );
    let mut errors = read_json_outputs(&out);
    errors.sort_by_key(|e| e["element"].as_str().unwrap().to_string());
    let got: Vec<(Value, String, String)> = errors
        .iter()
        .map(|e| {
            (
                serde_json::from_str::<Value>(e["element"].as_str().unwrap()).unwrap(),
                e["msg"].as_str().unwrap().to_string(),
                e["transform"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            // Refused by the encoder: text is not an INT64.
            (
                json!({"k": "b", "n": "not-a-number", "m": "2"}),
                "`n`: `not-a-number` is not a valid INT64".to_string(),
                "Write".to_string()
            ),
            // Refused by the emulator (INVALID_ARGUMENT for the request; the sink narrows it
            // down to the row): NUMERIC has 9 decimal places and Sluice does not round.
            (
                json!({"k": "c", "n": "7", "m": "0.1234567891"}),
                "BigQuery rejected the row: Rescaling Decimal value would cause data loss"
                    .to_string(),
                "Write".to_string()
            ),
        ]
    );
}

/// RECORD encoding checked by an independent decoder: the emulator's Python `protobuf` parses
/// the rows with the writer schema Sluice sends, and prints them as JSON. (bqemulator 1.4.0
/// cannot store RECORD columns through the Storage Write API at all, and a failed append leaves
/// its DuckDB connection broken for the next statement of a concurrent test, so no test sends
/// RECORD rows to it; see docs/bigquery.md.)
#[test]
fn storage_write_records_decode_with_protobuf() {
    use gcp_bigquery_client::model::field_type::FieldType;
    use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
    use prost::Message;
    use sluice::bigquery::proto::RowSchema;

    let field = |name: &str, t: FieldType, mode: &str| {
        let mut f = TableFieldSchema::new(name, t);
        f.mode = Some(mode.into());
        f
    };
    let mut inner = field("geo", FieldType::Record, "NULLABLE");
    inner.fields = Some(vec![field("city", FieldType::String, "NULLABLE")]);
    let mut rec = field("dims", FieldType::Record, "NULLABLE");
    rec.fields = Some(vec![
        field("w", FieldType::Int64, "NULLABLE"),
        field("labels", FieldType::String, "REPEATED"),
        inner,
    ]);
    let mut items = field("items", FieldType::Record, "REPEATED");
    items.fields = Some(vec![field("sku", FieldType::String, "NULLABLE")]);
    let schema =
        RowSchema::from_table(&[field("id", FieldType::Int64, "NULLABLE"), rec, items]).unwrap();

    let input = r#"{"id": 1, "dims": {"w": 2, "labels": ["a", "b"], "geo": {"city": "Oslo"}}, "items": [{"sku": "x"}, {"sku": "y"}]}
{"id": 2, "dims": null, "items": []}
{"id": 3, "dims": {"w": null, "labels": [], "geo": null}, "items": [{"sku": null}]}
"#;
    let arrow_schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new_struct(
            "dims",
            vec![
                arrow::datatypes::Field::new("w", arrow::datatypes::DataType::Int64, true),
                arrow::datatypes::Field::new_list(
                    "labels",
                    arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, true),
                    true,
                ),
                arrow::datatypes::Field::new_struct(
                    "geo",
                    vec![arrow::datatypes::Field::new(
                        "city",
                        arrow::datatypes::DataType::Utf8,
                        true,
                    )],
                    true,
                ),
            ],
            true,
        ),
        arrow::datatypes::Field::new_list(
            "items",
            arrow::datatypes::Field::new_struct(
                "item",
                vec![arrow::datatypes::Field::new(
                    "sku",
                    arrow::datatypes::DataType::Utf8,
                    true,
                )],
                true,
            ),
            true,
        ),
    ]));
    let batch = arrow::json::ReaderBuilder::new(arrow_schema)
        .build(std::io::Cursor::new(input))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let encoded = schema.encode(&batch);
    assert!(encoded.rejected.is_empty(), "{:?}", encoded.rejected);

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let payload = json!({
        "descriptor": hex(&schema.descriptor().encode_to_vec()),
        "rows": encoded.rows.iter().map(|(_, r)| hex(r)).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.json");
    std::fs::write(&path, payload.to_string()).unwrap();
    let script = r#"
import json, sys
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict
p = json.load(open(sys.argv[1]))
d = descriptor_pb2.DescriptorProto.FromString(bytes.fromhex(p["descriptor"]))
f = descriptor_pb2.FileDescriptorProto(name="sluice_rows.proto", syntax="proto2")
f.message_type.add().CopyFrom(d)
pool = descriptor_pool.DescriptorPool()
pool.Add(f)
M = message_factory.GetMessageClass(pool.FindMessageTypeByName(d.name))
for r in p["rows"]:
    print(json.dumps(MessageToDict(M.FromString(bytes.fromhex(r)), preserving_proto_field_name=True), sort_keys=True))
"#;
    let venv =
        std::env::var("SLUICE_BQ_VENV").unwrap_or_else(|_| "/var/tmp/sluice-bqemu-venv".into());
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("{venv}/bin/python (run with emulator-tests/run-bigquery-tests.sh): {e}")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // proto JSON prints int64 as strings; unset fields are absent.
    assert_eq!(
        decoded,
        vec![
            json!({"id": "1", "dims": {"w": "2", "labels": ["a", "b"], "geo": {"city": "Oslo"}},
                   "items": [{"sku": "x"}, {"sku": "y"}]}),
            json!({"id": "2"}),
            json!({"id": "3", "dims": {}, "items": [{}]}),
        ]
    );
}

/// Windowed results through the Storage Write API: the window columns and `sluice_id` are
/// stored, a replay of the same input writes the same ids, and the latest-pane view collapses
/// the replayed duplicates.
#[tokio::test]
async fn storage_write_windowed_panes_and_the_latest_pane_view() {
    let _serial = EMULATOR.lock().await;
    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    let event = |id: &str, secs: i64| {
        let t = chrono::DateTime::from_timestamp(T0 + secs, 0).unwrap();
        json!({"id": id, "recipe_id": "r1",
               "event_time": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)})
        .to_string()
    };
    // [0, 60) fires ON_TIME with 2 rows at 65 s, then a LATE pane with 3 (accumulating);
    // [60, 120) fires ON_TIME with 2 at the end of the input.
    let events = [
        event("a", 10),
        event("b", 20),
        event("c", 65),
        event("d", 30),
        event("e", 100),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").unwrap();
    let source = r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config:
        path: "{{ input }}"
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
        watermark: {max_delay: 0s}
    - type: Combine
      name: PerWindow
      input: Stamp
      windowing: {type: fixed, size: 60s, allowed_lateness: 30s, accumulation: accumulating}
      config:
        group_by: [recipe_id]
        combine:
          views: count
    - type: WriteToBigQuery
      name: Write
      input: PerWindow
      config:
        table: test-project.sw_panes.results
"#;
    let vars = [("input", input.to_str().unwrap())];
    let report = run_source(source, &vars, 1).await;
    assert_eq!(stat(&report, "Write").2, 0);
    let sql = "SELECT window_start, window_end, pane_timing, pane_index, recipe_id, views \
               FROM `test-project.sw_panes.results` ORDER BY window_start, pane_index";
    let first = query(sql).await;
    let us = |secs: i64| ((T0 + secs) * 1_000_000).to_string();
    let pane = |start: i64, timing: &str, index: i64, views: i64| {
        json!({"window_start": us(start), "window_end": us(start + 60), "pane_timing": timing,
               "pane_index": index.to_string(), "recipe_id": "r1", "views": views.to_string()})
    };
    let expected = vec![
        pane(0, "ON_TIME", 0, 2),
        pane(0, "LATE", 1, 3),
        pane(60, "ON_TIME", 0, 2),
    ];
    assert_eq!(first, expected);
    let table = get("/datasets/sw_panes/tables/results").await;
    assert_eq!(
        table["timePartitioning"]["field"], "window_start",
        "{table}"
    );

    // A replay (as after a crash before the input was acknowledged) appends the same panes
    // with the same ids.
    run_source(source, &vars, 1).await;
    let ids = query(
        "SELECT sluice_id, COUNT(*) AS n FROM `test-project.sw_panes.results` \
         GROUP BY sluice_id ORDER BY sluice_id",
    )
    .await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    for r in &ids {
        assert_eq!(r["n"], "2", "{ids:?}");
        assert_eq!(r["sluice_id"].as_str().unwrap().len(), 32, "{ids:?}");
    }

    let view = std::fs::read_to_string(repo_root().join("sql/latest_pane.sql")).unwrap();
    let sql = view
        .replace("${view}", "`test-project.sw_panes.latest`")
        .replace("${results_table}", "`test-project.sw_panes.results`")
        .replace("${keys}", "recipe_id");
    query(sql.trim().trim_end_matches(';')).await;
    let latest = query(
        "SELECT window_start, window_end, pane_timing, pane_index, recipe_id, views \
         FROM `test-project.sw_panes.latest` ORDER BY window_start",
    )
    .await;
    assert_eq!(
        latest,
        vec![pane(0, "LATE", 1, 3), pane(60, "ON_TIME", 0, 2)]
    );
}
