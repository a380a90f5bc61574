//! The engine end to end: error routing loses nothing, file formats round-trip, backpressure
//! bounds what is in flight, and runtime failures stop the run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use common::*;
use serde_json::json;
use sluice::pipeline::operator::{
    END_OF_TIME, EngineError, Operator, Output, Source, SourceSink, StageStats,
};
use sluice::pipeline::runner::{self, INBOX_CAPACITY, RunControl, Stage};
use sluice::record::Batch;

#[tokio::test]
async fn every_malformed_line_reaches_the_error_output_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    let mut text = String::new();
    let mut bad = 0;
    for i in 0..10_000 {
        match i % 997 {
            0 => {
                text.push_str(&format!("{{\"id\": {i}, \"n\": \"not a number\"}}\n"));
                bad += 1;
            }
            1 => {
                text.push_str(&format!("{{\"id\": {i}, \"n\": 1, truncated\n"));
                bad += 1;
            }
            2 => {
                text.push_str("[1, 2, 3]\n");
                bad += 1;
            }
            _ => text.push_str(&format!("{{\"id\": {i}, \"n\": {}}}\n", i * 2)),
        }
    }
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("good");
    let errors = dir.path().join("bad");
    let spec = parse(
        "mixed.yaml",
        &format!(
            r#"
options: {{batch_size: 1000}}
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config:
        path: {input}
        schema: {{type: object, properties: {{id: {{type: integer}}, n: {{type: integer}}}}}}
      error_handling: {{output: bad}}
    - type: WriteToJson
      name: Good
      input: Read
      config: {{path: {out}}}
    - type: WriteToJson
      name: Bad
      input: Read.bad
      config: {{path: {errors}}}
"#,
            input = input.display(),
            out = out.display(),
            errors = errors.display()
        ),
    );
    let report = run_spec(&spec).await.unwrap();
    let good_rows = read_json_outputs(&out);
    let bad_rows = read_json_outputs(&errors);
    assert_eq!(good_rows.len() + bad_rows.len(), 10_000);
    assert_eq!(bad_rows.len(), bad);
    assert_eq!(stat(&report, "Read"), (0, 10_000 - bad as u64, bad as u64));
    // Each error record has the original line, the reason and the transform.
    let first = &bad_rows[0];
    assert_eq!(
        first["element"],
        json!("{\"id\": 0, \"n\": \"not a number\"}")
    );
    assert_eq!(first["transform"], json!("Read"));
    assert!(
        first["msg"]
            .as_str()
            .unwrap()
            .contains("failed to parse \"not a number\" as Int64"),
        "{first}"
    );
    // The good rows are exactly the well-formed lines, in order.
    let ids: Vec<i64> = good_rows
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..10_000).filter(|i| !matches!(i % 997, 0..=2)).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn expression_failures_go_to_the_error_output_with_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let errs = dir.path().join("errs");
    let spec = parse(
        "p.yaml",
        &format!(
            r#"
pipeline:
  transforms:
    - type: Create
      config:
        elements: [{{id: 1, qty: "3"}}, {{id: 2, qty: "three"}}, {{id: 3, qty: "5"}}]
    - type: MapToFields
      name: Parse
      input: Create
      config:
        language: sql
        fields:
          id: id
          qty: "CAST(qty AS BIGINT) * 2"
      error_handling: {{output: failed}}
    - type: WriteToJson
      input: Parse
      config: {{path: {out}}}
    - type: WriteToJson
      name: WriteErrors
      input: Parse.failed
      config: {{path: {errs}}}
"#,
            out = out.display(),
            errs = errs.display()
        ),
    );
    run_spec(&spec).await.unwrap();
    assert_rows_eq(
        &[json!({"id": 1, "qty": 6}), json!({"id": 3, "qty": 10})],
        &read_json_outputs(&out),
    );
    let errors = read_json_outputs(&errs);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["element"], json!("{\"id\":2,\"qty\":\"three\"}"));
    assert_eq!(errors[0]["transform"], json!("Parse"));
    assert!(
        errors[0]["msg"]
            .as_str()
            .unwrap()
            .contains("Cannot cast string 'three'"),
        "{}",
        errors[0]
    );
}

#[tokio::test]
async fn files_round_trip_through_parquet_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let rows = r#"[{event_id: e1, recipe_id: r1, watch_seconds: 30, rating: 4.5, tags: [a, b]}, {event_id: e2, recipe_id: r2, watch_seconds: 0, rating: null, tags: []}]"#;
    let write = parse(
        "w.yaml",
        &format!(
            "pipeline:\n  transforms:\n    - type: Create\n      config: {{elements: {rows}}}\n    - type: WriteToParquet\n      input: Create\n      config: {{path: {d}/p}}\n"
        ),
    );
    run_spec(&write).await.unwrap();
    let convert = parse(
        "c.yaml",
        &format!(
            "pipeline:\n  type: chain\n  transforms:\n    - type: ReadFromParquet\n      config: {{path: \"{d}/p-*\"}}\n    - type: Explode\n      config: {{fields: tags}}\n    - type: WriteToCsv\n      config: {{path: {d}/c}}\n"
        ),
    );
    run_spec(&convert).await.unwrap();
    let csv = std::fs::read_to_string(dir.path().join("c-00000-of-00001")).unwrap();
    assert_eq!(
        csv,
        "event_id,recipe_id,watch_seconds,rating,tags\ne1,r1,30,4.5,a\ne1,r1,30,4.5,b\n"
    );
    let back = parse(
        "b.yaml",
        &format!(
            "pipeline:\n  type: chain\n  transforms:\n    - type: ReadFromCsv\n      config: {{path: {d}/c-00000-of-00001}}\n    - type: WriteToJson\n      config: {{path: {d}/j}}\n"
        ),
    );
    run_spec(&back).await.unwrap();
    assert_rows_eq(
        &[
            json!({"event_id": "e1", "recipe_id": "r1", "watch_seconds": 30, "rating": 4.5, "tags": "a"}),
            json!({"event_id": "e1", "recipe_id": "r1", "watch_seconds": 30, "rating": 4.5, "tags": "b"}),
        ],
        &read_json_outputs(&dir.path().join("j")),
    );
}

