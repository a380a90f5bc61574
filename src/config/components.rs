//! Explicit registration of every transform type: its config struct and the one `match` that
//! reads it. `grep` finds every component here; the compiler finds a missing arm elsewhere.

use marked_yaml::Node;

use super::diag::{Pos, Reporter, suggest};
pub use super::exprs::{AGG_NAMES, AggFn, CombineField, ExprKind, ExprSpec, Language};
use super::exprs::{combine_fields, expr, language, required_expr};
use super::window::{Windowing, parse_windowing};
use super::yaml::{Located, MapReader, kind_of, pos_of, to_json};

/// Output file naming for file sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSink {
    pub path: Located<String>,
    pub num_shards: usize,
    /// Where `num_shards` was written (checked against `options.limits.max_shards`).
    pub num_shards_pos: Option<Pos>,
    /// Sluice extension, unbounded input in the global window: a file set is committed once it
    /// holds this many rows (default `io::streaming::DEFAULT_MAX_FILE_ROWS`).
    pub max_file_rows: Option<u64>,
    /// Sluice extension, unbounded input in the global window: a file set is committed this
    /// long after its first row (default `io::streaming::DEFAULT_MAX_FILE_AGE`).
    pub max_file_age: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransformConfig {
    Create {
        elements: Vec<serde_json::Value>,
    },
    LogForTesting {
        prefix: String,
        level: String,
    },
    AssertEqual {
        elements: Vec<serde_json::Value>,
    },
    ReadFromJson {
        path: Located<String>,
        schema: Option<serde_json::Value>,
    },
    WriteToJson(FileSink),
    ReadFromCsv {
        path: Located<String>,
        delimiter: u8,
        schema: Option<serde_json::Value>,
    },
    WriteToCsv {
        sink: FileSink,
        delimiter: u8,
    },
    ReadFromParquet {
        path: Located<String>,
    },
    WriteToParquet(FileSink),
    MapToFields {
        fields: Vec<(Located<String>, ExprSpec)>,
        append: bool,
        drop: Vec<Located<String>>,
    },
    Filter {
        keep: ExprSpec,
    },
    Explode {
        fields: Vec<Located<String>>,
        cross_product: bool,
    },
    Flatten,
    Partition {
        by: ExprSpec,
        outputs: Vec<Located<String>>,
        unknown_output: Option<Located<String>>,
    },
    ValidateWithSchema {
        schema: serde_json::Value,
        pos: Pos,
    },
    StripErrorMetadata,
    AssignTimestamps {
        timestamp: ExprSpec,
        /// Sluice extension: `watermark: {max_delay, idle_timeout}`.
        watermark: Option<WatermarkSpec>,
        /// Sluice extension: the unit of numeric timestamps (`unit:`, default `auto`).
        unit: crate::time::epoch::EpochUnit,
    },
    WindowInto {
        windowing: Located<Windowing>,
    },
    Combine {
        group_by: Vec<Located<String>>,
        combine: Vec<CombineField>,
    },
    ExtractWindowingInfo {
        fields: Vec<(String, String)>,
    },
    Sql {
        query: Located<String>,
    },
    /// Sluice extension: keeps the first row per `by` key within `within` of event time; with
    /// `by` empty (left out), per source message id (the hidden `__sluice_id` of Pub/Sub rows).
    Deduplicate {
        by: Vec<Located<String>>,
        within_ms: i64,
    },
    ReadFromPubSub(Box<crate::pubsub::config::ReadConfig>),
    WriteToPubSub(Box<crate::pubsub::config::WriteConfig>),
    WriteToPostgres(crate::sinks::postgres::PostgresConfig),
    WriteToRedis(crate::sinks::redis::RedisConfig),
    WriteToBigQuery(crate::bigquery::WriteConfig),
    ReadFromBigQuery(crate::bigquery::ReadConfig),
    /// Sluice extension: a data-quality gate with a valve.
    Check(Box<crate::transforms::check::CheckConfig>),
    /// Internal (never parsed): records its input, for `sluice test` expectations.
    Capture,
    /// A type named in the contract that this build does not run yet; `validate` rejects it.
    Unsupported {
        reason: String,
    },
    /// Unknown type or unreadable config; the problem was already reported.
    Invalid,
}

