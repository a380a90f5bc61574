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

#[test]
fn high_water_mark_problems_are_reported_where_written() {
    let text = "\
pipeline:
  transforms:
    - type: ReadFromBigQuery
      name: FromQuery
      config:
        query: SELECT 1 AS x
        high_water_mark: {column: x, state: m.json}
    - type: ReadFromBigQuery
      name: NotSelected
      config:
        table: p.d.t
        fields: [a, b]
        high_water_mark:
          column: loaded_at
          state: m.json
          every: 0s
    - type: ReadFromBigQuery
      name: Incomplete
      config:
        table: p.d.t
        high_water_mark:
          colum: loaded_at
    - type: Flatten
      input: [FromQuery, NotSelected, Incomplete]
    - type: LogForTesting
      input: Flatten
";
    let d = diagnostics(text);
    let expected = [
        "p.yaml:7:26: `high_water_mark` reads a `table`, not a `query`",
        "hint: use `table:` with `row_restriction:` for the filter",
        "p.yaml:14:19: the high-water mark column `loaded_at` is not among `fields`",
        "hint: add `loaded_at` to `fields`",
        "p.yaml:16:18: `every` must be longer than 0",
        "p.yaml:22:11: unknown key `colum` in `high_water_mark`",
        "hint: did you mean `column`?",
        "p.yaml:22:16: `high_water_mark` is missing required key `column`",
        "p.yaml:22:16: `high_water_mark` is missing required key `state`",
    ];
    for e in expected {
        assert!(d.contains(e), "missing {e:?} in:\n{d}");
    }
}

#[test]
fn a_feeder_is_bounded_without_every_and_unbounded_with_it() {
    let feeder = |every: &str| {
        format!(
            "\
pipeline:
  transforms:
    - type: ReadFromBigQuery
      name: Read
      config:
        table: lake.events
        high_water_mark:
          column: loaded_at
          state: /tmp/m.json
{every}
    - type: Sql
      input: Read
      config:
        query: SELECT user, COUNT(*) AS n FROM PCOLLECTION GROUP BY user
    - type: LogForTesting
      input: Sql
"
        )
    };
    // An aggregating query needs the whole (bounded) input.
    valid(&feeder(""));
    let d = diagnostics(&feeder("          every: 30s"));
    assert!(
        d.contains("the input of `Sql` is unbounded and not windowed"),
        "{d}"
    );
}
