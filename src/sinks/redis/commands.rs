//! Rows → Redis commands, without I/O: resolves the config's field names against a schema once,
//! then renders each row's commands or the reason it cannot be written. Every command is
//! idempotent (HSET/HDEL, SET, ZADD, PEXPIRE: never INCR), so a replayed or retried batch leaves
//! the same state.

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use redis::Cmd;

use super::config::{Mode, Part, RedisConfig, Template};
use crate::record::rows;
use crate::sinks::values::column_text;

/// A template with field names resolved to column indices.
#[derive(Debug, Clone)]
struct Resolved(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Col(usize),
}

/// The config resolved against one input schema.
#[derive(Debug, Clone)]
pub struct Compiled {
    key: Resolved,
    kind: Kind,
    ttl: Option<Duration>,
    max_value_bytes: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Hash(Vec<usize>),
    Json,
    String(usize),
    Zset { member: Resolved, score: usize },
}

/// Rendered rows: each writable row's commands, and (row JSON, reason) for the others.
pub type Rendered = (Vec<RowWrite>, Vec<(String, String)>);

/// The commands of one row.
#[derive(Debug)]
pub struct RowWrite {
    pub row: usize,
    pub cmds: Vec<Cmd>,
}

impl Compiled {
    /// # Errors
    /// A field the config names that the input lacks (the message lists the input's fields).
    pub fn new(cfg: &RedisConfig, schema: &SchemaRef) -> Result<Compiled, String> {
        let col = |name: &str, what: &str| {
            schema.index_of(name).map_err(|_| {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!(
                    "{what} names field `{name}`, which the input does not have (fields: {})",
                    have.join(", ")
                )
            })
        };
        let resolve = |t: &Template, what: &str| -> Result<Resolved, String> {
            t.parts
                .iter()
                .map(|p| match p {
                    Part::Lit(s) => Ok(Piece::Lit(s.clone())),
                    Part::Field(f) => col(f, what).map(Piece::Col),
                })
                .collect::<Result<_, _>>()
                .map(Resolved)
        };
        let kind = match &cfg.mode {
            Mode::Hash { fields: None } => Kind::Hash((0..schema.fields().len()).collect()),
            Mode::Hash { fields: Some(f) } => Kind::Hash(
                f.iter()
                    .map(|n| col(n, "`fields`"))
                    .collect::<Result<_, _>>()?,
            ),
            Mode::Json => Kind::Json,
            Mode::String { value } => Kind::String(col(value, "`value`")?),
            Mode::Zset { member, score } => {
                let s = col(score, "`score`")?;
                let t = schema.field(s).data_type();
                if !(t.is_numeric() || matches!(t, DataType::Utf8 | DataType::LargeUtf8)) {
                    return Err(format!("`score` field `{score}` is {t}, not a number"));
                }
                Kind::Zset {
                    member: resolve(member, "`member`")?,
                    score: s,
                }
            }
        };
        Ok(Compiled {
            key: resolve(&cfg.key, "`key`")?,
            kind,
            ttl: cfg.ttl,
            max_value_bytes: cfg.max_value_bytes,
        })
    }

    /// Each row's commands, and (row JSON, reason) for rows that cannot be written.
    ///
    /// # Errors
    /// A column type that cannot be rendered as text.
    pub fn render(&self, rows_: &RecordBatch) -> Result<Rendered, String> {
        let schema = rows_.schema();
        let texts: Vec<Vec<Option<String>>> = rows_
            .columns()
            .iter()
            .map(column_text)
            .collect::<Result<_, _>>()?;
        let json = matches!(self.kind, Kind::Json).then(|| rows::to_json_rows(rows_));
        let scores = match &self.kind {
            Kind::Zset { score, .. } => Some(scores(rows_.column(*score))),
            _ => None,
        };
        let mut writes = Vec::with_capacity(rows_.num_rows());
        let mut rejected = Vec::new();
        for r in 0..rows_.num_rows() {
            let result = (|| -> Result<Vec<Cmd>, String> {
                let key = fill(&self.key, &texts, r, &schema, "key")?;
                let mut cmds = Vec::with_capacity(2);
                match &self.kind {
                    Kind::Hash(cols) => {
                        let mut set = redis::cmd("HSET");
                        let mut del = redis::cmd("HDEL");
                        set.arg(&key);
                        del.arg(&key);
                        let (mut sets, mut dels) = (0, 0);
                        for &c in cols {
                            let name = schema.field(c).name();
                            match &texts[c][r] {
                                Some(v) => {
                                    self.check_size(name, v.len())?;
                                    set.arg(name).arg(v);
                                    sets += 1;
                                }
                                None => {
                                    del.arg(name);
                                    dels += 1;
                                }
                            }
                        }
                        if sets > 0 {
                            cmds.push(set);
                        }
                        if dels > 0 {
                            cmds.push(del);
                        }
                        self.expire(&mut cmds, &key);
                    }
                    Kind::Json | Kind::String(_) => {
                        let value = match (&self.kind, &json) {
                            (Kind::String(c), _) => texts[*c][r].clone().ok_or_else(|| {
                                format!("value field `{}` is null", schema.field(*c).name())
                            })?,
                            (_, Some(j)) => serde_json::Value::Object(j[r].clone()).to_string(),
                            _ => unreachable!("json rows are rendered in json mode"),
                        };
                        self.check_size("value", value.len())?;
                        let mut set = redis::cmd("SET");
                        set.arg(&key).arg(value);
                        if let Some(t) = self.ttl {
                            set.arg("PX").arg(t.as_millis() as u64);
                        }
                        cmds.push(set);
                    }
                    Kind::Zset { member, score } => {
                        let m = fill(member, &texts, r, &schema, "member")?;
                        self.check_size("member", m.len())?;
                        let s = scores.as_ref().and_then(|s| s[r]).ok_or_else(|| {
                            format!(
                                "score field `{}` is not a number: {}",
                                schema.field(*score).name(),
                                texts[*score][r].as_deref().unwrap_or("null")
                            )
                        })?;
                        let mut z = redis::cmd("ZADD");
                        z.arg(&key).arg(s).arg(m);
                        cmds.push(z);
                        self.expire(&mut cmds, &key);
                    }
                }
                Ok(cmds)
            })();
            match result {
                Ok(cmds) => writes.push(RowWrite { row: r, cmds }),
                Err(e) => rejected.push((rows::row_json(rows_, r), e)),
            }
        }
        Ok((writes, rejected))
    }