/// Every transform type `validate` knows, for "did you mean".
pub const KNOWN_TYPES: &[&str] = &[
    "Create",
    "LogForTesting",
    "AssertEqual",
    "ReadFromJson",
    "WriteToJson",
    "ReadFromCsv",
    "WriteToCsv",
    "ReadFromParquet",
    "WriteToParquet",
    "MapToFields",
    "Filter",
    "Explode",
    "Flatten",
    "Partition",
    "ValidateWithSchema",
    "StripErrorMetadata",
    "AssignTimestamps",
    "WindowInto",
    "Combine",
    "ExtractWindowingInfo",
    "Sql",
    "ReadFromPubSub",
    "WriteToPubSub",
    "ReadFromBigQuery",
    "WriteToBigQuery",
    "WriteToPostgres",
    "WriteToRedis",
    "Deduplicate",
    "Check",
];

/// Types of the contract whose connector is not in this build yet.
const NOT_YET: &[&str] = &[];

/// Sluice's watermark extension on `AssignTimestamps` (SPEC §4): bounded out-of-orderness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkSpec {
    /// How far behind the largest event time seen the watermark trails (default 10s).
    pub max_delay: std::time::Duration,
    /// Processing time without data after which the watermark jumps to the largest event time.
    pub idle_timeout: Option<std::time::Duration>,
}

/// Reads an epoch unit key (`auto` when absent); reports a value that is not one.
pub fn epoch_unit(
    r: &mut MapReader<'_>,
    key: &'static str,
    rep: &mut Reporter,
) -> crate::time::epoch::EpochUnit {
    use crate::time::epoch::EpochUnit;
    let Some(v) = r.string(key, rep) else {
        return EpochUnit::Auto;
    };
    EpochUnit::parse(&v.value).unwrap_or_else(|| {
        rep.error(
            v.pos,
            format!(
                "`{key}` must be one of {}, found `{}`",
                EpochUnit::NAMES,
                v.value
            ),
            Some("without `unit`, numbers below 10^11 are seconds and larger ones milliseconds (docs/windowing.md)".into()),
        );
        EpochUnit::Auto
    })
}

