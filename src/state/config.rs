//! `options.state`: which backend keeps stateful transforms' state, where, and how often it is
//! checkpointed. Everything that can be checked without the backend is checked at
//! `sluice validate`.

use std::time::Duration;

use marked_yaml::Node;

use crate::config::diag::{Pos, Reporter, suggest};
use crate::config::yaml::{Located, MapReader, pos_of};

/// Default [`StateConfig::checkpoint_interval`]: state lost in a crash is at most this old, and
/// at one commit per stateful transform per interval the backend sees a handful of writes a
/// second.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Default [`StateConfig::dedupe_horizon`]: Pub/Sub redelivers unacknowledged messages after the
/// ack deadline (at most 10 min), so ids older than this are not seen again.
pub const DEFAULT_DEDUPE_HORIZON: Duration = Duration::from_secs(600);

/// Where state lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// In the process: lost at exit. For tests and bounded runs.
    #[default]
    Memory,
    /// A redb file in a directory: survives restarts of one replica on a persistent volume.
    Embedded,
    /// One hash per namespace on a Redis server: shared by replicas.
    Redis,
    /// The table `sluice_state` in a Postgres database: shared by replicas.
    Postgres,
}

impl Backend {
    pub const NAMES: &[&str] = &["memory", "embedded", "redis", "postgres"];

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
        }
    }
}

/// A validated `options.state`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub backend: Backend,
    /// embedded: a directory (the file `state.redb` inside it is created); redis: a `redis://`
    /// URL; postgres: a `postgres://` URL (a `jdbc:` prefix removed). None for memory.
    pub path: Option<String>,
    /// How often stateful transforms checkpoint (default 2 s).
    pub checkpoint_interval: Duration,
    /// How long message ids are remembered for deduplication (default 10 min).
    pub dedupe_horizon: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Memory,
            path: None,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            dedupe_horizon: DEFAULT_DEDUPE_HORIZON,
        }
    }
}

pub const KEYS: &[&str] = &["backend", "path", "checkpoint_interval", "dedupe_horizon"];

/// Reads `options.state` (absent: memory), reporting every problem with its position.
pub fn parse(node: Option<&Node>, fallback: Pos, rep: &mut Reporter) -> StateConfig {
    let mut r = MapReader::new(node, fallback, "`options.state`", KEYS, rep);
    let mut c = StateConfig::default();
    // An unknown backend is reported once; its `path` is not checked against a guess.
    let mut known = true;
    let backend = r.string("backend", rep);
    if let Some(b) = &backend {
        c.backend = match b.value.as_str() {
            "memory" => Backend::Memory,
            "embedded" => Backend::Embedded,
            "redis" => Backend::Redis,
            "postgres" => Backend::Postgres,
            other => {
                rep.error(
                    b.pos,
                    format!("unknown state backend `{other}`"),
                    Some(suggest(other, Backend::NAMES)),
                );
                known = false;
                Backend::Memory
            }
        };
    }
    let path = r.string("path", rep);
    let interval_at = r.node("checkpoint_interval").map(pos_of);
    if let Some(d) = r.duration("checkpoint_interval", rep) {
        if d.is_zero() {
            let at = interval_at.unwrap_or(r.pos());
            rep.error(at, "`checkpoint_interval` must be more than 0", None);
        }
        c.checkpoint_interval = d;
    }
    if let Some(d) = r.duration("dedupe_horizon", rep) {
        c.dedupe_horizon = d;
    }
    c.path = match (&c.backend, path) {
        (Backend::Memory, Some(p)) if known => {
            rep.error(
                p.pos,
                "`path` is not used by the memory backend",
                Some("set `backend: embedded` (a directory), `redis` or `postgres` (a URL) to keep state across restarts".into()),
            );
            None
        }
        (Backend::Memory, _) => None,
        (_, None) => {
            let (message, hint) = match c.backend {
                Backend::Embedded => (
                    "embedded state needs `path`: a directory on a persistent volume",
                    "for example path: /var/lib/sluice/state",
                ),
                Backend::Redis => (
                    "redis state needs `path`: a redis:// URL",
                    "for example path: redis://redis:6379/0",
                ),
                _ => (
                    "postgres state needs `path`: a postgres:// URL",
                    "for example path: postgres://sluice@db:5432/sluice",
                ),
            };
            // At `backend: …`, the one line that asks for a path.
            let at = backend.as_ref().map_or(r.pos(), |b| b.pos);
            rep.error(at, message, Some(hint.into()));
            None
        }
        (Backend::Embedded, Some(p)) => Some(p.value),
        (Backend::Redis, Some(p)) => check_redis_url(&p, rep),
        (Backend::Postgres, Some(p)) => check_postgres_url(&p, rep),
    };
    r.finish(rep);
    c
}

fn check_redis_url(p: &Located<String>, rep: &mut Reporter) -> Option<String> {
    if !(p.value.starts_with("redis://") || p.value.starts_with("rediss://")) {
        rep.error(
            p.pos,
            format!("`{}` is not a Redis URL", p.value),
            Some("use redis://[user:password@]host:port[/db]".into()),
        );
        return None;
    }
    if p.value.starts_with("rediss://") {
        // The redis crate is built without TLS (as for `WriteToRedis`).
        rep.error(
            p.pos,
            "`rediss://` (Redis over TLS) is not in this build",
            Some("use redis:// on a private network, or a TLS proxy beside Sluice".into()),
        );
        return None;
    }
    match redis::Client::open(p.value.as_str()) {
        Ok(_) => Some(p.value.clone()),
        Err(e) => {
            rep.error(p.pos, format!("invalid Redis URL: {e}"), None);
            None
        }
    }
}

fn check_postgres_url(p: &Located<String>, rep: &mut Reporter) -> Option<String> {
    match crate::sinks::postgres::config::normalize_url(&p.value) {
        Ok(url) => Some(url),
        Err((message, hint)) => {
            rep.error(p.pos, message, hint);
            None
        }
    }
}