    fn check_size(&self, what: &str, len: usize) -> Result<(), String> {
        if len > self.max_value_bytes {
            return Err(format!(
                "{what} is {len} bytes, over max_value_bytes ({})",
                self.max_value_bytes
            ));
        }
        Ok(())
    }

    fn expire(&self, cmds: &mut Vec<Cmd>, key: &str) {
        if let Some(t) = self.ttl {
            let mut e = redis::cmd("PEXPIRE");
            e.arg(key).arg(t.as_millis() as u64);
            cmds.push(e);
        }
    }
}

fn fill(
    t: &Resolved,
    texts: &[Vec<Option<String>>],
    r: usize,
    schema: &SchemaRef,
    what: &str,
) -> Result<String, String> {
    let mut s = String::new();
    for p in &t.0 {
        match p {
            Piece::Lit(l) => s.push_str(l),
            Piece::Col(c) => match &texts[*c][r] {
                Some(v) => s.push_str(v),
                None => {
                    return Err(format!(
                        "{what} field `{}` is null",
                        schema.field(*c).name()
                    ));
                }
            },
        }
    }
    Ok(s)
}

/// Scores as f64: numeric columns through the cast kernel, strings parsed; `None` for nulls,
/// unparseable text and NaN (which ZADD refuses).
fn scores(col: &dyn Array) -> Vec<Option<f64>> {
    if matches!(col.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
        let Ok(s) = cast(col, &DataType::Utf8) else {
            return vec![None; col.len()];
        };
        return s
            .as_string::<i32>()
            .iter()
            .map(|v| {
                v.and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|f| !f.is_nan())
            })
            .collect();
    }
    match cast(col, &DataType::Float64) {
        Ok(f) => f
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.filter(|f| !f.is_nan()))
            .collect(),
        Err(_) => vec![None; col.len()],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, true),
                Field::new("views", DataType::Int64, true),
                Field::new("score", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
                Arc::new(StringArray::from(vec![Some("1.5"), Some("2"), Some("x")])),
            ],
        )
        .unwrap()
    }

    fn cfg(mode: Mode) -> RedisConfig {
        RedisConfig {
            url: "redis://127.0.0.1".into(),
            key: Template::parse("r:{id}").unwrap(),
            mode,
            ttl: Some(Duration::from_secs(60)),
            max_value_bytes: 100,
        }
    }

    fn args(c: &Cmd) -> Vec<String> {
        c.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).to_string(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn hash_sets_present_fields_deletes_null_ones_and_rejects_null_keys() {
        let b = batch();
        let c = Compiled::new(&cfg(Mode::Hash { fields: None }), &b.schema()).unwrap();
        let (writes, rejected) = c.render(&b).unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!(
            args(&writes[0].cmds[0]),
            ["HSET", "r:a", "id", "a", "views", "1", "score", "1.5"]
        );
        assert_eq!(args(&writes[0].cmds[1]), ["PEXPIRE", "r:a", "60000"]);
        assert_eq!(args(&writes[1].cmds[1]), ["HDEL", "r:c", "views"]);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].1.contains("key field `id` is null"));
    }

    #[test]
    fn zset_rejects_non_numeric_scores() {
        let b = batch();
        let mode = Mode::Zset {
            member: Template::parse("{id}").unwrap(),
            score: "score".into(),
        };
        let c = Compiled::new(&cfg(mode), &b.schema()).unwrap();
        let (writes, rejected) = c.render(&b).unwrap();
        assert_eq!(args(&writes[0].cmds[0]), ["ZADD", "r:a", "1.5", "a"]);
        assert_eq!(rejected.len(), 2);
        assert!(rejected[1].1.contains("not a number: x"), "{:?}", rejected);
    }

    #[test]
    fn oversized_values_and_unknown_fields_are_refused() {
        let b = batch();
        let mut c = cfg(Mode::Json);
        c.max_value_bytes = 10;
        let (writes, rejected) = Compiled::new(&c, &b.schema()).unwrap().render(&b).unwrap();
        assert!(writes.is_empty());
        assert!(
            rejected
                .iter()
                .any(|r| r.1.contains("over max_value_bytes"))
        );
        c.key = Template::parse("r:{nope}").unwrap();
        let e = Compiled::new(&c, &b.schema()).unwrap_err();
        assert!(
            e.contains("`nope`") && e.contains("fields: id, views, score"),
            "{e}"
        );
    }
}
