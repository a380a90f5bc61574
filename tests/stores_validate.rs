//! `sluice validate` on `WriteToPostgres` / `WriteToRedis` configs and `options.state`: problems
//! found without the servers, each reported as `file:line:col: message`.

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

fn with_state(state: &str) -> String {
    format!(
        "pipeline:\n  transforms:\n    - type: Create\n      config:\n        elements: [{{id: 1}}]\noptions:\n  state:\n{state}"
    )
}

#[test]
fn bad_state_options_are_reported_with_positions() {
    let cases = [
        (
            "    backend: embeded\n",
            "p.yaml:8:14: unknown state backend `embeded`\n  hint: did you mean `embedded`?",
        ),
        (
            "    backend: embedded\n    checkpoint_interval: 0s\n",
            "p.yaml:8:14: embedded state needs `path`: a directory on a persistent volume\n  \
             hint: for example path: /var/lib/sluice/state\n\
             p.yaml:9:26: `checkpoint_interval` must be more than 0",
        ),
        (
            "    backend: redis\n    path: http://cache:6379\n",
            "p.yaml:9:11: `http://cache:6379` is not a Redis URL\n  \
             hint: use redis://[user:password@]host:port[/db]",
        ),
        (
            "    backend: redis\n    path: rediss://cache:6379\n",
            "p.yaml:9:11: `rediss://` (Redis over TLS) is not in this build\n  \
             hint: use redis:// on a private network, or a TLS proxy beside Sluice",
        ),
        (
            "    backend: redis\n",
            "p.yaml:8:14: redis state needs `path`: a redis:// URL\n  \
             hint: for example path: redis://redis:6379/0",
        ),
        (
            "    backend: postgres\n    path: mysql://db/app\n",
            "p.yaml:9:11: `mysql://db/app` is not a Postgres URL\n  \
             hint: use jdbc:postgresql://host:port/db or postgres://user@host:port/db",
        ),
        (
            "    path: /var/lib/sluice\n",
            "p.yaml:8:11: `path` is not used by the memory backend\n  \
             hint: set `backend: embedded` (a directory), `redis` or `postgres` (a URL) to keep state across restarts",
        ),
        (
            "    backend: embedded\n    path: /data\n    dedupe: 1h\n",
            "p.yaml:10:5: unknown key `dedupe` in `options.state`\n  \
             hint: did you mean `dedupe_horizon`?",
        ),
    ];
    for (state, expected) in cases {
        assert_eq!(check(&with_state(state)).unwrap_err(), expected, "{state}");
    }
}

#[test]
fn state_options_are_parsed() {
    use sluice::state::{Backend, StateConfig};
    use std::time::Duration;
    let parse = |state: &str| {
        sluice::config::parse("p.yaml", &with_state(state), &BTreeMap::new())
            .unwrap_or_else(|d| panic!("{d}"))
            .options
            .state
    };
    assert_eq!(
        parse(
            "    backend: postgres\n    path: jdbc:postgresql://db:5432/app\n    checkpoint_interval: 500ms\n    dedupe_horizon: 1h\n"
        ),
        StateConfig {
            backend: Backend::Postgres,
            path: Some("postgresql://db:5432/app".into()),
            checkpoint_interval: Duration::from_millis(500),
            dedupe_horizon: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        parse("    {backend: embedded, path: /data/state}\n"),
        StateConfig {
            backend: Backend::Embedded,
            path: Some("/data/state".into()),
            checkpoint_interval: Duration::from_secs(2),
            dedupe_horizon: Duration::from_secs(600),
        }
    );
    assert_eq!(parse("    {}\n"), StateConfig::default());
    check(&with_state(
        "    {backend: redis, path: \"redis://:pw@cache:6379/1\"}\n",
    ))
    .unwrap();
}
