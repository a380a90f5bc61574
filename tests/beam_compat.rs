//! Sluice gives the same rows as Beam's Python DirectRunner on Beam YAML files that use only
//! transforms and `generic` expressions (SPEC §3). The expected rows were produced by Beam 2.77
//! itself (tools/beam-reference/compare.sh) and are committed next to each case.

mod common;

use common::*;

async fn check_case(case: &str) {
    let dir = repo_root().join("tools/beam-reference/cases").join(case);
    let input = ["input.jsonl", "input.csv"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists());
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out");
    let input = input.map(|p| p.display().to_string()).unwrap_or_default();
    let spec = load(
        &dir.join("pipeline.yaml"),
        &vars(&[("input", &input), ("output", &out.display().to_string())]),
    );
    run_spec(&spec).await.unwrap();
    let actual = read_json_outputs(&out);
    let expected = read_jsonl(&dir.join("expected.jsonl"));
    assert!(!expected.is_empty());
    assert_rows_eq(&expected, &actual);
}

#[tokio::test]
async fn map_to_fields_and_filter_match_beam() {
    check_case("map_filter").await;
}

#[tokio::test]
async fn explode_matches_beam() {
    check_case("explode").await;
}

#[tokio::test]
async fn explode_zip_and_cross_product_match_beam() {
    check_case("explode_zip").await;
}

#[tokio::test]
async fn partition_and_flatten_match_beam() {
    check_case("partition_flatten").await;
}

#[tokio::test]
async fn csv_read_matches_beam() {
    check_case("csv_read").await;
}