#[tokio::test]
async fn a_runtime_failure_stops_the_run_with_the_transform_named() {
    let spec = parse(
        "p.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: ReadFromJson\n      config: {path: /nonexistent/sluice/*.jsonl}\n    - type: LogForTesting\n",
    );
    let err = run_spec(&spec).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "ReadFromJson: no file matches `/nonexistent/sluice/*.jsonl`"
    );
}

/// Emits `total` one-row batches as fast as the channel accepts them.
struct Counting {
    total: usize,
    emitted: Arc<AtomicUsize>,
}

#[async_trait]
impl Source for Counting {
    async fn run(&mut self, out: &mut dyn SourceSink) -> Result<(), EngineError> {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
        for i in 0..self.total {
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![i as i64]))],
            )
            .unwrap();
            out.emit(0, Batch::new(rows)).await?;
            self.emitted.fetch_add(1, Ordering::SeqCst);
        }
        out.watermark(END_OF_TIME).await
    }
}

/// A slow consumer that records the largest gap between produced and consumed batches.
struct Slow {
    emitted: Arc<AtomicUsize>,
    consumed: usize,
    max_gap: Arc<AtomicUsize>,
}

#[async_trait]
impl Operator for Slow {
    async fn process(
        &mut self,
        _input: usize,
        _batch: Batch,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        self.consumed += 1;
        let gap = self
            .emitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.consumed);
        self.max_gap.fetch_max(gap, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_slow_consumer_holds_back_its_producer() {
    let spec = parse(
        "bp.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{i: 1}]}\n    - type: LogForTesting\n",
    );
    let graph = sluice::pipeline::validate(&spec).unwrap();
    let emitted = Arc::new(AtomicUsize::new(0));
    let max_gap = Arc::new(AtomicUsize::new(0));
    let stages = vec![
        Stage::Source(Box::new(Counting {
            total: 200,
            emitted: emitted.clone(),
        })),
        Stage::Operator(Box::new(Slow {
            emitted: emitted.clone(),
            consumed: 0,
            max_gap: max_gap.clone(),
        })),
    ];
    let stats = vec![
        Arc::new(StageStats::default()),
        Arc::new(StageStats::default()),
    ];
    let (_tx, stop) = tokio::sync::watch::channel(false);
    runner::run(&graph, stages, stats, RunControl::new(stop))
        .await
        .unwrap();
    assert_eq!(emitted.load(Ordering::SeqCst), 200);
    // In flight: the inbox, plus the batch being sent and the one being processed.
    let gap = max_gap.load(Ordering::SeqCst);
    assert!(
        gap <= INBOX_CAPACITY + 1,
        "producer ran {gap} batches ahead"
    );
}

/// A sink that never finishes flushing (an unreachable downstream).
struct Stuck;

#[async_trait]
impl Operator for Stuck {
    async fn process(
        &mut self,
        _input: usize,
        _batch: Batch,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    async fn on_end(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        std::future::pending().await
    }
}

/// A stop that cannot finish within `options.drain_timeout` ends the run with an error (exit 1,
/// unwritten input left for redelivery) instead of hanging past the pod's grace period.
#[tokio::test]
async fn a_stop_that_cannot_finish_ends_at_the_drain_deadline() {
    let spec = parse(
        "stuck.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{i: 1}]}\n    - type: LogForTesting\n",
    );
    let graph = sluice::pipeline::validate(&spec).unwrap();
    let stages = vec![
        Stage::Source(Box::new(Counting {
            total: 3,
            emitted: Arc::default(),
        })),
        Stage::Operator(Box::new(Stuck)),
    ];
    let stats = vec![
        Arc::new(StageStats::default()),
        Arc::new(StageStats::default()),
    ];
    let (tx, stop) = tokio::sync::watch::channel(false);
    let control = RunControl::new(stop).with_drain(
        sluice::config::spec::Drain::Flush,
        Some(std::time::Duration::from_millis(300)),
    );
    let run = tokio::spawn(async move { runner::run(&graph, stages, stats, control).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!run.is_finished(), "the sink is stuck, so the run is too");
    tx.send(true).unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("ended by the deadline")
        .unwrap()
        .err()
        .expect("an error");
    assert_eq!(
        err.to_string(),
        "drain: the stop did not finish within 300ms (options.drain_timeout); unwritten input is left for redelivery"
    );
}
