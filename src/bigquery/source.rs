//! `ReadFromBigQuery`: a bounded read of a table (`fields`, `row_restriction`) or a query,
//! through `jobs.query` and `jobs.getQueryResults` paging, decoded into typed Arrow batches.
//!
//! A table read is the query `SELECT fields FROM table WHERE row_restriction`, always in
//! standard SQL (`useLegacySql: false`). Cells are converted from BigQuery's `f`/`v` JSON to
//! plain JSON rows (INT64 and FLOAT64 from their string form, TIMESTAMP from int64 µs — the
//! emulator — or float seconds — BigQuery — to µs) and decoded with the schema BigQuery
//! reported (see [`super::schema`]). A row that does not decode goes to the error output. The
//! source ends with watermark +∞. With `high_water_mark` the read is a feeder instead (see
//! [`super::feeder`]), built from the same [`Pager`] and [`RowDecoder`].

use gcp_bigquery_client::Client;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_row::TableRow;
use gcp_bigquery_client::model::table_schema::TableSchema;
use serde_json::{Map, Value};

use async_trait::async_trait;

use super::client::{self, BqError, MAX_ELAPSED, with_retries};
use super::config::{ReadConfig, ReadSource};
use super::schema;
use crate::pipeline::operator::{END_OF_TIME, EngineError, ErrorRoute, Output, Source, SourceSink};
use crate::record::Batch;
use crate::record::json::JsonDecoder;

/// How long one `jobs.query`/`getQueryResults` call waits for the job before answering
/// `jobComplete: false` (BigQuery's default is 10 s; polling continues after it).
const POLL_TIMEOUT_MS: i32 = 10_000;

pub struct ReadFromBigQuery {
    pub(super) name: String,
    pub(super) cfg: ReadConfig,
    batch_size: usize,
    pub(super) errors: ErrorRoute,
    pub(super) ports: usize,
}

impl ReadFromBigQuery {
    pub fn new(
        name: &str,
        cfg: ReadConfig,
        batch_size: usize,
        errors: ErrorRoute,
        ports: usize,
    ) -> Self {
        ReadFromBigQuery {
            name: name.to_string(),
            cfg,
            batch_size,
            errors,
            ports,
        }
    }

    /// The SQL this read runs, and the project that runs it.
    fn sql(&self) -> Result<(String, String), String> {
        match &self.cfg.source {
            ReadSource::Query(q) => Ok((q.clone(), client::default_project()?)),
            ReadSource::Table(t) => {
                let project = match &t.project {
                    Some(p) => p.clone(),
                    None => client::default_project()?,
                };
                Ok((
                    table_sql(
                        &project,
                        t,
                        &self.cfg.fields,
                        self.cfg.row_restriction.as_deref(),
                    ),
                    project,
                ))
            }
        }
    }
}

