//! `WriteToBigQuery`: the Storage Write API (default, see [`super::storage_write`]) or streaming
//! inserts (`tabledata.insertAll`) with deterministic `insertId`s.
//!
//! Per batch: the table is made ready once (created per `create_disposition`, emptied per
//! `write_disposition`), then the rows (plus the window columns, see [`schema::rows_to_write`])
//! are written. Storage Write: encoded as proto rows for the table's schema
//! ([`super::proto`]) and appended over `num_streams` write streams. insertAll: sent in requests
//! of at most [`ROWS_PER_REQUEST`], `num_streams` at a time. Both retry with backoff while
//! BigQuery is unavailable. Rows BigQuery (or the encoder) rejects go to the error output with
//! the reason. `write` returns [`Written::Now`] (and the runner releases the batch's
//! acknowledgement holds) only after every row was either stored or routed to the error output.
//!
//! `insertId` is the row's `__sluice_id` when the batch carries one; otherwise a hash of
//! (pipeline name, transform name, row content, occurrence of that content in the batch), so a
//! replay of the same input writes the same ids and real BigQuery deduplicates them (best
//! effort, about a minute; the emulator does not deduplicate at all).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use async_trait::async_trait;
use futures::StreamExt;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
use serde_json::{Map, Value};

use super::client::{self, BqError, MAX_ELAPSED, with_retries_counted};
use super::config::{CreateDisposition, WriteConfig, WriteDisposition, WriteMethod};
use super::proto::RowSchema;
use super::schema::{self, SLUICE_ID};
use super::storage_write::{WriteClient, Writer};
use super::table::{self, Layout, Target};
use crate::pipeline::operator::{
    EngineError, ErrorRoute, Output, Receipts, Sink, StageStats, Written,
};
use crate::pipeline::stats::SinkStats;
use crate::record::Batch;
use crate::record::meta;
use crate::record::rows::{row_json, to_json_rows};

/// BigQuery recommends at most 500 rows per insertAll request (quota: 50,000 rows, 10 MB).
pub const ROWS_PER_REQUEST: usize = 500;

/// Bytes of row JSON per insertAll request: BigQuery takes at most 10 MB per HTTP request;
/// 9 MB leaves room for the insert ids and the envelope. A larger row becomes an error record.
const MAX_REQUEST_BYTES: usize = 9_000_000;

/// Row-level `reason`s that mean "not stored, try again" rather than "bad row".
const RETRYABLE_ROW_REASONS: &[&str] = &["backendError", "internalError", "timeout", "stopped"];

pub struct WriteToBigQuery {
    name: String,
    pipeline: String,
    cfg: WriteConfig,
    errors: ErrorRoute,
    stats: Arc<StageStats>,
    client: Option<Client>,
    target: Option<Target>,
    /// Dispositions are applied once, before the first write.
    prepared: bool,
    /// The Storage Write API path: the table's writer schema and the streams.
    storage: Option<(RowSchema, Writer)>,
}

impl WriteToBigQuery {
    pub fn new(
        name: &str,
        pipeline: &str,
        cfg: WriteConfig,
        errors: ErrorRoute,
        stats: Arc<StageStats>,
    ) -> Self {
        // Created when built, so `/metrics` shows the sink's families from the start.
        stats.sink();
        WriteToBigQuery {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            cfg,
            errors,
            stats,
            client: None,
            target: None,
            prepared: false,
            storage: None,
        }
    }

    fn external(&self, what: &str, e: BqError) -> EngineError {
        let target = self
            .target
            .as_ref()
            .map_or_else(String::new, |t| format!(" {t}"));
        EngineError::external(&self.name, format!("{what}{target}"), e)
    }

    async fn connect(&mut self) -> Result<(Client, Target), EngineError> {
        if let (Some(c), Some(t)) = (&self.client, &self.target) {
            return Ok((c.clone(), t.clone()));
        }
        let t = &self.cfg.table.value;
        let project = match &t.project {
            Some(p) => p.clone(),
            None => client::default_project().map_err(|e| EngineError::config(&self.name, e))?,
        };
        let target = Target {
            project,
            dataset: t.dataset.clone(),
            table: t.table.clone(),
        };
        let c = client::connect()
            .await
            .map_err(|e| EngineError::external(&self.name, "cannot connect to BigQuery", e))?;
        self.client = Some(c.clone());
        self.target = Some(target.clone());
        self.stats
            .outputs
            .lock()
            .expect("not poisoned")
            .push(format!("bigquery:{target}"));
        Ok((c, target))
    }

