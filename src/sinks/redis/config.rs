//! `WriteToRedis` configuration: `url`, `key` (a template over fields), `mode` with its keys
//! (`fields` for hash, `value` for string, `member` and `score` for zset), `ttl`,
//! `max_value_bytes`. Checked at `sluice validate`; field names are checked against the input
//! schema at run time, when it is known.

use std::time::Duration;

use crate::config::diag::{Reporter, suggest};
use crate::config::yaml::{Located, MapReader};

/// Default limit on one written value. Redis accepts up to 512 MiB, but values this large
/// block the server while they are copied; 1 MiB keeps a runaway row (an unbounded `concat`)
/// out of the cache and in the error output instead.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// A key or member template: literal text and `{field}` references (`{{`/`}}` escape braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Field(String),
}

impl Template {
    /// # Errors
    /// Unbalanced braces or an empty `{}`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{` in `{text}`")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in `{text}`: name a field"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(format!("unmatched `}}` in `{text}` (write `}}}}`)")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if parts.is_empty() {
            return Err("the template is empty".into());
        }
        Ok(Template { parts })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Lit(_) => None,
        })
    }
}

/// How a row is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// HSET of the named fields (all when `None`); null fields are removed with HDEL.
    Hash { fields: Option<Vec<String>> },
    /// SET of the row as a JSON object.
    Json,
    /// SET of one field's value.
    String { value: String },
    /// ZADD of `member` (a template) with the `score` field.
    Zset { member: Template, score: String },
}

pub const MODES: &[&str] = &["hash", "json", "string", "zset"];

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    pub url: String,
    pub key: Template,
    pub mode: Mode,
    pub ttl: Option<Duration>,
    pub max_value_bytes: usize,
}

pub const KEYS: &[&str] = &[
    "url",
    "key",
    "mode",
    "fields",
    "value",
    "member",
    "score",
    "ttl",
    "max_value_bytes",
];

/// Reads and checks the config, reporting every problem with its position.
pub fn parse(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<RedisConfig> {
    let url = r.required_string("url", rep);
    let key = r.required_string("key", rep);
    let mode = r.string("mode", rep);
    let fields = r.string_list("fields", rep);
    let value = r.string("value", rep);
    let member = r.string("member", rep);
    let score = r.string("score", rep);
    let ttl = r.duration("ttl", rep);
    let max_value_bytes = r.u64("max_value_bytes", rep);
    let mut ok = true;

    if let Some(u) = &url {
        ok &= check_url(u, rep);
    }
    let key = key.and_then(|k| template(&k, rep));
    let mode_name = mode.as_ref().map_or("hash", |m| m.value.as_str());
    let at = mode.as_ref().map_or(r.pos(), |m| m.pos);
    let only = |rep: &mut Reporter, v: &Option<Located<String>>, k: &str, m: &str| {
        if let Some(v) = v {
            rep.error(v.pos, format!("`{k}` applies to `mode: {m}` only"), None);
            false
        } else {
            true
        }
    };
    let mode = match mode_name {
        "hash" => {
            ok &= only(rep, &value, "value", "string");
            ok &= only(rep, &member, "member", "zset");
            ok &= only(rep, &score, "score", "zset");
            if let Some(f) = &fields
                && f.is_empty()
            {
                rep.error(at, "`fields` must name at least one field", None);
                ok = false;
            }
            Some(Mode::Hash {
                fields: fields.map(|f| f.into_iter().map(|l| l.value).collect()),
            })
        }
        "json" | "string" | "zset" => {
            if let Some(f) = fields.as_ref().and_then(|f| f.first()) {
                rep.error(f.pos, "`fields` applies to `mode: hash` only", None);
                ok = false;
            }
            match mode_name {
                "json" => {
                    ok &= only(rep, &value, "value", "string");
                    ok &= only(rep, &member, "member", "zset");
                    ok &= only(rep, &score, "score", "zset");
                    Some(Mode::Json)
                }
                "string" => {
                    ok &= only(rep, &member, "member", "zset");
                    ok &= only(rep, &score, "score", "zset");
                    match value {
                        Some(v) => Some(Mode::String { value: v.value }),
                        None => {
                            rep.error(at, "`mode: string` needs `value`: the field to store", None);
                            None
                        }
                    }
                }
                _ => {
                    ok &= only(rep, &value, "value", "string");
                    let member = match member {
                        Some(m) => template(&m, rep),
                        None => {
                            rep.error(
                                at,
                                "`mode: zset` needs `member`: a template such as `{recipe_id}`",
                                None,
                            );
                            None
                        }
                    };
                    if score.is_none() {
                        rep.error(at, "`mode: zset` needs `score`: a numeric field", None);
                    }
                    match (member, score) {
                        (Some(member), Some(score)) => Some(Mode::Zset {
                            member,
                            score: score.value,
                        }),
                        _ => None,
                    }
                }
            }
        }
        other => {
            rep.error(
                at,
                format!("unknown `mode` `{other}`"),
                Some(suggest(other, MODES)),
            );
            None
        }
    };
    if ttl == Some(Duration::ZERO) {
        rep.error(
            r.pos(),
            "`ttl` must be positive (leave it out for no expiry)",
            None,
        );
        ok = false;
    }
    if max_value_bytes == Some(0) {
        rep.error(r.pos(), "`max_value_bytes` must be at least 1", None);
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(RedisConfig {
        url: url?.value,
        key: key?,
        mode: mode?,
        ttl,
        max_value_bytes: max_value_bytes.map_or(DEFAULT_MAX_VALUE_BYTES, |m| m as usize),
    })
}

fn template(t: &Located<String>, rep: &mut Reporter) -> Option<Template> {
    match Template::parse(&t.value) {
        Ok(t) => Some(t),
        Err(e) => {
            rep.error(
                t.pos,
                e,
                Some("fields are named in braces: `recipe:{recipe_id}`".into()),
            );
            None
        }
    }
}

fn check_url(u: &Located<String>, rep: &mut Reporter) -> bool {
    if !u.value.starts_with("redis://") {
        rep.error(
            u.pos,
            format!("`{}` is not a Redis URL", u.value),
            Some(
                "use redis://[user:password@]host:port[/db] (rediss:// TLS is not in this build)"
                    .into(),
            ),
        );
        return false;
    }
    match redis::Client::open(u.value.as_str()) {
        Ok(_) => true,
        Err(e) => {
            rep.error(u.pos, format!("invalid Redis URL: {e}"), None);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_fields_literals_and_escapes() {
        let t = Template::parse("recipe:{recipe_id}:views:{ window_start }{{x}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Lit("recipe:".into()),
                Part::Field("recipe_id".into()),
                Part::Lit(":views:".into()),
                Part::Field("window_start".into()),
                Part::Lit("{x}".into()),
            ]
        );
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            vec!["recipe_id", "window_start"]
        );
        assert!(Template::parse("a:{b").is_err());
        assert!(Template::parse("a:{}").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("").is_err());
    }
}