/// `SELECT fields FROM table [WHERE restriction]`.
pub fn table_sql(
    project: &str,
    t: &super::config::TableRef,
    fields: &[String],
    restriction: Option<&str>,
) -> String {
    let cols = if fields.is_empty() {
        "*".to_string()
    } else {
        fields
            .iter()
            .map(|f| format!("`{}`", f.replace('`', "")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sql = format!("SELECT {cols} FROM `{project}.{}.{}`", t.dataset, t.table);
    if let Some(r) = restriction.filter(|r| !r.trim().is_empty()) {
        sql.push_str(&format!(" WHERE {r}"));
    }
    sql
}

/// One page of a query's result.
struct Page {
    complete: bool,
    schema: Option<TableSchema>,
    rows: Vec<TableRow>,
    page_token: Option<String>,
    job_id: Option<String>,
    location: Option<String>,
    total_rows: Option<u64>,
}

fn job_error(
    errors: Option<Vec<gcp_bigquery_client::model::error_proto::ErrorProto>>,
) -> Option<BqError> {
    let errors = errors.filter(|e| !e.is_empty())?;
    let msgs: Vec<String> = errors
        .iter()
        .map(|e| e.message.clone().unwrap_or_default())
        .collect();
    Some(BqError::Job(msgs.join("; ")))
}

async fn first_page(client: &Client, project: &str, sql: &str, page: i32) -> Result<Page, BqError> {
    let resp = with_retries("jobs.query", MAX_ELAPSED, || async {
        let mut req = QueryRequest::new(sql);
        req.use_legacy_sql = false;
        req.max_results = Some(page);
        req.timeout_ms = Some(POLL_TIMEOUT_MS);
        client
            .job()
            .query(project, req)
            .await
            .map_err(BqError::from)
    })
    .await?;
    if let Some(e) = job_error(resp.errors) {
        return Err(e);
    }
    let job = resp.job_reference.unwrap_or_default();
    Ok(Page {
        complete: resp.job_complete.unwrap_or(true),
        schema: resp.schema,
        rows: resp.rows.unwrap_or_default(),
        page_token: resp.page_token,
        job_id: job.job_id,
        location: job.location,
        total_rows: resp.total_rows.and_then(|t| t.parse().ok()),
    })
}

async fn next_page(
    client: &Client,
    project: &str,
    job_id: &str,
    location: Option<&str>,
    token: Option<&str>,
    page: i32,
) -> Result<Page, BqError> {
    let resp = with_retries("jobs.getQueryResults", MAX_ELAPSED, || async {
        let params = GetQueryResultsParameters {
            location: location.map(str::to_string),
            max_results: Some(page),
            page_token: token.map(str::to_string),
            timeout_ms: Some(POLL_TIMEOUT_MS),
            ..Default::default()
        };
        client
            .job()
            .get_query_results(project, job_id, params)
            .await
            .map_err(BqError::from)
    })
    .await?;
    if let Some(e) = job_error(resp.errors) {
        return Err(e);
    }
    Ok(Page {
        complete: resp.job_complete.unwrap_or(true),
        schema: resp.schema,
        rows: resp.rows.unwrap_or_default(),
        page_token: resp.page_token,
        job_id: Some(job_id.to_string()),
        location: location.map(str::to_string),
        total_rows: resp.total_rows.and_then(|t| t.parse().ok()),
    })
}

/// Where a [`Pager`] is.
enum PagerState {
    Ready(Page),
    Follow {
        job_id: String,
        location: Option<String>,
        token: Option<String>,
    },
    Done,
}

/// The complete pages of one query, in order: `jobs.query`, then `jobs.getQueryResults` while
/// the job runs or a `pageToken` follows.
pub struct Pager<'a> {
    client: &'a Client,
    project: String,
    page_size: i32,
    state: PagerState,
    fields: Option<Vec<TableFieldSchema>>,
    /// The result's row count, once BigQuery reported it.
    pub total_rows: Option<u64>,
}

/// A page of rows; `last` when no page follows.
pub struct PageRows {
    pub rows: Vec<TableRow>,
    pub last: bool,
}

impl<'a> Pager<'a> {
    /// Starts `sql` in `project`.
    ///
    /// # Errors
    /// BigQuery refused the query, or did not answer within the retry budget.
    pub async fn start(
        client: &'a Client,
        project: &str,
        sql: &str,
        page_size: i32,
    ) -> Result<Pager<'a>, BqError> {
        let page = first_page(client, project, sql, page_size).await?;
        Ok(Pager {
            client,
            project: project.to_string(),
            page_size,
            state: PagerState::Ready(page),
            fields: None,
            total_rows: None,
        })
    }

    /// The result's columns (known from the first complete page on).
    pub fn fields(&self) -> &[TableFieldSchema] {
        self.fields.as_deref().unwrap_or_default()
    }

    /// The next complete page, `None` after the last.
    ///
    /// # Errors
    /// As [`Pager::start`].
    pub async fn next(&mut self) -> Result<Option<PageRows>, BqError> {
        loop {
            let page = match std::mem::replace(&mut self.state, PagerState::Done) {
                PagerState::Done => return Ok(None),
                PagerState::Ready(p) => p,
                PagerState::Follow {
                    job_id,
                    location,
                    token,
                } => {
                    next_page(
                        self.client,
                        &self.project,
                        &job_id,
                        location.as_deref(),
                        token.as_deref(),
                        self.page_size,
                    )
                    .await?
                }
            };
            self.state = match (page.complete, page.page_token.clone(), page.job_id.clone()) {
                (_, _, None) | (true, None, _) => PagerState::Done,
                (true, Some(t), Some(job_id)) => PagerState::Follow {
                    job_id,
                    location: page.location.clone(),
                    token: Some(t),
                },
                (false, _, Some(job_id)) => PagerState::Follow {
                    job_id,
                    location: page.location.clone(),
                    token: None,
                },
            };
            if !page.complete {
                continue;
            }
            if self.fields.is_none()
                && let Some(s) = page.schema
            {
                self.fields = Some(s.fields.unwrap_or_default());
            }
            if page.total_rows.is_some() {
                self.total_rows = page.total_rows;
            }
            return Ok(Some(PageRows {
                rows: page.rows,
                last: matches!(self.state, PagerState::Done),
            }));
        }
    }
}

/// BigQuery rows → typed Arrow batches, through plain JSON rows ([`row_to_json`]).
pub struct RowDecoder {
    fields: Vec<TableFieldSchema>,
    json: JsonDecoder,
}

/// A decoded page: the rows as JSON lines (one per input row), the batch of the good ones,
/// which lines were good, and the bad ones as `(payload, reason)`.
pub struct Decoded {
    pub lines: Vec<Vec<u8>>,
    /// The mark column's values, when asked for.
    pub marks: Vec<Value>,
    pub rows: Option<arrow::array::RecordBatch>,
    pub good: Vec<bool>,
    pub failures: Vec<(String, String)>,
}

impl RowDecoder {
    /// # Errors
    /// An Arrow type the JSON decoder cannot produce (a bug).
    pub fn new(fields: &[TableFieldSchema]) -> Result<Self, String> {
        let s = TableSchema::new(fields.to_vec());
        let json = JsonDecoder::new(schema::to_arrow(&s)).map_err(|e| e.to_string())?;
        Ok(RowDecoder {
            fields: fields.to_vec(),
            json,
        })
    }

    pub fn fields(&self) -> &[TableFieldSchema] {
        &self.fields
    }

    /// Decodes `rows`; with `mark`, also returns that column's values (as [`row_to_json`] gives
    /// them) in row order.
    pub fn decode(&mut self, rows: &[TableRow], mark: Option<&str>) -> Decoded {
        let mut marks = Vec::new();
        let lines: Vec<Vec<u8>> = rows
            .iter()
            .map(|row| {
                let obj = row_to_json(&self.fields, row);
                if let Some(m) = mark {
                    marks.push(obj.get(m).cloned().unwrap_or(Value::Null));
                }
                Value::Object(obj).to_string().into_bytes()
            })
            .collect();
        let mut chunk = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in &lines {
            chunk.extend_from_slice(l);
            chunk.push(b'\n');
        }
        let (batch, bad) = self.json.decode_lines(&chunk);
        let mut good = vec![true; lines.len()];
        // One line per row: a bad record's line index is its row's.
        for b in &bad {
            if let Some(g) = good.get_mut(b.line) {
                *g = false;
            }
        }
        let failures = bad
            .into_iter()
            .map(|b| {
                (
                    String::from_utf8_lossy(&b.payload).into_owned(),
                    format!("cannot convert BigQuery row: {}", b.error),
                )
            })
            .collect();
        Decoded {
            lines,
            marks,
            rows: batch,
            good,
            failures,
        }
    }
}

#[async_trait]
impl Source for ReadFromBigQuery {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        if let Some(hwm) = self.cfg.high_water_mark.clone() {
            return super::feeder::run(self, &hwm, sink).await;
        }
        let (sql, project) = self.sql().map_err(|e| EngineError::config(&self.name, e))?;
        let c = client::connect()
            .await
            .map_err(|e| EngineError::external(&self.name, "cannot connect to BigQuery", e))?;
        let fail = |e: BqError| self.query_failed(e, &sql);
        let mut pager = Pager::start(&c, &project, &sql, self.page_size())
            .await
            .map_err(fail)?;
        let mut decoder: Option<RowDecoder> = None;
        let mut out = Output::new(self.ports);
        while let Some(page) = pager.next().await.map_err(fail)? {
            if sink.stopping() {
                return Ok(());
            }
            if page.rows.is_empty() {
                continue;
            }
            let d = match &mut decoder {
                Some(d) => d,
                None => decoder.insert(
                    RowDecoder::new(pager.fields())
                        .map_err(|e| EngineError::internal(&self.name, e))?,
                ),
            };
            let decoded = d.decode(&page.rows, None);
            self.errors.report(
                &mut out,
                &Batch::new(arrow::array::RecordBatch::new_empty(ErrorRoute::schema())),
                decoded.failures,
            );
            if let Some(rows) = decoded.rows {
                out.main(Batch::new(rows));
            }
            crate::io::files::forward(&mut out, sink).await?;
        }
        sink.watermark(END_OF_TIME).await
    }
}

