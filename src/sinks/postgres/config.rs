//! `WriteToPostgres` configuration: Beam YAML's keys (`url`/`jdbc_url`, `username`, `password`,
//! `table`, `write_statement`, `batch_size`) plus Sluice's `upsert_key`, `create_table` and
//! `tls`. Everything that can be checked without the server is checked at `sluice validate`.

use std::str::FromStr;

use crate::config::diag::{Pos, Reporter, suggest};
use crate::config::yaml::{Located, MapReader};

/// Rows per INSERT statement unless `batch_size` says otherwise: the engine's batch size, so a
/// batch is one statement. Measured (docs/stores.md, 100k rows, debug build, loaded 2-core
/// machine): 100-row statements 11.9 s, 1,000 3.9 s, 10,000 3.1 s (upsert replay 13.9/5.2/3.3 s);
/// a refused row costs about log2(batch_size) extra statements to isolate.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or fail. Like libpq's `sslmode=require`, the server certificate is not verified.
    Require,
}

/// A validated `WriteToPostgres` config.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// The connection URL as `postgres://…` (a `jdbc:` prefix removed).
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The target table, as written (possibly `schema.table`).
    pub table: Option<String>,
    /// Beam's explicit statement with `?` placeholders bound to the row's fields in order.
    pub write_statement: Option<String>,
    pub upsert_key: Vec<String>,
    pub create_table: bool,
    pub tls: Tls,
    pub batch_size: usize,
    pub pos: Pos,
}

impl PostgresConfig {
    /// The tokio-postgres connection config for `application_name`.
    ///
    /// # Errors
    /// An unparseable URL (already reported at validate time).
    pub fn connection(&self, application_name: &str) -> Result<tokio_postgres::Config, String> {
        let mut c = tokio_postgres::Config::from_str(&self.url).map_err(|e| e.to_string())?;
        if let Some(u) = &self.username {
            c.user(u);
        }
        if let Some(p) = &self.password {
            c.password(p);
        }
        if c.get_user().is_none() {
            c.user("postgres");
        }
        if c.get_application_name().is_none() {
            c.application_name(application_name);
        }
        // Text values are parsed by the server: fix the zone (timestamps without an offset are
        // UTC, as in Arrow) and quoting rules (write_statement literals) whatever the server's
        // defaults are.
        let extra = "-c TimeZone=UTC -c standard_conforming_strings=on";
        let options = match c.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {extra}"),
            _ => extra.to_string(),
        };
        c.options(&options);
        c.ssl_mode(match self.tls {
            Tls::Disable => tokio_postgres::config::SslMode::Disable,
            Tls::Prefer => tokio_postgres::config::SslMode::Prefer,
            Tls::Require => tokio_postgres::config::SslMode::Require,
        });
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(std::time::Duration::from_secs(10));
        }
        Ok(c)
    }
}

pub const KEYS: &[&str] = &[
    "url",
    "jdbc_url",
    "username",
    "password",
    "table",
    "write_statement",
    "upsert_key",
    "create_table",
    "tls",
    "batch_size",
];

