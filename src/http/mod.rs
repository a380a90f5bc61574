//! The operations endpoints served with `--http ADDR` (SPEC §6): `/healthz` (liveness),
//! `/readyz` (running, external endpoints reachable and every valve open), `/metrics` (Prometheus text), `/` (status page) and
//! `/api/status` (the JSON the status page polls).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::pipeline::Graph;
use crate::pipeline::valve::{OpenError, Valves};
use crate::telemetry::metrics::{PipelineMetrics, watermark_seconds};

const STATUS_PAGE: &str = include_str!("status.html");

/// What the endpoints report, shared with the running pipeline.
#[derive(Debug)]
pub struct Status {
    pub metrics: Arc<PipelineMetrics>,
    /// `(name, type, inputs)` per node, for the status page's graph.
    pub graph: Vec<(String, String, Vec<String>)>,
    /// True while the pipeline runs and has not been asked to stop.
    pub running: AtomicBool,
    /// The run's valves (and gates).
    pub valves: Arc<Valves>,
    /// Why this replica is not active (another holds the pipeline's lease), while it is not.
    pub standby: crate::state::lease::Standby,
    /// Per entry of `metrics.stages`: the upstream counters whose sum is what was sent to that
    /// stage, for `queued`. `None` for sources and for stages reading a named output of a node
    /// with several (`Partition`), whose records are not counted per output.
    inflows: Vec<Option<Vec<Sent>>>,
}

/// One input's count of records sent: the upstream stage's `records_out` (its main output, when
/// that is its only non-error output) or its `errors` (its error output).
#[derive(Debug, Clone, Copy)]
enum Sent {
    Out(usize),
    Errors(usize),
}

impl Status {
    pub fn new(metrics: Arc<PipelineMetrics>, graph: &Graph) -> Arc<Self> {
        let nodes = graph
            .order
            .iter()
            .map(|&i| {
                let n = &graph.nodes[i];
                let inputs = n
                    .inputs
                    .iter()
                    .map(|e| {
                        let from = &graph.nodes[e.from];
                        let port = &from.ports[e.port];
                        if port.is_empty() {
                            from.name.clone()
                        } else {
                            format!("{}.{port}", from.name)
                        }
                    })
                    .collect();
                (n.name.clone(), n.type_name.clone(), inputs)
            })
            .collect();
        let index = |name: &str| metrics.stages.iter().position(|(n, _)| n == name);
        let inflows = metrics
            .stages
            .iter()
            .map(|(name, _)| {
                let node = graph.nodes.iter().find(|n| &n.name == name)?;
                if node.inputs.is_empty() {
                    return None;
                }
                node.inputs
                    .iter()
                    .map(|e| {
                        let from = &graph.nodes[e.from];
                        let i = index(&from.name)?;
                        if Some(e.port) == from.error_port {
                            Some(Sent::Errors(i))
                        } else if from.ports.len() - usize::from(from.error_port.is_some()) == 1 {
                            Some(Sent::Out(i))
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .collect();
        Arc::new(Status {
            graph: nodes,
            inflows,
            running: AtomicBool::new(false),
            standby: Default::default(),
            valves: metrics.valves.clone(),
            metrics,
        })
    }

    /// Ready: running, not stopping, every external endpoint reachable and every valve open.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(why) = self
            .standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(why);
        }
        if !self.running.load(Relaxed) {
            return Err("not running".into());
        }
        let unreachable = crate::telemetry::health::endpoints().unreachable();
        if !unreachable.is_empty() {
            return Err(format!("unreachable: {}", unreachable.join("; ")));
        }
        let closed = self.valves.closed_checks();
        if closed.is_empty() {
            Ok(())
        } else {
            Err(format!("valves closed: {}", closed.join(", ")))
        }
    }

    /// The JSON the status page renders. `queued` is what a stage's inputs sent it minus what
    /// it took in: records waiting in its inbox or in an upstream send blocked by backpressure
    /// (null for sources and `Partition` consumers). Counters are read one after another, the
    /// stage's own first, so a value can include records sent since (never negative).
    pub fn snapshot(&self) -> Value {
        let now = chrono::Utc::now().timestamp_millis();
        let sent = |s: &Sent| match *s {
            Sent::Out(i) => self.metrics.stages[i].1.rows_out.load(Relaxed),
            Sent::Errors(i) => self.metrics.stages[i].1.errors.load(Relaxed),
        };
        let stages: Vec<Value> = self
            .metrics
            .stages
            .iter()
            .zip(&self.inflows)
            .map(|((name, s), inflow)| {
                let wm = watermark_seconds(s.watermark.load(Relaxed), now);
                let rows_in = s.rows_in.load(Relaxed);
                let queued = inflow
                    .as_ref()
                    .map(|inputs| inputs.iter().map(sent).sum::<u64>().saturating_sub(rows_in));
                json!({
                    "name": name,
                    "records_in": rows_in,
                    "records_out": s.rows_out.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "queued": queued,
                    "dead_letter_rate": s.dead_letter_rate(),
                    "watermark": wm.map(|w| w.0),
                    "watermark_lag_seconds": wm.map(|w| w.1),
                })
            })
            .collect();
        json!({
            "pipeline": self.metrics.pipeline,
            "now_ms": now,
            "ready": self.ready().is_ok(),
            "graph": self.graph.iter().map(|(n, t, i)| json!({"name": n, "type": t, "inputs": i})).collect::<Vec<_>>(),
            "stages": stages,
            "valves": self.valves.snapshot(),
        })
    }
}

pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/status",
            get(|State(s): State<Arc<Status>>| async move { Json(s.snapshot()) }),
        )
        .route("/valves/{name}/open", post(open_valve))
        .with_state(status)
}

async fn readyz(State(s): State<Arc<Status>>) -> Response {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(s): State<Arc<Status>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn open_valve(State(s): State<Arc<Status>>, Path(name): Path<String>) -> Response {
    match s.valves.open(&name) {
        Ok(()) => {
            tracing::info!(valve = %name, "Valve opened over HTTP");
            (StatusCode::OK, format!("valve {name} opened")).into_response()
        }
        Err(e @ OpenError::Unknown(_)) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e @ OpenError::Gate(_)) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}

/// Binds `addr` and serves until the process exits.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(addr: &str, status: Arc<Status>) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(status)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(local)
}
