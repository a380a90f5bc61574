//! The Storage Write API (`AppendRows` over gRPC) for `WriteToBigQuery`.
//!
//! `gcp-bigquery-client` hard-codes Google's endpoint, so this module builds the crate's generated
//! `BigQueryWriteClient` on its own tonic channel: plaintext to `BIGQUERY_STORAGE_EMULATOR_HOST`
//! when that is set, otherwise TLS to `bigquerystorage.googleapis.com` with an Application
//! Default Credentials bearer token on every call.
//!
//! A [`Writer`] owns `num_streams` write streams, each with one long-lived `AppendRows`
//! connection (requests and answers strictly alternate on it). In exactly-once mode each stream
//! is a COMMITTED stream created by the sink and every append carries its offset: an append
//! retried after a lost answer is either applied once or answered ALREADY_EXISTS (it was applied
//! the first time), never written twice. In at-least-once mode the table's `_default` stream is
//! used without offsets.
//!
//! Per append: row errors (`row_errors`) reject those rows and the rest is sent again; an
//! INVALID_ARGUMENT without row errors (the emulator's way of refusing a value) is narrowed down
//! by halving the request until the refused rows are alone; retryable codes are retried with
//! [`Backoff`] for about ten minutes, reconnecting when the connection broke.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::channel::mpsc;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_request::{
    ProtoData, Rows as RequestRows,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_response::Response;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::big_query_write_client::BigQueryWriteClient;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, AppendRowsResponse, CreateWriteStreamRequest, FinalizeWriteStreamRequest,
    ProtoRows, ProtoSchema, WriteStream, write_stream,
};
use prost_types::DescriptorProto;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use super::table::Target;
use crate::pipeline::stats::SinkStats;
use crate::sinks::retry::Backoff;

/// The Storage Read/Write emulator, `host:port` (SPEC §2).
pub const STORAGE_EMULATOR_ENV: &str = "BIGQUERY_STORAGE_EMULATOR_HOST";
const ENDPOINT: &str = "https://bigquerystorage.googleapis.com";
const DOMAIN: &str = "bigquerystorage.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// Rows per request are packed up to this many bytes: BigQuery takes at most 10 MB per
/// `AppendRows` request, and the envelope (stream name, writer schema) needs some room.
pub const REQUEST_BYTES: usize = 9 * 1024 * 1024;
/// Answers larger than tonic's 4 MB default are possible (row errors of a full request).
const MAX_MESSAGE_BYTES: usize = 20 * 1024 * 1024;
/// An append whose answer has not come after this long is treated as lost: the connection is
/// dropped and the append is sent again (with its offset, so it cannot land twice).
const APPEND_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between retries: 200 ms doubling to 30 s, 27 attempts ≈ 10 minutes, the same
/// budget as the REST calls (`client::MAX_ELAPSED`); then the run fails and the input stays
/// unacknowledged.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 27;

/// What went wrong talking to the Storage Write API.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the Storage Write API answered {code:?}: {message}")]
    Status { code: Code, message: String },
    #[error("invalid Storage Write API endpoint `{endpoint}`: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot get credentials for the Storage Write API: {0}")]
    Auth(String),
}

/// gRPC codes worth retrying: the service is unavailable or overloaded, or the call was cut.
/// INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED and UNKNOWN are not.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

#[derive(Clone)]
enum Auth {
    Emulator,
    Token(google_cloud_auth::credentials::AccessTokenCredentials),
}

/// The gRPC client and its credentials.
#[derive(Clone)]
pub struct WriteClient {
    grpc: BigQueryWriteClient<Channel>,
    auth: Auth,
}

