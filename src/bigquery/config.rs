//! The `WriteToBigQuery` / `ReadFromBigQuery` configs: Beam YAML's keys plus Sluice's extensions,
//! read from marked YAML so every problem is reported with its `file:line:col`.
//!
//! Table specs follow Beam: `project.dataset.table` or `project:dataset.table`; `dataset.table`
//! takes the project from `GOOGLE_CLOUD_PROJECT` at run time.

use crate::config::diag::{Pos, Reporter, suggest};
use crate::config::yaml::{Located, MapReader, pos_of};

/// A table reference. `project` is `None` when the spec named only `dataset.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub project: Option<String>,
    pub dataset: String,
    pub table: String,
}

impl TableRef {
    /// Parses `project.dataset.table`, `project:dataset.table` or `dataset.table`.
    ///
    /// # Errors
    /// A message saying what is wrong with the spec.
    pub fn parse(spec: &str) -> Result<TableRef, String> {
        let spec = spec.trim().trim_matches('`');
        let (project, rest) = match spec.split_once(':') {
            Some((p, rest)) => (Some(p.to_string()), rest.to_string()),
            None => (None, spec.to_string()),
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let (project, dataset, table) = match (project, parts.as_slice()) {
            (Some(p), [d, t]) => (Some(p), *d, *t),
            (None, [p, d, t]) => (Some(p.to_string()), *d, *t),
            (None, [d, t]) => (None, *d, *t),
            _ => {
                return Err(format!(
                    "table `{spec}` is not `project.dataset.table`, `project:dataset.table` or `dataset.table`"
                ));
            }
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        };
        if let Some(p) = &project
            && !ident(p)
        {
            return Err(format!("invalid project id `{p}` in table `{spec}`"));
        }
        if !ident(dataset) || dataset.contains('-') {
            return Err(format!(
                "invalid dataset id `{dataset}` in table `{spec}` (letters, digits and _)"
            ));
        }
        if !ident(table) {
            return Err(format!("invalid table id `{table}` in table `{spec}`"));
        }
        Ok(TableRef {
            project,
            dataset: dataset.to_string(),
            table: table.to_string(),
        })
    }

    /// The project, falling back to `default` (from `GOOGLE_CLOUD_PROJECT`).
    pub fn project_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.project.as_deref().unwrap_or(default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateDisposition {
    CreateIfNeeded,
    CreateNever,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDisposition {
    Append,
    Truncate,
    Empty,
}

/// How rows reach BigQuery (see docs/bigquery.md, "Method").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    /// `tabledata.insertAll` (streaming inserts) with `insertId` = the row's deterministic id.
    InsertAll,
    /// The Storage Write API through COMMITTED streams with offsets: the default, as in Beam
    /// (`STORAGE_WRITE_API`). A retried append is applied once.
    StorageWrite,
    /// The Storage Write API through the table's `_default` stream, without offsets (Beam's
    /// `STORAGE_API_AT_LEAST_ONCE`): a retried append may be applied twice.
    StorageWriteAtLeastOnce,
}

impl WriteMethod {
    /// The spellings `method` accepts (case-insensitive), Beam's and Sluice's.
    pub const NAMES: &[(&str, WriteMethod)] = &[
        ("storage_write", WriteMethod::StorageWrite),
        ("storage_write_api", WriteMethod::StorageWrite),
        (
            "storage_write_at_least_once",
            WriteMethod::StorageWriteAtLeastOnce,
        ),
        (
            "storage_api_at_least_once",
            WriteMethod::StorageWriteAtLeastOnce,
        ),
        ("insert_all", WriteMethod::InsertAll),
        ("streaming_inserts", WriteMethod::InsertAll),
    ];
}

/// `WriteToBigQuery`'s config.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteConfig {
    pub table: Located<TableRef>,
    pub create_disposition: CreateDisposition,
    pub write_disposition: WriteDisposition,
    pub method: WriteMethod,
    /// Beam's `num_streams`: write streams (Storage Write API) or concurrent insert requests per
    /// batch (`insert_all`); at least 1.
    pub num_streams: usize,
    /// Day partitioning on this field; `None` = the default (`window_start` when present).
    pub partition_by: Option<String>,
    pub cluster_by: Vec<String>,
}

/// `ReadFromBigQuery`'s config: exactly one of `table` and `query`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadConfig {
    pub source: ReadSource,
    pub fields: Vec<String>,
    pub row_restriction: Option<String>,
    /// Sluice extension: read only rows past a durable high-water mark (the feeder).
    pub high_water_mark: Option<super::hwm::HighWaterMark>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadSource {
    Table(TableRef),
    Query(String),
}

pub const WRITE_KEYS: &[&str] = &[
    "table",
    "create_disposition",
    "write_disposition",
    "error_handling",
    "num_streams",
    "method",
    "partition_by",
    "cluster_by",
];

pub const READ_KEYS: &[&str] = &[
    "table",
    "query",
    "fields",
    "row_restriction",
    "high_water_mark",
];

fn table_ref(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<Located<TableRef>> {
    let t = r.string("table", rep)?;
    match TableRef::parse(&t.value) {
        Ok(tr) => Some(Located::new(tr, t.pos)),
        Err(e) => {
            rep.error(
                t.pos,
                e,
                Some("write e.g. `my-project.my_dataset.my_table`".into()),
            );
            None
        }
    }
}

fn choice<T: Copy>(
    r: &mut MapReader<'_>,
    key: &'static str,
    options: &[(&'static str, T)],
    default: T,
    rep: &mut Reporter,
) -> T {
    let Some(v) = r.string(key, rep) else {
        return default;
    };
    let upper = v.value.to_ascii_uppercase();
    match options.iter().find(|(n, _)| n.eq_ignore_ascii_case(&upper)) {
        Some((_, t)) => *t,
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            rep.error(
                v.pos,
                format!("unknown `{key}` `{}`", v.value),
                Some(suggest(&upper, &names)),
            );
            default
        }
    }
}

/// Reads `WriteToBigQuery`'s config (the reader was made with [`WRITE_KEYS`]).
/// `error_handling` inside `config` is read by the spec parser, not here.
pub fn parse_write(
    r: &mut MapReader<'_>,
    fallback: Pos,
    rep: &mut Reporter,
) -> Option<WriteConfig> {
    if !r.has("table") {
        rep.error(fallback, "`WriteToBigQuery` needs `table`", None);
    }
    let table = table_ref(r, rep);
    let create_disposition = choice(
        r,
        "create_disposition",
        &[
            ("CREATE_IF_NEEDED", CreateDisposition::CreateIfNeeded),
            ("CREATE_NEVER", CreateDisposition::CreateNever),
        ],
        CreateDisposition::CreateIfNeeded,
        rep,
    );
    let write_disposition = choice(
        r,
        "write_disposition",
        &[
            ("WRITE_APPEND", WriteDisposition::Append),
            ("WRITE_TRUNCATE", WriteDisposition::Truncate),
            ("WRITE_EMPTY", WriteDisposition::Empty),
        ],
        WriteDisposition::Append,
        rep,
    );
    let method = match r.string("method", rep) {
        None => WriteMethod::StorageWrite,
        Some(m) => {
            let lower = m.value.to_ascii_lowercase();
            match WriteMethod::NAMES.iter().find(|(n, _)| *n == lower) {
                Some((_, w)) => *w,
                None => {
                    let names: Vec<&str> = WriteMethod::NAMES.iter().map(|(n, _)| *n).collect();
                    rep.error(
                        m.pos,
                        format!("unknown `method` `{}`", m.value),
                        Some(suggest(&lower, &names)),
                    );
                    WriteMethod::StorageWrite
                }
            }
        }
    };
    let num_streams = r.u64("num_streams", rep).unwrap_or(1).clamp(1, 64) as usize;
    let partition_by = r.string("partition_by", rep).map(|p| p.value);
    let cluster_by: Vec<String> = r
        .string_list("cluster_by", rep)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.value)
        .collect();
    if cluster_by.len() > 4
        && let Some(n) = r.node("cluster_by")
    {
        rep.error(pos_of(n), "BigQuery clusters on at most 4 fields", None);
    }
    Some(WriteConfig {
        table: table?,
        create_disposition,
        write_disposition,
        method,
        num_streams,
        partition_by,
        cluster_by,
    })
}

/// Reads `ReadFromBigQuery`'s config (the reader was made with [`READ_KEYS`]).
pub fn parse_read(r: &mut MapReader<'_>, fallback: Pos, rep: &mut Reporter) -> Option<ReadConfig> {
    let has_table = r.has("table");
    let query = r.string("query", rep);
    let fields: Vec<String> = r
        .string_list("fields", rep)
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.value)
        .collect();
    let row_restriction = r.string("row_restriction", rep);
    let high_water_mark = r
        .node("high_water_mark")
        .and_then(|n| super::hwm::parse(n, rep));
    if let Some(h) = &high_water_mark {
        let at = r.node("high_water_mark").map_or(fallback, pos_of);
        super::hwm::check(h, &fields, query.is_some(), at, rep);
    }
    let table = table_ref(r, rep);
    let source = match (has_table, query) {
        (true, Some(q)) => {
            rep.error(
                q.pos,
                "`ReadFromBigQuery` takes either `table` or `query`, not both",
                Some("put the table in the query's FROM clause, or drop `query`".into()),
            );
            return None;
        }
        (false, None) => {
            rep.error(
                fallback,
                "`ReadFromBigQuery` needs `table` or `query`",
                None,
            );
            return None;
        }
        (false, Some(q)) => {
            for (key, given) in [
                ("fields", !fields.is_empty()),
                ("row_restriction", row_restriction.is_some()),
            ] {
                if given {
                    rep.error(
                        q.pos,
                        format!("`{key}` applies to `table` reads only"),
                        Some("select and filter in the query instead".into()),
                    );
                }
            }
            ReadSource::Query(q.value)
        }
        (true, None) => ReadSource::Table(table?.value),
    };
    Some(ReadConfig {
        source,
        fields,
        row_restriction: row_restriction.map(|r| r.value),
        high_water_mark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_specs() {
        let t = TableRef::parse("p-1.ds.t").unwrap();
        assert_eq!(
            (t.project.as_deref(), t.dataset.as_str(), t.table.as_str()),
            (Some("p-1"), "ds", "t")
        );
        let t = TableRef::parse("p-1:ds.t").unwrap();
        assert_eq!(t.project.as_deref(), Some("p-1"));
        let t = TableRef::parse("ds.t").unwrap();
        assert_eq!(t.project, None);
        for bad in ["t", "a.b.c.d", "p:t", "p.d-x.t", "p..t", ""] {
            assert!(TableRef::parse(bad).is_err(), "{bad}");
        }
    }
}