impl ReadFromBigQuery {
    pub(super) fn page_size(&self) -> i32 {
        i32::try_from(self.batch_size).unwrap_or(i32::MAX).max(1)
    }

    /// The run's error for a failed query.
    pub(super) fn query_failed(&self, e: BqError, sql: &str) -> EngineError {
        match e {
            BqError::Job(m) => {
                EngineError::config(&self.name, format!("query failed: {m} (query: {sql})"))
            }
            e => EngineError::external(&self.name, format!("query failed (query: {sql})"), e),
        }
    }
}

/// A BigQuery `{"f": [{"v": ...}]}` row as a plain JSON object in the Arrow types' terms.
pub fn row_to_json(fields: &[TableFieldSchema], row: &TableRow) -> Map<String, Value> {
    let cells = row.columns.as_deref().unwrap_or_default();
    fields
        .iter()
        .zip(
            cells
                .iter()
                .map(|c| c.value.clone().unwrap_or(Value::Null))
                .chain(std::iter::repeat(Value::Null)),
        )
        .map(|(f, v)| (f.name.clone(), field_value(f, v)))
        .collect()
}

fn field_value(f: &TableFieldSchema, v: Value) -> Value {
    if f.mode.as_deref() == Some("REPEATED") {
        return match v {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| {
                        let inner = match item {
                            Value::Object(mut m) => m.remove("v").unwrap_or(Value::Null),
                            other => other,
                        };
                        scalar_value(f, inner)
                    })
                    .collect(),
            ),
            Value::Null => Value::Null,
            other => other,
        };
    }
    scalar_value(f, v)
}