/// Percent-encodes a routing-header value (everything but unreserved characters).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl WriteClient {
    /// A lazily connecting client (connection problems surface, retryable, on the first call).
    ///
    /// # Errors
    /// A malformed emulator address, or no Application Default Credentials.
    pub fn connect() -> Result<WriteClient, WriteError> {
        let emulator = std::env::var(STORAGE_EMULATOR_ENV)
            .ok()
            .map(|h| h.trim().trim_end_matches('/').to_string())
            .filter(|h| !h.is_empty());
        let (endpoint, auth) = match emulator {
            Some(host) => {
                let url = if host.contains("://") {
                    host
                } else {
                    format!("http://{host}")
                };
                let ep =
                    Endpoint::from_shared(url.clone()).map_err(|source| WriteError::Endpoint {
                        endpoint: url,
                        source,
                    })?;
                (ep, Auth::Emulator)
            }
            None => {
                // Both ring and aws-lc-rs are linked; rustls needs to be told which to use.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = ClientTlsConfig::new()
                    .domain_name(DOMAIN)
                    .with_enabled_roots();
                let ep = Endpoint::from_static(ENDPOINT)
                    .tls_config(tls)
                    .map_err(|source| WriteError::Endpoint {
                        endpoint: ENDPOINT.into(),
                        source,
                    })?;
                let creds = google_cloud_auth::credentials::Builder::default()
                    .with_scopes([SCOPE])
                    .build_access_token_credentials()
                    .map_err(|e| WriteError::Auth(e.to_string()))?;
                (ep, Auth::Token(creds))
            }
        };
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
        let grpc = BigQueryWriteClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(WriteClient { grpc, auth })
    }

    /// `msg` with the bearer token and the routing header BigQuery expects.
    async fn request<T>(&self, msg: T, key: &str, resource: &str) -> Result<Request<T>, Status> {
        let mut r = Request::new(msg);
        if let Auth::Token(c) = &self.auth {
            let token = c
                .access_token()
                .await
                .map_err(|e| Status::unauthenticated(format!("no access token: {e}")))?;
            let v = format!("Bearer {}", token.token)
                .parse()
                .map_err(|_| Status::unauthenticated("the access token is not ASCII"))?;
            r.metadata_mut().insert("authorization", v);
        }
        if let Ok(v) = format!("{key}={}", urlencode(resource)).parse() {
            r.metadata_mut().insert("x-goog-request-params", v);
        }
        Ok(r)
    }
}

/// Rows ready to append: (row index in the batch, serialized proto row).
pub type Rows = Vec<(usize, Vec<u8>)>;

/// One write stream and its open connection.
#[derive(Default)]
struct StreamState {
    /// The COMMITTED stream's name (exactly-once); `None` until created, and for `_default`.
    name: Option<String>,
    /// The offset of the next append on the stream (exactly-once).
    offset: i64,
    conn: Option<Conn>,
}

struct Conn {
    tx: mpsc::Sender<AppendRowsRequest>,
    rx: tonic::Streaming<AppendRowsResponse>,
    /// An append on this connection succeeded, so the server holds the writer schema. Until
    /// then every request carries it: the emulator forgets a schema whose first request it
    /// refused ("proto_rows sent without prior writer_schema on this connection").
    has_schema: bool,
}

enum Outcome {
    Appended,
    /// Indices (within the request) and messages of the rows BigQuery refused.
    RowErrors(Vec<(usize, String)>),
    /// The request was refused as a whole (INVALID_ARGUMENT without row errors).
    Invalid(String),
}

/// Everything the streams share.
struct Shared<'a> {
    client: &'a WriteClient,
    table: &'a str,
    schema: &'a ProtoSchema,
    exactly_once: bool,
    stats: &'a Arc<SinkStats>,
}

/// Appends rows to one table through `num_streams` write streams.
pub struct Writer {
    client: WriteClient,
    /// `projects/P/datasets/D/tables/T`.
    table: String,
    schema: ProtoSchema,
    exactly_once: bool,
    streams: Vec<StreamState>,
    stats: Arc<SinkStats>,
}

impl Writer {
    pub fn new(
        client: WriteClient,
        target: &Target,
        descriptor: DescriptorProto,
        exactly_once: bool,
        num_streams: usize,
        stats: Arc<SinkStats>,
    ) -> Writer {
        Writer {
            client,
            table: format!(
                "projects/{}/datasets/{}/tables/{}",
                target.project, target.dataset, target.table
            ),
            schema: ProtoSchema {
                proto_descriptor: Some(descriptor),
            },
            exactly_once,
            streams: (0..num_streams.max(1))
                .map(|_| StreamState::default())
                .collect(),
            stats,
        }
    }

