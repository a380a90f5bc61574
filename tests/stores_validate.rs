//! `sluice validate` on `WriteToPostgres` / `WriteToRedis` configs: problems found without the
//! servers, each reported as `file:line:col: message`.

use std::collections::BTreeMap;

use sluice::pipeline::load_and_validate;

fn check(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    load_and_validate(&path, &BTreeMap::new())
        .map(|_| ())
        .map_err(|e| e.to_string().replace(&path.display().to_string(), "p.yaml"))
}

fn with_sink(sink: &str) -> String {
    format!(
        "pipeline:\n  transforms:\n    - type: Create\n      name: Rows\n      config:\n        elements: [{{id: 1}}]\n{sink}"
    )
}

#[test]
fn bad_postgres_configs_are_reported_with_positions() {
    let text = with_sink(
        "    - type: WriteToPostgres
      name: Pg
      input: Rows
      config:
        url: mysql://host/db
        table: \"bad name\"
        upsert_key: []
        tls: requir
",
    );
    let err = check(&text).unwrap_err();
    assert!(
        err.contains("p.yaml:11:14: `mysql://host/db` is not a Postgres URL"),
        "{err}"
    );
    assert!(
        err.contains("p.yaml:12:16: `bad name` is not a table name"),
        "{err}"
    );
    assert!(
        err.contains("`upsert_key` must name at least one field"),
        "{err}"
    );
    assert!(
        err.contains("p.yaml:14:14: unknown `tls` mode `requir`"),
        "{err}"
    );
    assert!(err.contains("did you mean `require`?"), "{err}");
}

#[test]
fn bad_redis_configs_are_reported_with_positions() {
    let text = with_sink(
        "    - type: WriteToRedis
      name: Cache
      input: Rows
      config:
        url: http://localhost:6379
        key: \"recipe:{id\"
        mode: sett
        ttl: soon
",
    );
    let err = check(&text).unwrap_err();
    assert!(
        err.contains("p.yaml:11:14: `http://localhost:6379` is not a Redis URL"),
        "{err}"
    );
    assert!(err.contains("p.yaml:12:14: unclosed `{`"), "{err}");
    assert!(err.contains("p.yaml:13:15: unknown `mode` `sett`"), "{err}");
    assert!(err.contains("p.yaml:14:14:"), "{err}");
    let zset = with_sink(
        "    - type: WriteToRedis
      name: Cache
      input: Rows
      config: {url: \"redis://127.0.0.1\", key: k, mode: zset, value: id}
",
    );
    let err = check(&zset).unwrap_err();
    assert!(
        err.contains("`value` applies to `mode: string` only"),
        "{err}"
    );
    assert!(err.contains("`mode: zset` needs `member`"), "{err}");
    assert!(err.contains("`mode: zset` needs `score`"), "{err}");
}

#[test]
fn valid_store_configs_pass() {
    let text = with_sink(
        "    - type: WriteToPostgres
      name: Pg
      input: Rows
      config: {url: \"jdbc:postgresql://127.0.0.1:5432/test\", table: public.t, upsert_key: [id]}
    - type: WriteToRedis
      name: Cache
      input: Rows
      config: {url: \"redis://127.0.0.1:6379/0\", key: \"r:{id}\", mode: hash, fields: [id], ttl: 1h}
",
    );
    check(&text).unwrap();
}