    /// Creates the table if needed and applies the write disposition; `arrow` is `None` when
    /// the input was empty (then a missing table is not created: there is no schema).
    async fn prepare(
        &mut self,
        arrow: Option<&arrow::datatypes::Schema>,
    ) -> Result<(), EngineError> {
        if self.prepared {
            return Ok(());
        }
        let (c, target) = self.connect().await?;
        let exists = table::get_table(&c, &target)
            .await
            .map_err(|e| self.external("cannot read table", e))?
            .is_some();
        if !exists {
            match (self.cfg.create_disposition, arrow) {
                (CreateDisposition::CreateNever, _) => {
                    return Err(EngineError::config(
                        &self.name,
                        format!(
                            "table {target} does not exist and `create_disposition` is CREATE_NEVER"
                        ),
                    ));
                }
                (CreateDisposition::CreateIfNeeded, Some(schema)) => {
                    let layout = Layout {
                        partition_by: self.cfg.partition_by.clone(),
                        cluster_by: self.cfg.cluster_by.clone(),
                    };
                    let def = table::definition(&target, schema, &layout)
                        .map_err(|e| EngineError::config(&self.name, e))?;
                    table::ensure_table(&c, &target, def)
                        .await
                        .map_err(|e| self.external("cannot create table", e))?;
                    tracing::info!(transform = %self.name, table = %target, "Created BigQuery table");
                }
                (CreateDisposition::CreateIfNeeded, None) => {}
            }
        } else {
            match self.cfg.write_disposition {
                WriteDisposition::Append => {}
                WriteDisposition::Truncate => {
                    let sql = format!("TRUNCATE TABLE {}", target.sql_name());
                    table::run_statement(&c, &target.project, &sql)
                        .await
                        .map_err(|e| self.external("cannot truncate table", e))?;
                }
                WriteDisposition::Empty => {
                    let sql = format!("SELECT 1 FROM {} LIMIT 1", target.sql_name());
                    let n = table::run_statement(&c, &target.project, &sql)
                        .await
                        .map_err(|e| self.external("cannot read table", e))?;
                    if n > 0 {
                        return Err(EngineError::config(
                            &self.name,
                            format!(
                                "table {target} is not empty and `write_disposition` is WRITE_EMPTY"
                            ),
                        ));
                    }
                }
            }
        }
        self.prepared = true;
        Ok(())
    }
}

impl WriteToBigQuery {
    /// Sets up the Storage Write API path once the table exists: its schema becomes the writer
    /// schema, so rows are encoded for the table as it is, not as the input is.
    async fn storage_writer(&mut self) -> Result<(), EngineError> {
        if self.storage.is_some() {
            return Ok(());
        }
        let (c, target) = self.connect().await?;
        let Some(t) = table::get_table(&c, &target)
            .await
            .map_err(|e| self.external("cannot read table", e))?
        else {
            return Err(EngineError::config(
                &self.name,
                format!("table {target} does not exist"),
            ));
        };
        let fields = t.schema.fields.unwrap_or_default();
        let rows =
            RowSchema::from_table(&fields).map_err(|e| EngineError::config(&self.name, e))?;
        let client = WriteClient::connect().map_err(|e| {
            EngineError::external(&self.name, "cannot set up the Storage Write API", e)
        })?;
        let writer = Writer::new(
            client,
            &target,
            rows.descriptor().clone(),
            self.cfg.method == WriteMethod::StorageWrite,
            self.cfg.num_streams,
            self.stats.sink().clone(),
        );
        self.storage = Some((rows, writer));
        Ok(())
    }

    /// Appends `rows` through the Storage Write API; returns the rejected rows (as JSON) with
    /// the reason, once BigQuery confirmed the rest.
    async fn storage_write(
        &mut self,
        rows: &RecordBatch,
    ) -> Result<Vec<(String, String)>, EngineError> {
        self.storage_writer().await?;
        let (schema, writer) = self.storage.as_mut().expect("set by storage_writer");
        let encoded = schema.encode(rows);
        let mut failures = encoded.rejected;
        let refused = writer.write(encoded.rows).await.map_err(|e| {
            let target = self
                .target
                .as_ref()
                .map_or_else(String::new, |t| format!(" {t}"));
            EngineError::external(&self.name, format!("cannot append to{target}"), e)
        })?;
        failures.extend(refused);
        failures.sort_by_key(|(i, _)| *i);
        Ok(failures
            .into_iter()
            .map(|(i, msg)| (row_json(rows, i), msg))
            .collect())
    }

