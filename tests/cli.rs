//! The `sluice` binary: exit codes and output of each command (SPEC §2).

use std::process::Command;

fn sluice(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn demo_runs_on_shipped_data_and_reports_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = sluice(&["demo", "--out", "demo-out"], dir.path());
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("240 clean events and 5 dead letters"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote demo-out/clean_events-00000-of-00001"),
        "{stdout}"
    );
    let clean =
        std::fs::read_to_string(dir.path().join("demo-out/clean_events-00000-of-00001")).unwrap();
    assert_eq!(clean.lines().count(), 240);
    let dead =
        std::fs::read_to_string(dir.path().join("demo-out/dead_letters-00000-of-00001")).unwrap();
    let transforms: Vec<String> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["transform"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        transforms,
        [
            "ReadEvents",
            "ReadEvents",
            "ReadEvents",
            "CheckEvents",
            "CheckEvents"
        ]
    );
}

#[test]
fn validate_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "pipeline:\n  transforms:\n    - type: Nope\n",
    )
    .unwrap();
    let quickstart = root().join("pipelines/recipe_quickstart.yaml");
    let (code, stdout, _) = sluice(&["validate", quickstart.to_str().unwrap()], dir.path());
    assert_eq!((code, stdout.trim_end().ends_with(": valid")), (0, true));
    let (code, _, stderr) = sluice(&["validate", "bad.yaml"], dir.path());
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("bad.yaml:3:13: unknown transform type `Nope`"),
        "{stderr}"
    );
}

#[test]
fn test_command_reports_pass_fail_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
pipeline:
  type: chain
  transforms:
    - type: ReadFromJson
      name: Read
      config: {path: in.jsonl}
    - type: Filter
      name: Long
      config: {language: sql, keep: watch_seconds > 60}
tests:
  - name: keeps long watches
    mock_inputs:
      - name: Read
        elements: [{watch_seconds: 10}, {watch_seconds: 90}]
    expected_outputs:
      - name: Long
        elements: [{watch_seconds: 90}]
  - name: wrong on purpose
    mock_inputs:
      - name: Read
        elements: [{watch_seconds: 120}]
    expected_outputs:
      - name: Long
        elements: [{watch_seconds: 12}]
";
    std::fs::write(dir.path().join("t.yaml"), text).unwrap();
    let (code, stdout, _) = sluice(&["test", "t.yaml"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        stdout,
        "PASS t.yaml :: keeps long watches\n\
         FAIL t.yaml :: wrong on purpose\n  \
         output of `Long`: expected 1 rows, got 1\n      \
         missing:    {\"watch_seconds\":12}\n      \
         unexpected: {\"watch_seconds\":120}\n\
         1 passed, 1 failed\n"
    );
}