/// Reads and checks the config, reporting every problem with its position.
pub fn parse(r: &mut MapReader<'_>, at: Pos, rep: &mut Reporter) -> Option<PostgresConfig> {
    let url = r.string("url", rep);
    let jdbc_url = r.string("jdbc_url", rep);
    let username = r.string("username", rep).map(|s| s.value);
    let password = r.string("password", rep).map(|s| s.value);
    let table = r.string("table", rep);
    let write_statement = r.string("write_statement", rep);
    let upsert_key = r.string_list("upsert_key", rep);
    let create_table = r.bool("create_table", true, rep);
    let tls = r.string("tls", rep);
    let batch_size = r.u64("batch_size", rep);
    let mut ok = true;

    let url = match (url, jdbc_url) {
        (Some(u), None) | (None, Some(u)) => check_url(&u, rep),
        (Some(_), Some(j)) => {
            rep.error(j.pos, "give `url` or `jdbc_url`, not both", None);
            None
        }
        (None, None) => {
            rep.error(
                r.pos(),
                "`WriteToPostgres` needs `url`",
                Some("for example url: postgres://user@host:5432/db".into()),
            );
            None
        }
    };
    ok &= url.is_some();
    if let Some(t) = &table
        && let Err(e) = super::sql::qualified_name(&t.value)
    {
        rep.error(t.pos, e, None);
        ok = false;
    }
    match (&table, &write_statement) {
        (None, None) => {
            rep.error(
                r.pos(),
                "`WriteToPostgres` needs `table` (or Beam's `write_statement`)",
                None,
            );
            ok = false;
        }
        (Some(_), Some(w)) => {
            rep.error(w.pos, "give `table` or `write_statement`, not both", None);
            ok = false;
        }
        _ => {}
    }
    let upsert_key: Vec<String> = match upsert_key {
        Some(k) if k.is_empty() => {
            rep.error(
                r.pos(),
                "`upsert_key` must name at least one field",
                Some("leave it out for plain INSERTs".into()),
            );
            ok = false;
            Vec::new()
        }
        Some(k) => {
            if let Some(w) = &write_statement {
                rep.error(
                    w.pos,
                    "`upsert_key` applies to `table`; a `write_statement` states its own conflict handling",
                    None,
                );
                ok = false;
            }
            let mut seen = Vec::new();
            for f in &k {
                if seen.contains(&f.value) {
                    rep.error(
                        f.pos,
                        format!("`{}` is repeated in `upsert_key`", f.value),
                        None,
                    );
                    ok = false;
                }
                seen.push(f.value.clone());
            }
            seen
        }
        None => Vec::new(),
    };
    let tls = match tls {
        None => Tls::Prefer,
        Some(t) => match t.value.as_str() {
            "disable" => Tls::Disable,
            "prefer" => Tls::Prefer,
            "require" => Tls::Require,
            other => {
                rep.error(
                    t.pos,
                    format!("unknown `tls` mode `{other}`"),
                    Some(suggest(other, &["disable", "prefer", "require"])),
                );
                ok = false;
                Tls::Prefer
            }
        },
    };
    if batch_size == Some(0) {
        rep.error(r.pos(), "`batch_size` must be at least 1", None);
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(PostgresConfig {
        url: url?,
        username,
        password,
        table: table.map(|t| t.value),
        write_statement: write_statement.map(|w| w.value),
        upsert_key,
        create_table,
        tls,
        batch_size: batch_size.map_or(DEFAULT_BATCH_SIZE, |b| b as usize),
        pos: at,
    })
}

/// Normalises a `jdbc:postgresql://` or `postgres://` URL and checks that tokio-postgres can
/// read it.
fn check_url(u: &Located<String>, rep: &mut Reporter) -> Option<String> {
    match normalize_url(&u.value) {
        Ok(url) => Some(url),
        Err((message, hint)) => {
            rep.error(u.pos, message, hint);
            None
        }
    }
}

/// `url` as `postgres://…` or `postgresql://…` (a `jdbc:` prefix removed), checked to parse and
/// to name a host. Shared with the Postgres state backend (`options.state`).
///
/// # Errors
/// The message and hint to report at the URL's position.
pub fn normalize_url(url: &str) -> Result<String, (String, Option<String>)> {
    let stripped = url.strip_prefix("jdbc:").unwrap_or(url);
    if !(stripped.starts_with("postgresql://") || stripped.starts_with("postgres://")) {
        return Err((
            format!("`{url}` is not a Postgres URL"),
            Some("use jdbc:postgresql://host:port/db or postgres://user@host:port/db".into()),
        ));
    }
    match tokio_postgres::Config::from_str(stripped) {
        Ok(c) if c.get_hosts().is_empty() => Err(("the Postgres URL names no host".into(), None)),
        Ok(_) => Ok(stripped.to_string()),
        Err(e) => Err((format!("invalid Postgres URL: {e}"), None)),
    }
}
