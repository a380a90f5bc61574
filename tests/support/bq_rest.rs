//! BigQuery REST helpers shared by the emulator tests (`tests/bigquery_emulator.rs`,
//! `emulator-tests/loop_emulator.rs`): table set-up, `insertAll` and `jobs.query` against
//! bqemulator at `BIGQUERY_EMULATOR_HOST`, independently of the code under test.

use serde_json::{Value, json};

const PROJECT: &str = "test-project";

pub fn base() -> String {
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!(
            "BIGQUERY_EMULATOR_HOST is not set: run emulator-tests/run-bigquery-tests.sh or run-loop-tests.sh"
        )
    });
    format!("http://{host}/bigquery/v2/projects/{PROJECT}")
}

pub async fn post(path: &str, body: Value) -> Value {
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

pub async fn get(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn create_dataset(ds: &str) {
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

pub async fn create_table(ds: &str, table: &str, fields: Value) {
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

pub async fn insert(ds: &str, table: &str, rows: Value) {
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
pub async fn query(sql: &str) -> Vec<Value> {
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

pub fn unwrap_row(fields: &[Value], row: &Value) -> Value {
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

pub fn unwrap_cell(field: &Value, v: &Value) -> Value {
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
