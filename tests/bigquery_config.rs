//! `sluice validate` on `WriteToBigQuery` / `ReadFromBigQuery` configs: every problem reported
//! as `file:line:col: message` with a hint (no emulator needed).

use std::collections::BTreeMap;

use sluice::pipeline::load_and_validate;

fn diagnostics(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    match load_and_validate(&path, &BTreeMap::new()) {
        Ok(_) => panic!("the pipeline is invalid"),
        Err(e) => e.to_string().replace(&path.display().to_string(), "p.yaml"),
    }
}

fn valid(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    if let Err(e) = load_and_validate(&path, &BTreeMap::new()) {
        panic!("{e}");
    }
}

#[test]
fn bad_table_spec_both_table_and_query_and_unknown_dispositions() {
    let text = "\
pipeline:
  transforms:
    - type: ReadFromBigQuery
      name: Both
      config:
        table: p.d.t
        query: SELECT 1
    - type: ReadFromBigQuery
      name: Neither
      config:
        fields: [a]
    - type: WriteToBigQuery
      name: BadTable
      input: Both
      config:
        table: just_a_table
    - type: WriteToBigQuery
      name: BadDisp
      input: Neither
      config:
        table: p:d.t
        create_disposition: CREATE_IF_NEEDD
        write_disposition: WRITE_TRUNCATED
        method: storage_writ
        cluster_by: [a, b, c, d, e]
";
    let d = diagnostics(text);
    let expected = [
        "p.yaml:7:16: `ReadFromBigQuery` takes either `table` or `query`, not both",
        "p.yaml:8:13: `ReadFromBigQuery` needs `table` or `query`",
        "p.yaml:16:16: table `just_a_table` is not `project.dataset.table`, `project:dataset.table` or `dataset.table`",
        "p.yaml:22:29: unknown `create_disposition` `CREATE_IF_NEEDD`",
        "hint: did you mean `CREATE_IF_NEEDED`?",
        "p.yaml:23:28: unknown `write_disposition` `WRITE_TRUNCATED`",
        "p.yaml:24:17: unknown `method` `storage_writ`",
        "hint: did you mean `storage_write`?",
        "p.yaml:25:21: BigQuery clusters on at most 4 fields",
    ];
    for e in expected {
        assert!(d.contains(e), "missing {e:?} in:\n{d}");
    }
}

#[test]
fn beam_configs_are_valid() {
    valid(
        "\
pipeline:
  transforms:
    - type: ReadFromBigQuery
      name: Read
      config:
        table: my-project:lake.events
        fields: [user, amount]
        row_restriction: amount > 10
    - type: WriteToBigQuery
      name: Write
      input: Read
      config:
        table: lake.totals
        create_disposition: CREATE_NEVER
        write_disposition: write_append
        method: STORAGE_WRITE_API
        num_streams: 2
        partition_by: at
        cluster_by: user
        error_handling:
          output: bad
    - type: LogForTesting
      input: Write.bad
",
    );
}