/// `sluice explain` on pipelines/recipe_checks.yaml, its variables given so that the
/// environment cannot change the output.
fn explain_recipe_checks(format: &[&str]) -> String {
    let mut args = vec!["explain", "pipelines/recipe_checks.yaml"];
    for var in [
        "subscription=events-sub",
        "control_topic=control",
        "stats_topic=stats",
        "dead_letter_topic=dead",
    ] {
        args.extend(["--var", var]);
    }
    args.extend(format);
    let (code, stdout, stderr) = sluice(&args, &root());
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[test]
fn explain_says_windowing_targets_valves_gates_and_state_in_the_users_words() {
    let expected = "\
pipeline recipe_checks (pipelines/recipe_checks.yaml)
  ReadEvents [ReadFromPubSub]; outputs: malformed; reads subscription events-sub
  EventTime [AssignTimestamps] <- ReadEvents; outputs: bad_time
  PerMinute [Combine] <- EventTime; windowing: fixed 1m
  DeadLetters [Flatten] <- ReadEvents.malformed, EventTime.bad_time
  MinuteShape [Check] <- PerMinute; windowing: fixed 1m
  PublishDeadLetters [WriteToPubSub] <- DeadLetters; writes topic dead
  MinuteVolume [Check] <- MinuteShape; windowing: fixed 1m; \
valve recipe_checks/MinuteVolume: closes on failure, re-checks after 5m
  WithWindow [ExtractWindowingInfo] <- MinuteVolume; windowing: fixed 1m
  PublishStats [WriteToPubSub] <- WithWindow; windowing: fixed 1m; writes topic stats
valves: recipe_checks/MinuteVolume
gates: none
control topic: control
state: memory (nothing survives a restart)
";
    assert_eq!(explain_recipe_checks(&[]), expected);
    assert_eq!(explain_recipe_checks(&["--format", "text"]), expected);
}

#[test]
fn explain_draws_a_mermaid_flowchart() {
    assert_eq!(
        explain_recipe_checks(&["--format", "mermaid"]),
        r#"flowchart LR
  n0["ReadEvents<br/>ReadFromPubSub<br/>reads subscription events-sub"]
  n1["EventTime<br/>AssignTimestamps"]
  n2["PerMinute<br/>Combine<br/>windowing: fixed 1m"]
  n7["DeadLetters<br/>Flatten"]
  n3["MinuteShape<br/>Check"]
  n8["PublishDeadLetters<br/>WriteToPubSub<br/>writes topic dead"]
  n4["MinuteVolume<br/>Check<br/>valve recipe_checks/MinuteVolume: closes on failure, re-checks after 5m"]
  n5["WithWindow<br/>ExtractWindowingInfo"]
  n6["PublishStats<br/>WriteToPubSub<br/>writes topic stats"]
  n0 --> n1
  n1 --> n2
  n0 -.->|"malformed"| n7
  n1 -.->|"bad_time"| n7
  n2 --> n3
  n7 --> n8
  n3 --> n4
  n4 --> n5
  n5 --> n6
"#
    );
}

#[test]
fn explain_names_gates_state_and_store_targets_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
options:
  control_topic: ctl
  gates: [upstream/Volume]
  state: {backend: postgres, path: \"postgres://sluice:secret@db:5432/app\", checkpoint_interval: 30s}
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config: {topic: events, format: RAW}
    - type: Combine
      name: Sessions
      input: Read
      windowing: {type: sessions, gap: 5m}
      config: {group_by: [data], combine: {n: {fn: count, value: data}}}
    - type: WindowInto
      name: Sliding
      input: Read
      config: {windowing: {type: sliding, size: 10m, period: 1m}}
    - type: WriteToRedis
      name: Cache
      input: Sessions
      config: {url: \"redis://:pw@cache:6379/1\", key: \"s:{data}\", mode: json}
    - type: WriteToPostgres
      name: Table
      input: Sliding
      config: {url: \"jdbc:postgresql://db:5432/app?user=u&password=p\", table: public.t, upsert_key: [data]}
";
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    let (code, stdout, stderr) = sluice(&["explain", "p.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "\
pipeline p (p.yaml)
  Read [ReadFromPubSub]; reads topic events
  Sessions [Combine] <- Read; windowing: sessions gap 5m
  Sliding [WindowInto] <- Read; windowing: sliding 10m every 1m
  Cache [WriteToRedis] <- Sessions; windowing: sessions gap 5m; \
writes Redis keys s:{data} (json) at redis://…@cache:6379/1
  Table [WriteToPostgres] <- Sliding; windowing: sliding 10m every 1m; \
writes Postgres table public.t at postgresql://db:5432/app
valves: none
gates: upstream/Volume
control topic: ctl
state: postgres postgres://…@db:5432/app, checkpoint every 30s
"
    );
}

#[test]
fn run_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"a\": 1}\n{\"a\": 2}\nnot json\n",
    )
    .unwrap();
    let text = "\
pipeline:
  type: chain
  source:
    type: ReadFromJson
    config: {path: \"{{ input }}\"}
  transforms:
    - type: MapToFields
      config: {language: sql, fields: {b: a * 10}}
  sink:
    type: WriteToJson
    config: {path: out}
";
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    let (code, _, stderr) = sluice(&["run", "p.yaml", "--var", "input=in.jsonl"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "warning: 1 records failed in `ReadFromJson`, which declares no error output"
        ),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out-00000-of-00001")).unwrap(),
        "{\"b\":10}\n{\"b\":20}\n"
    );
    let (code, stdout, _) = sluice(
        &["explain", "p.yaml", "--var", "input=in.jsonl"],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "pipeline p (p.yaml)\n  ReadFromJson [ReadFromJson]; reads path in.jsonl\n  \
         MapToFields [MapToFields] <- ReadFromJson\n  \
         WriteToJson [WriteToJson] <- MapToFields; writes path out\n\
         valves: none\ngates: none\nstate: memory (nothing survives a restart)\n"
    );
    let (code, _, stderr) = sluice(
        &["run", "p.yaml", "--var", "input=missing.jsonl"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no file matches `missing.jsonl`"),
        "{stderr}"
    );
}

/// Issue #16: payload event times on a stream without `watermark:` keep Beam's rule (the
/// source's watermark); `validate` says so with the position and the fix, and stays valid.
#[test]
fn validate_warns_when_assign_timestamps_without_watermark_follows_pubsub() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |watermark: &str| {
        format!(
            "pipeline:\n  transforms:\n    - type: ReadFromPubSub\n      name: Read\n      config:\n        topic: t\n        format: JSON\n        schema: {{type: object, properties: {{ts: {{type: string}}}}}}\n    - type: AssignTimestamps\n      name: Stamp\n      input: Read\n      config:\n        timestamp: ts\n{watermark}    - type: LogForTesting\n      input: Stamp\n"
        )
    };
    std::fs::write(dir.path().join("bare.yaml"), pipeline("")).unwrap();
    std::fs::write(
        dir.path().join("owned.yaml"),
        pipeline("        watermark: {max_delay: 10s}\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = sluice(&["validate", "bare.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "bare.yaml: valid\n");
    assert!(
        stderr.starts_with("bare.yaml:9:13: warning: `Stamp` sets event times without `watermark:` after the unbounded source `Read`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: add `watermark: {max_delay: 10s}`"),
        "{stderr}"
    );
    let (code, _, stderr) = sluice(&["validate", "owned.yaml"], dir.path());
    assert_eq!((code, stderr.as_str()), (0, ""));
}