fn scalar_value(f: &TableFieldSchema, v: Value) -> Value {
    match v {
        Value::String(s) => match f.r#type {
            FieldType::Integer | FieldType::Int64 => {
                s.parse::<i64>().map_or(Value::String(s), Value::from)
            }
            FieldType::Float | FieldType::Float64 => match s.parse::<f64>() {
                Ok(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
                Err(_) => Value::String(s),
            },
            FieldType::Boolean | FieldType::Bool => match s.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(s),
            },
            FieldType::Timestamp => match timestamp_micros(&s) {
                Some(us) => Value::from(us),
                None => Value::String(s),
            },
            _ => Value::String(s),
        },
        Value::Object(mut m) if matches!(f.r#type, FieldType::Record | FieldType::Struct) => {
            let cells: Vec<Value> = match m.remove("f") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            let sub = f.fields.as_deref().unwrap_or_default();
            let obj: Map<String, Value> = sub
                .iter()
                .zip(cells.into_iter().chain(std::iter::repeat(Value::Null)))
                .map(|(sf, cell)| {
                    let inner = match cell {
                        Value::Object(mut c) => c.remove("v").unwrap_or(Value::Null),
                        other => other,
                    };
                    (sf.name.clone(), field_value(sf, inner))
                })
                .collect();
            Value::Object(obj)
        }
        other => other,
    }
}

/// TIMESTAMP cells: int64 microseconds (the emulator, or `useInt64Timestamp`) or float seconds
/// in exponent notation (BigQuery's default, e.g. `1.767323045E9`).
pub fn timestamp_micros(s: &str) -> Option<i64> {
    if let Ok(us) = s.parse::<i64>() {
        return Some(us);
    }
    let secs: f64 = s.parse().ok()?;
    Some((secs * 1e6).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bigquery::config::TableRef;

    #[test]
    fn table_reads_become_standard_sql() {
        let t = TableRef::parse("ds.t").unwrap();
        assert_eq!(table_sql("p", &t, &[], None), "SELECT * FROM `p.ds.t`");
        assert_eq!(
            table_sql("p", &t, &["a".into(), "b".into()], Some("a > 1")),
            "SELECT `a`, `b` FROM `p.ds.t` WHERE a > 1"
        );
    }

    #[test]
    fn timestamps_in_both_forms() {
        assert_eq!(
            timestamp_micros("1767323045000000"),
            Some(1_767_323_045_000_000)
        );
        assert_eq!(
            timestamp_micros("1.767323045E9"),
            Some(1_767_323_045_000_000)
        );
        assert_eq!(timestamp_micros("x"), None);
    }

    #[test]
    fn cells_become_typed_json() {
        let mut rec = TableFieldSchema::new("r", FieldType::Record);
        rec.fields = Some(vec![TableFieldSchema::new("x", FieldType::Int64)]);
        let mut rep = TableFieldSchema::new("l", FieldType::Int64);
        rep.mode = Some("REPEATED".into());
        let fields = vec![
            TableFieldSchema::new("i", FieldType::Int64),
            TableFieldSchema::new("f", FieldType::Float64),
            TableFieldSchema::new("b", FieldType::Bool),
            rec,
            rep,
        ];
        let row: TableRow = serde_json::from_value(serde_json::json!({"f": [
            {"v": "7"}, {"v": "1.5"}, {"v": "true"}, {"v": {"f": [{"v": "3"}]}},
            {"v": [{"v": "1"}, {"v": "2"}]}
        ]}))
        .unwrap();
        assert_eq!(
            Value::Object(row_to_json(&fields, &row)),
            serde_json::json!({"i": 7, "f": 1.5, "b": true, "r": {"x": 3}, "l": [1, 2]})
        );
    }
}