    /// Appends `rows`, spread over the streams (each stream's requests in order, the streams
    /// concurrently), and returns once BigQuery confirmed every append. Returns the rows it
    /// refused, with its reason.
    ///
    /// # Errors
    /// A non-retryable error, or retryable ones for longer than the retry budget.
    pub async fn write(&mut self, rows: Rows) -> Result<Vec<(usize, String)>, WriteError> {
        let k = self.streams.len();
        let mut per_stream: Vec<Vec<Rows>> = (0..k).map(|_| Vec::new()).collect();
        for (i, chunk) in split(rows, k).into_iter().enumerate() {
            per_stream[i % k].push(chunk);
        }
        let shared = Shared {
            client: &self.client,
            table: &self.table,
            schema: &self.schema,
            exactly_once: self.exactly_once,
            stats: &self.stats,
        };
        let results = futures::future::join_all(
            self.streams
                .iter_mut()
                .zip(per_stream)
                .map(|(st, chunks)| shared.write_chunks(st, chunks)),
        )
        .await;
        let mut rejected = Vec::new();
        for r in results {
            rejected.extend(r?);
        }
        rejected.sort_by_key(|(i, _)| *i);
        Ok(rejected)
    }

    /// Closes the connections and finalizes the COMMITTED streams (their rows are already
    /// visible; finalizing only stops further appends). Failures are logged: nothing is lost.
    pub async fn finish(&mut self) {
        for st in &mut self.streams {
            st.conn = None;
            let Some(name) = st.name.take() else {
                continue;
            };
            let req = FinalizeWriteStreamRequest { name: name.clone() };
            let result = match self.client.request(req, "name", &name).await {
                Ok(r) => self
                    .client
                    .grpc
                    .clone()
                    .finalize_write_stream(r)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(stream = %name, error = %e, "Cannot finalize BigQuery write stream");
            }
        }
    }
}

/// Packs rows into requests of at most [`REQUEST_BYTES`], and into at least `streams` requests
/// when there are enough rows, so every stream gets a share of a large batch.
fn split(rows: Rows, streams: usize) -> Vec<Rows> {
    let total: usize = rows.iter().map(|(_, r)| r.len()).sum();
    let limit = REQUEST_BYTES.min(total.div_ceil(streams.max(1)).max(1));
    let mut out: Vec<Rows> = Vec::new();
    let mut size = 0;
    for row in rows {
        if out.is_empty() || (size + row.1.len() > limit && size > 0) {
            out.push(Vec::new());
            size = 0;
        }
        size += row.1.len();
        out.last_mut().expect("pushed above").push(row);
    }
    out
}