pub fn parse_config(
    ty: &Located<String>,
    node: Option<&Node>,
    rep: &mut Reporter,
) -> TransformConfig {
    let t = ty.value.as_str();
    let what = format!("`{t}` config");
    macro_rules! reader {
        ($keys:expr) => {
            MapReader::new(node, ty.pos, what.clone(), $keys, rep)
        };
    }
    match t {
        "Create" => {
            let mut r = reader!(&["elements", "reshuffle"]);
            let elements = elements(&mut r, rep);
            r.bool("reshuffle", false, rep);
            r.finish(rep);
            TransformConfig::Create { elements }
        }
        "AssertEqual" => {
            let mut r = reader!(&["elements"]);
            let elements = elements(&mut r, rep);
            r.finish(rep);
            TransformConfig::AssertEqual { elements }
        }
        "LogForTesting" => {
            let mut r = reader!(&["prefix", "level"]);
            let prefix = r.string("prefix", rep).map(|p| p.value).unwrap_or_default();
            let level = r
                .string("level", rep)
                .map(|p| p.value)
                .unwrap_or_else(|| "INFO".into());
            r.finish(rep);
            TransformConfig::LogForTesting { prefix, level }
        }
        "ReadFromJson" => {
            let mut r = reader!(&["path", "schema"]);
            let path = r.required_string("path", rep);
            let schema = r
                .node("schema")
                .map(|n| super::schema_check::check_reader(n, rep));
            r.finish(rep);
            match path {
                Some(path) => TransformConfig::ReadFromJson { path, schema },
                None => TransformConfig::Invalid,
            }
        }
        "ReadFromCsv" => {
            let mut r = reader!(&["path", "delimiter", "schema"]);
            let path = r.required_string("path", rep);
            let delimiter = delimiter(&mut r, rep);
            let schema = r
                .node("schema")
                .map(|n| super::schema_check::check_reader(n, rep));
            r.finish(rep);
            match path {
                Some(path) => TransformConfig::ReadFromCsv {
                    path,
                    delimiter,
                    schema,
                },
                None => TransformConfig::Invalid,
            }
        }
        "ReadFromParquet" => {
            let mut r = reader!(&["path"]);
            let path = r.required_string("path", rep);
            r.finish(rep);
            path.map_or(TransformConfig::Invalid, |path| {
                TransformConfig::ReadFromParquet { path }
            })
        }
        "WriteToJson" | "WriteToParquet" => {
            let mut r = reader!(&["path", "num_shards", "max_file_rows", "max_file_age"]);
            let sink = file_sink(&mut r, rep);
            r.finish(rep);
            match (t, sink) {
                ("WriteToJson", Some(s)) => TransformConfig::WriteToJson(s),
                (_, Some(s)) => TransformConfig::WriteToParquet(s),
                _ => TransformConfig::Invalid,
            }
        }
        "WriteToCsv" => {
            let mut r = reader!(&[
                "path",
                "num_shards",
                "delimiter",
                "max_file_rows",
                "max_file_age"
            ]);
            let sink = file_sink(&mut r, rep);
            let delimiter = delimiter(&mut r, rep);
            r.finish(rep);
            sink.map_or(TransformConfig::Invalid, |sink| {
                TransformConfig::WriteToCsv { sink, delimiter }
            })
        }
        "MapToFields" => {
            let mut r = reader!(&["language", "fields", "append", "drop"]);
            let lang = language(&mut r, rep);
            let append = r.bool("append", false, rep);
            let drop = r.string_list("drop", rep).unwrap_or_default();
            let mut fields = Vec::new();
            match r.node("fields") {
                Some(Node::Mapping(m)) => {
                    for (k, v) in m.iter() {
                        if let Some(e) = expr(v, lang, rep) {
                            fields.push((
                                Located::new(k.as_str().to_string(), Pos::from_span(k.span())),
                                e,
                            ));
                        }
                    }
                }
                Some(other) => rep.error(
                    pos_of(other),
                    "`fields` must be a mapping of output name to expression",
                    None,
                ),
                None if !append && drop.is_empty() => {
                    rep.error(ty.pos, "`MapToFields` needs `fields`", None);
                }
                None => {}
            }
            r.finish(rep);
            TransformConfig::MapToFields {
                fields,
                append,
                drop,
            }
        }
        "Filter" => {
            let mut r = reader!(&["language", "keep"]);
            let lang = language(&mut r, rep);
            let keep = required_expr(&mut r, "keep", lang, ty.pos, rep);
            r.finish(rep);
            keep.map_or(TransformConfig::Invalid, |keep| TransformConfig::Filter {
                keep,
            })
        }
        "AssignTimestamps" => {
            let mut r = reader!(&["language", "timestamp", "watermark", "unit"]);
            let lang = language(&mut r, rep);
            let ts = required_expr(&mut r, "timestamp", lang, ty.pos, rep);
            let unit = epoch_unit(&mut r, "unit", rep);
            let watermark = r.node("watermark").map(|n| {
                let mut w = MapReader::new(
                    Some(n),
                    pos_of(n),
                    "`watermark`",
                    &["max_delay", "idle_timeout"],
                    rep,
                );
                let spec = WatermarkSpec {
                    max_delay: w
                        .duration("max_delay", rep)
                        .unwrap_or(crate::time::watermark::DEFAULT_MAX_DELAY),
                    idle_timeout: w.duration("idle_timeout", rep),
                };
                w.finish(rep);
                spec
            });
            r.finish(rep);
            ts.map_or(TransformConfig::Invalid, |timestamp| {
                TransformConfig::AssignTimestamps {
                    timestamp,
                    watermark,
                    unit,
                }
            })
        }
        "Explode" => {
            let mut r = reader!(&["fields", "cross_product"]);
            let fields = r.string_list("fields", rep);
            let cross_product = r.bool("cross_product", true, rep);
            if fields.is_none() {
                rep.error(ty.pos, "`Explode` needs `fields`", None);
            }
            r.finish(rep);
            TransformConfig::Explode {
                fields: fields.unwrap_or_default(),
                cross_product,
            }
        }
        "Flatten" | "StripErrorMetadata" => {
            let r = reader!(&[]);
            r.finish(rep);
            if t == "Flatten" {
                TransformConfig::Flatten
            } else {
                TransformConfig::StripErrorMetadata
            }
        }
        "Partition" => {
            let mut r = reader!(&["language", "by", "outputs", "unknown_output"]);
            let lang = language(&mut r, rep);
            let by = required_expr(&mut r, "by", lang, ty.pos, rep);
            let outputs = r.string_list("outputs", rep).unwrap_or_default();
            if outputs.is_empty() {
                rep.error(
                    r.pos(),
                    "`Partition` needs a non-empty `outputs` list",
                    None,
                );
            }
            let unknown_output = r.string("unknown_output", rep);
            r.finish(rep);
            by.map_or(TransformConfig::Invalid, |by| TransformConfig::Partition {
                by,
                outputs,
                unknown_output,
            })
        }
        "ValidateWithSchema" => {
            let mut r = reader!(&["schema"]);
            let schema = r.node("schema");
            let out = match schema {
                Some(n) => {
                    super::schema_check::check(n, rep);
                    let value = schema_value(n);
                    match jsonschema::validator_for(&value) {
                        Ok(_) => TransformConfig::ValidateWithSchema {
                            schema: value,
                            pos: pos_of(n),
                        },
                        Err(e) => {
                            rep.error(pos_of(n), format!("invalid JSON schema: {e}"), None);
                            TransformConfig::Invalid
                        }
                    }
                }
                None => {
                    rep.error(ty.pos, "`ValidateWithSchema` needs `schema`", None);
                    TransformConfig::Invalid
                }
            };
            r.finish(rep);
            out
        }
        "WindowInto" => {
            let mut r = reader!(&["windowing"]);
            // Beam puts `windowing:` next to `type:` (read by `spec`, preferred by the graph);
            // `config.windowing` is accepted too.
            let w = match r.node("windowing") {
                Some(n) => parse_windowing(n, rep),
                None => Some(Located::new(Windowing::global(), ty.pos)),
            };
            r.finish(rep);
            w.map_or(TransformConfig::Invalid, |windowing| {
                TransformConfig::WindowInto { windowing }
            })
        }
        "Combine" => {
            let mut r = reader!(&["language", "group_by", "combine"]);
            let lang = language(&mut r, rep);
            let group_by = r.string_list("group_by", rep).unwrap_or_default();
            let combine = match r.node("combine") {
                Some(n) => combine_fields(n, lang, rep),
                None => {
                    rep.error(ty.pos, "`Combine` needs `combine`", None);
                    Vec::new()
                }
            };
            r.finish(rep);
            TransformConfig::Combine { group_by, combine }
        }
        "ExtractWindowingInfo" => {
            let mut r = reader!(&["fields"]);
            let all = [
                "window_start",
                "window_end",
                "pane_index",
                "pane_timing",
                "timestamp",
                "window_string",
                "window_type",
            ];
            let mut fields = Vec::new();
            match r.node("fields") {
                // Beam's default.
                None => fields.extend(
                    ["timestamp", "window_start", "window_end"]
                        .iter()
                        .map(|f| (f.to_string(), f.to_string())),
                ),
                Some(Node::Mapping(m)) => {
                    for (k, v) in m.iter() {
                        let info = v
                            .as_scalar()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default();
                        check_info(&info, pos_of(v), &all, rep);
                        fields.push((k.as_str().to_string(), info));
                    }
                }
                Some(n) => {
                    for f in super::yaml::string_list(n, "fields", rep).unwrap_or_default() {
                        check_info(&f.value, f.pos, &all, rep);
                        fields.push((f.value.clone(), f.value));
                    }
                }
            }
            r.finish(rep);
            TransformConfig::ExtractWindowingInfo { fields }
        }
        "Deduplicate" => {
            let mut r = reader!(&["by", "within"]);
            // Without `by`, rows are duplicates when their source message id is the same.
            let by = r.string_list("by", rep).unwrap_or_default();
            if by.is_empty() && r.has("by") {
                rep.error(
                    r.pos(),
                    "`Deduplicate`'s `by` is empty",
                    Some("name the fields that identify a duplicate, or leave `by` out to deduplicate by the source's message id (Pub/Sub message_id or id_attribute)".into()),
                );
            }
            let within = r.duration("within", rep);
            if within.is_none() {
                rep.error(
                    r.pos(),
                    "`Deduplicate` needs `within`: how long (event time) to remember a key",
                    Some("e.g. `within: 10m`".into()),
                );
            }
            r.finish(rep);
            TransformConfig::Deduplicate {
                by,
                within_ms: within.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            }
        }
        "Sql" => {
            let mut r = reader!(&["query", "dialect"]);
            let query = r.required_string("query", rep);
            if let Some(d) = r.string("dialect", rep)
                && !d.value.eq_ignore_ascii_case("datafusion")
                && !d.value.eq_ignore_ascii_case("generic")
            {
                rep.error(
                    d.pos,
                    format!("SQL dialect `{}` is not supported", d.value),
                    Some("Sluice runs queries with DataFusion's SQL dialect".into()),
                );
            }
            r.finish(rep);
            query.map_or(TransformConfig::Invalid, |query| TransformConfig::Sql {
                query,
            })
        }
        "ReadFromPubSub" => crate::pubsub::config::parse_read(node, ty.pos, rep)
            .map_or(TransformConfig::Invalid, |c| {
                TransformConfig::ReadFromPubSub(Box::new(c))
            }),
        "WriteToPubSub" => crate::pubsub::config::parse_write(node, ty.pos, rep)
            .map_or(TransformConfig::Invalid, |c| {
                TransformConfig::WriteToPubSub(Box::new(c))
            }),
        "WriteToPostgres" => {
            let mut r = reader!(crate::sinks::postgres::config::KEYS);
            let cfg = crate::sinks::postgres::config::parse(&mut r, ty.pos, rep);
            r.finish(rep);
            cfg.map_or(TransformConfig::Invalid, TransformConfig::WriteToPostgres)
        }
        "WriteToRedis" => {
            let mut r = reader!(crate::sinks::redis::config::KEYS);
            let cfg = crate::sinks::redis::config::parse(&mut r, rep);
            r.finish(rep);
            cfg.map_or(TransformConfig::Invalid, TransformConfig::WriteToRedis)
        }
        "WriteToBigQuery" => {
            let mut r = reader!(crate::bigquery::config::WRITE_KEYS);
            // `error_handling` inside `config` is read with the transform (spec.rs).
            r.node("error_handling");
            let cfg = crate::bigquery::config::parse_write(&mut r, ty.pos, rep);
            r.finish(rep);
            cfg.map_or(TransformConfig::Invalid, TransformConfig::WriteToBigQuery)
        }
        "ReadFromBigQuery" => {
            let mut r = reader!(crate::bigquery::config::READ_KEYS);
            let cfg = crate::bigquery::config::parse_read(&mut r, ty.pos, rep);
            r.finish(rep);
            cfg.map_or(TransformConfig::Invalid, TransformConfig::ReadFromBigQuery)
        }
        "Check" => {
            let mut r = reader!(crate::transforms::check::config::KEYS);
            let cfg = crate::transforms::check::config::parse(&mut r, ty.pos, rep);
            r.finish(rep);
            cfg.map_or(TransformConfig::Invalid, |c| {
                TransformConfig::Check(Box::new(c))
            })
        }
        _ if NOT_YET.contains(&t) => {
            let reason = format!(
                "transform type `{t}` is part of Sluice's contract but not available in this build yet"
            );
            rep.error(
                ty.pos,
                reason.clone(),
                Some("see README.md for the transforms this version runs".into()),
            );
            TransformConfig::Unsupported { reason }
        }
        _ => {
            rep.error(
                ty.pos,
                format!("unknown transform type `{t}`"),
                Some(suggest(t, KNOWN_TYPES)),
            );
            TransformConfig::Invalid
        }
    }
}