    /// Inserts `rows` with `tabledata.insertAll`; returns the rejected rows (as JSON) with the
    /// reason, once BigQuery answered every request.
    async fn insert_all(
        &mut self,
        batch: &Batch,
        rows: &RecordBatch,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let (c, target) = self.connect().await?;
        let json = to_json_rows(rows);
        let ids = insert_ids(&self.pipeline, &self.name, &batch.rows, &json);
        let texts: Vec<String> = json
            .iter()
            .map(|r| Value::Object(r.clone()).to_string())
            .collect();
        let sizes: Vec<usize> = texts.iter().map(String::len).collect();
        let (plan, too_large) = plan_requests(&sizes);
        let mut rows_by_index: Vec<Option<(String, Map<String, Value>)>> =
            ids.into_iter().zip(json).map(Some).collect();
        let chunks: Vec<Chunk> = plan
            .into_iter()
            .map(|request| {
                request
                    .into_iter()
                    .filter_map(|i| rows_by_index[i].take().map(|(id, row)| (i, id, row)))
                    .collect()
            })
            .collect();
        let sink = self.stats.sink().clone();
        let results: Vec<Result<Vec<(usize, String)>, BqError>> = futures::stream::iter(chunks)
            .map(|chunk| insert_chunk(&c, &target, chunk, &sink))
            .buffer_unordered(self.cfg.num_streams)
            .collect()
            .await;
        let mut failures = too_large;
        for r in results {
            match r {
                Ok(rejected) => failures.extend(rejected),
                Err(e) => return Err(self.external("cannot insert into", e)),
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        Ok(failures
            .into_iter()
            .map(|(i, msg)| (texts[i].clone(), msg))
            .collect())
    }
}

/// Groups rows (by their JSON sizes) into insertAll requests of at most [`ROWS_PER_REQUEST`]
/// rows and [`MAX_REQUEST_BYTES`]; rows larger than that alone are returned with the reason.
fn plan_requests(sizes: &[usize]) -> (Vec<Vec<usize>>, Vec<(usize, String)>) {
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let mut too_large = Vec::new();
    let mut bytes_in_last = 0;
    for (i, &bytes) in sizes.iter().enumerate() {
        if bytes > MAX_REQUEST_BYTES {
            too_large.push((
                i,
                format!("the row is {bytes} bytes as JSON; an insertAll request holds at most {MAX_REQUEST_BYTES}"),
            ));
            continue;
        }
        let full = requests.last().is_none_or(|r| {
            r.len() >= ROWS_PER_REQUEST || bytes_in_last + bytes > MAX_REQUEST_BYTES
        });
        if full {
            requests.push(Vec::new());
            bytes_in_last = 0;
        }
        bytes_in_last += bytes;
        requests.last_mut().expect("pushed above").push(i);
    }
    (requests, too_large)
}

/// The `insertId` of each row: `__sluice_id`/`sluice_id` when present, else a content hash.
pub fn insert_ids(
    pipeline: &str,
    transform: &str,
    rows: &RecordBatch,
    json: &[Map<String, Value>],
) -> Vec<String> {
    let ids = [meta::ROW_ID, SLUICE_ID]
        .iter()
        .find_map(|n| rows.column_by_name(n))
        .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
    let mut seen: HashMap<u128, u32> = HashMap::new();
    json.iter()
        .enumerate()
        .map(|(i, row)| {
            if let Some(ids) = &ids
                && ids.is_valid(i)
            {
                return ids.value(i).to_string();
            }
            let text = Value::Object(row.clone()).to_string();
            let content =
                xxhash_rust::xxh3::xxh3_128(format!("{pipeline}\0{transform}\0{text}").as_bytes());
            let n = seen.entry(content).or_insert(0);
            *n += 1;
            let id = xxhash_rust::xxh3::xxh3_128(format!("{content:032x}\0{n}").as_bytes());
            format!("{id:032x}")
        })
        .collect()
}

/// One request's rows: (index in the batch, insertId, row).
type Chunk = Vec<(usize, String, Map<String, Value>)>;

/// Sends one chunk until every row is stored or rejected; returns the rejected rows' messages.
/// Requests and their retries (whole requests, and rows BigQuery asked to resend) are counted
/// into `stats`.
async fn insert_chunk(
    client: &Client,
    target: &Target,
    mut chunk: Chunk,
    stats: &SinkStats,
) -> Result<Vec<(usize, String)>, BqError> {
    let mut rejected = Vec::new();
    let start = tokio::time::Instant::now();
    loop {
        let request = {
            let mut r = TableDataInsertAllRequest::new();
            // Store the good rows of a request even when some are invalid (without it real
            // BigQuery stops the whole request and the emulator answers 500).
            r.skip_invalid_rows();
            let rows = chunk
                .iter()
                .map(|(_, id, row)| TableDataInsertAllRequestRows {
                    insert_id: Some(id.clone()),
                    json: Value::Object(row.clone()),
                })
                .collect();
            r.add_rows(rows).map_err(BqError::Other)?;
            r
        };
        let resp = with_retries_counted(
            "insertAll",
            MAX_ELAPSED.saturating_sub(start.elapsed()),
            Some(stats),
            || {
                let req = request.clone();
                async move {
                    client
                        .tabledata()
                        .insert_all(&target.project, &target.dataset, &target.table, req)
                        .await
                        .map_err(BqError::from)
                }
            },
        )
        .await?;
        let mut retry: Vec<usize> = Vec::new();
        for e in resp.insert_errors.unwrap_or_default() {
            let Some(pos) = e.index.and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            if pos >= chunk.len() {
                continue;
            }
            let errs = e.errors.unwrap_or_default();
            let retryable = !errs.is_empty()
                && errs.iter().all(|x| {
                    x.reason
                        .as_deref()
                        .is_some_and(|r| RETRYABLE_ROW_REASONS.contains(&r))
                });
            if retryable {
                retry.push(pos);
            } else {
                let msg = errs
                    .iter()
                    .map(|x| {
                        let mut m = format!(
                            "BigQuery rejected the row: {}",
                            x.reason.as_deref().unwrap_or("invalid")
                        );
                        if let Some(l) = x.location.as_deref().filter(|l| !l.is_empty()) {
                            m.push_str(&format!(" at `{l}`"));
                        }
                        if let Some(t) = x.message.as_deref().filter(|t| !t.is_empty()) {
                            m.push_str(&format!(": {t}"));
                        }
                        m
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                rejected.push((chunk[pos].0, msg));
            }
        }
        if retry.is_empty() {
            return Ok(rejected);
        }
        // Rows not stored for a transient reason: a failed attempt for them.
        stats.failed();
        if start.elapsed() >= MAX_ELAPSED {
            return Err(BqError::Job(format!(
                "{} rows were not stored after retrying for {:?}",
                retry.len(),
                MAX_ELAPSED
            )));
        }
        retry.sort_unstable();
        chunk = retry.into_iter().map(|p| chunk[p].clone()).collect();
        stats.retried();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[async_trait]
impl Sink for WriteToBigQuery {
    async fn write(
        &mut self,
        batch: Batch,
        _receipts: &mut Receipts,
        out: &mut Output,
    ) -> Result<Written, EngineError> {
        let rows = schema::rows_to_write(&batch.rows);
        if rows.num_rows() == 0 {
            return Ok(Written::Now);
        }
        self.prepare(Some(rows.schema_ref().as_ref())).await?;
        let failures = match self.cfg.method {
            WriteMethod::InsertAll => self.insert_all(&batch, &rows).await?,
            WriteMethod::StorageWrite | WriteMethod::StorageWriteAtLeastOnce => {
                self.storage_write(&rows).await?
            }
        };
        if !failures.is_empty() {
            tracing::warn!(transform = %self.name, rows = failures.len(), "BigQuery rejected rows");
        }
        self.errors.report(out, &batch, failures);
        // BigQuery answered: the runner releases the batch's holds.
        Ok(Written::Now)
    }

    async fn on_end(&mut self, _receipts: &mut Receipts) -> Result<(), EngineError> {
        if !self.prepared && self.cfg.write_disposition != WriteDisposition::Append {
            self.prepare(None).await?;
        }
        if let Some((_, writer)) = &mut self.storage {
            writer.finish().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn requests_hold_at_most_500_rows_and_9_mb_and_oversized_rows_are_refused() {
        let mut sizes = vec![10; 501];
        sizes.extend([4_000_000, 4_000_000, 2_000_000, 9_000_001, 1]);
        let (plan, refused) = plan_requests(&sizes);
        let lens: Vec<usize> = plan.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![500, 3, 2]);
        assert_eq!(plan[1], vec![500, 501, 502]);
        assert_eq!(plan[2], vec![503, 505]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 504);
    }

    fn batch(ids: Option<Vec<&str>>) -> (RecordBatch, Vec<Map<String, Value>>) {
        let mut fields = vec![Field::new("k", DataType::Utf8, true)];
        let mut cols: Vec<arrow::array::ArrayRef> =
            vec![Arc::new(StringArray::from(vec!["a", "a", "b"]))];
        if let Some(ids) = ids {
            fields.push(Field::new(meta::ROW_ID, DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(ids)));
        }
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let json = to_json_rows(&rows);
        (rows, json)
    }

    #[test]
    fn insert_ids_use_the_row_id_when_present() {
        let (rows, json) = batch(Some(vec!["x", "y", "z"]));
        assert_eq!(insert_ids("p", "t", &rows, &json), vec!["x", "y", "z"]);
    }

    #[test]
    fn content_ids_are_deterministic_and_distinguish_duplicates() {
        let (rows, json) = batch(None);
        let a = insert_ids("p", "t", &rows, &json);
        assert_eq!(a, insert_ids("p", "t", &rows, &json));
        assert_ne!(a[0], a[1], "identical rows get distinct ids by occurrence");
        assert_ne!(a, insert_ids("p", "other", &rows, &json));
        assert_ne!(a, insert_ids("q", "t", &rows, &json));
    }
}