impl Shared<'_> {
    async fn write_chunks(
        &self,
        st: &mut StreamState,
        chunks: Vec<Rows>,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let mut rejected = Vec::new();
        for chunk in chunks {
            rejected.extend(self.append_all(st, chunk).await?);
        }
        Ok(rejected)
    }

    /// Appends `rows`, setting aside those BigQuery refuses.
    async fn append_all(
        &self,
        st: &mut StreamState,
        rows: Rows,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let mut rejected = Vec::new();
        let mut work: VecDeque<Rows> = VecDeque::from([rows]);
        while let Some(part) = work.pop_front() {
            if part.is_empty() {
                continue;
            }
            match self.append(st, &part).await? {
                Outcome::Appended => {}
                Outcome::RowErrors(errors) => {
                    let mut bad: HashMap<usize, String> = errors.into_iter().collect();
                    let before = bad.len();
                    let mut rest = Vec::with_capacity(part.len());
                    for (k, row) in part.into_iter().enumerate() {
                        match bad.remove(&k) {
                            Some(m) => {
                                rejected.push((row.0, format!("BigQuery rejected the row: {m}")));
                            }
                            None => rest.push(row),
                        }
                    }
                    if bad.len() == before {
                        // No error named a row of the request: refuse nothing, fail loudly.
                        return Err(WriteError::Status {
                            code: Code::InvalidArgument,
                            message: "row errors for rows outside the request".into(),
                        });
                    }
                    work.push_front(rest);
                }
                Outcome::Invalid(msg) if part.len() == 1 => {
                    rejected.push((part[0].0, format!("BigQuery rejected the row: {msg}")));
                }
                Outcome::Invalid(_) => {
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    work.push_front(second);
                    work.push_front(first);
                }
            }
        }
        Ok(rejected)
    }

    /// One append, retried until BigQuery answered it with a result or a data error.
    async fn append(&self, st: &mut StreamState, part: &Rows) -> Result<Outcome, WriteError> {
        let mut backoff = Backoff::with_schedule(FIRST_BACKOFF, MAX_BACKOFF, MAX_ATTEMPTS)
            .counting(self.stats.clone());
        let n = part.len() as i64;
        loop {
            if self.exactly_once && st.name.is_none() {
                match self.create_stream().await {
                    Ok(name) => {
                        *st = StreamState {
                            name: Some(name),
                            offset: 0,
                            conn: None,
                        };
                    }
                    Err(s) => {
                        retry_or_fail(&mut backoff, s.code(), s.message(), false).await?;
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let result = self.send(st, part).await;
            self.stats.observe_write(started);
            let (code, message) = match result {
                Ok(resp) => match resp.response {
                    Some(Response::AppendResult(_)) => {
                        st.offset += n;
                        if let Some(c) = st.conn.as_mut() {
                            c.has_schema = true;
                        }
                        return Ok(Outcome::Appended);
                    }
                    Some(Response::Error(s)) => {
                        let code = Code::from(s.code);
                        if code == Code::AlreadyExists && self.exactly_once {
                            // An earlier attempt of this append was applied; its answer was lost.
                            st.offset += n;
                            return Ok(Outcome::Appended);
                        }
                        if !resp.row_errors.is_empty() {
                            return Ok(Outcome::RowErrors(
                                resp.row_errors
                                    .into_iter()
                                    .filter_map(|e| {
                                        usize::try_from(e.index).ok().map(|i| (i, e.message))
                                    })
                                    .collect(),
                            ));
                        }
                        if code == Code::InvalidArgument {
                            return Ok(Outcome::Invalid(s.message));
                        }
                        (code, s.message)
                    }
                    None => (
                        Code::Internal,
                        "an AppendRows answer without a result".into(),
                    ),
                },
                Err(s) => {
                    st.conn = None;
                    (s.code(), s.message().to_string())
                }
            };
            // A COMMITTED stream that is gone, finalized or out of step is replaced by a new one.
            let stream_lost = self.exactly_once
                && matches!(
                    code,
                    Code::NotFound | Code::FailedPrecondition | Code::OutOfRange
                );
            if stream_lost {
                tracing::warn!(table = %self.table, code = ?code, %message, "Replacing BigQuery write stream");
                *st = StreamState::default();
            }
            retry_or_fail(&mut backoff, code, &message, stream_lost).await?;
        }
    }

    async fn create_stream(&self) -> Result<String, Status> {
        let req = CreateWriteStreamRequest {
            parent: self.table.to_string(),
            write_stream: Some(WriteStream {
                r#type: write_stream::Type::Committed as i32,
                ..Default::default()
            }),
        };
        let req = self.client.request(req, "parent", self.table).await?;
        let mut grpc = self.client.grpc.clone();
        let ws = tokio::time::timeout(APPEND_TIMEOUT, grpc.create_write_stream(req))
            .await
            .map_err(|_| Status::deadline_exceeded("CreateWriteStream did not answer"))??
            .into_inner();
        Ok(ws.name)
    }

    /// Sends one append on the stream's connection (opening it, with the writer schema, when
    /// needed) and waits for its answer. A broken connection is dropped.
    async fn send(&self, st: &mut StreamState, part: &Rows) -> Result<AppendRowsResponse, Status> {
        let stream = st
            .name
            .clone()
            .unwrap_or_else(|| format!("{}/streams/_default", self.table));
        let new_conn = st.conn.is_none();
        let with_schema = st.conn.as_ref().is_none_or(|c| !c.has_schema);
        let req = AppendRowsRequest {
            write_stream: stream.clone(),
            offset: self.exactly_once.then_some(st.offset),
            trace_id: "sluice".into(),
            rows: Some(RequestRows::ProtoRows(ProtoData {
                // Requests carry the schema until the connection accepted an append.
                writer_schema: with_schema.then(|| self.schema.clone()),
                rows: Some(ProtoRows {
                    serialized_rows: part.iter().map(|(_, r)| r.clone()).collect(),
                }),
            })),
            ..Default::default()
        };
        if new_conn {
            let (mut tx, rx) = mpsc::channel(1);
            tx.send(req)
                .await
                .map_err(|_| Status::unavailable("the request channel closed"))?;
            let request = self.client.request(rx, "write_stream", &stream).await?;
            let mut grpc = self.client.grpc.clone();
            let resp = tokio::time::timeout(APPEND_TIMEOUT, grpc.append_rows(request))
                .await
                .map_err(|_| Status::deadline_exceeded("AppendRows did not open"))??;
            st.conn = Some(Conn {
                tx,
                rx: resp.into_inner(),
                has_schema: false,
            });
        } else if let Some(c) = st.conn.as_mut()
            && c.tx.send(req).await.is_err()
        {
            st.conn = None;
            return Err(Status::unavailable("the AppendRows connection closed"));
        }
        let conn = st.conn.as_mut().expect("opened above");
        let answer = tokio::time::timeout(APPEND_TIMEOUT, conn.rx.message()).await;
        match answer {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => {
                st.conn = None;
                Err(Status::unavailable("the AppendRows connection ended"))
            }
            Ok(Err(s)) => {
                st.conn = None;
                Err(s)
            }
            Err(_) => {
                st.conn = None;
                Err(Status::deadline_exceeded(format!(
                    "no AppendRows answer within {APPEND_TIMEOUT:?}"
                )))
            }
        }
    }
}

/// Waits before the next attempt, or returns the error when it is permanent or the budget is
/// spent. `force` retries codes that are otherwise permanent (a replaced stream).
async fn retry_or_fail(
    backoff: &mut Backoff,
    code: Code,
    message: &str,
    force: bool,
) -> Result<(), WriteError> {
    let error = || WriteError::Status {
        code,
        message: message.to_string(),
    };
    if !(force || is_retryable(code)) {
        backoff.fail_permanently();
        return Err(error());
    }
    match backoff.next_delay() {
        Some(d) => {
            tracing::warn!(code = ?code, %message, retry_in_ms = d.as_millis() as u64, "Retrying BigQuery append");
            tokio::time::sleep(d).await;
            Ok(())
        }
        None => Err(error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(sizes: &[usize]) -> Rows {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i, vec![0u8; n]))
            .collect()
    }

    fn shape(chunks: &[Rows]) -> Vec<Vec<usize>> {
        chunks
            .iter()
            .map(|c| c.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn requests_are_split_by_size_and_across_streams() {
        assert_eq!(
            shape(&split(rows(&[10, 10, 10, 10]), 1)),
            vec![vec![0, 1, 2, 3]]
        );
        assert_eq!(
            shape(&split(rows(&[10, 10, 10, 10]), 2)),
            vec![vec![0, 1], vec![2, 3]]
        );
        let big = REQUEST_BYTES / 2 + 1;
        assert_eq!(
            shape(&split(rows(&[big, big, 5]), 1)),
            vec![vec![0], vec![1, 2]]
        );
        assert!(split(Vec::new(), 3).is_empty());
    }

    #[test]
    fn retryable_codes() {
        for c in [Code::Unavailable, Code::Internal, Code::ResourceExhausted] {
            assert!(is_retryable(c), "{c:?}");
        }
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unknown,
        ] {
            assert!(!is_retryable(c), "{c:?}");
        }
    }

    #[test]
    fn routing_header_values_are_percent_encoded() {
        assert_eq!(
            urlencode("projects/p-1/datasets/d/tables/t"),
            "projects%2Fp-1%2Fdatasets%2Fd%2Ftables%2Ft"
        );
    }
}