impl TransformConfig {
    /// An error output declared inside `config` (Beam's place for I/O transforms).
    pub fn config_error_output(&self) -> Option<&Located<String>> {
        match self {
            TransformConfig::ReadFromPubSub(c) => c.error_output.as_ref(),
            TransformConfig::WriteToPubSub(c) => c.error_output.as_ref(),
            _ => None,
        }
    }
}

fn check_info(info: &str, pos: Pos, all: &[&str], rep: &mut Reporter) {
    if !all.contains(&info) {
        rep.error(
            pos,
            format!("unknown windowing info `{info}`"),
            Some(suggest(info, all)),
        );
    }
}

fn elements(r: &mut MapReader<'_>, rep: &mut Reporter) -> Vec<serde_json::Value> {
    match r.node("elements") {
        Some(Node::Sequence(s)) => super::yaml::elements_to_json(s, rep),
        Some(other) => {
            rep.error(
                pos_of(other),
                format!("`elements` must be a list, found {}", kind_of(other)),
                None,
            );
            Vec::new()
        }
        None => {
            rep.error(r.pos(), "missing required key `elements`", None);
            Vec::new()
        }
    }
}

/// A schema may be given inline as YAML or as a JSON string.
fn schema_value(node: &Node) -> serde_json::Value {
    match to_json(node) {
        serde_json::Value::String(s) => {
            serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))
        }
        v => v,
    }
}

fn delimiter(r: &mut MapReader<'_>, rep: &mut Reporter) -> u8 {
    match r.string("delimiter", rep) {
        None => b',',
        Some(d) if d.value.len() == 1 => d.value.as_bytes()[0],
        Some(d) if d.value == "\\t" => b'\t',
        Some(d) => {
            rep.error(d.pos, "`delimiter` must be a single character", None);
            b','
        }
    }
}

fn file_sink(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<FileSink> {
    let path = r.required_string("path", rep);
    let num_shards_pos = r.node("num_shards").map(pos_of);
    let num_shards =
        usize::try_from(r.u64("num_shards", rep).unwrap_or(1).max(1)).unwrap_or(usize::MAX);
    let rows_pos = r.node("max_file_rows").map(pos_of);
    let max_file_rows = r.u64("max_file_rows", rep);
    if let (Some(0), Some(pos)) = (max_file_rows, rows_pos) {
        rep.error(
            pos,
            "`max_file_rows` must be at least 1",
            Some("the number of rows after which a file set is committed, e.g. 1000000".into()),
        );
    }
    let age_pos = r.node("max_file_age").map(pos_of);
    let max_file_age = r.duration("max_file_age", rep);
    if let (Some(d), Some(pos)) = (max_file_age, age_pos)
        && d.is_zero()
    {
        rep.error(
            pos,
            "`max_file_age` must be longer than 0",
            Some("how long a file set stays open after its first row, e.g. 5m".into()),
        );
    }
    Some(FileSink {
        path: path?,
        num_shards,
        num_shards_pos,
        max_file_rows,
        max_file_age,
    })
}
