//! Logging: human-readable by default; with `SLUICE_LOG_FORMAT=json`, one JSON object per line in
//! Cloud Logging's structured format (`severity`, `message`, `time`,
//! `logging.googleapis.com/labels`), which GKE's logging agent parses into structured entries.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Cloud Logging's name for a tracing level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Formats events as Cloud Logging structured JSON.
pub struct CloudLoggingJson {
    labels: Map<String, Value>,
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

impl CloudLoggingJson {
    /// The entry for one event (exposed for tests).
    pub fn entry(
        &self,
        level: &Level,
        target: &str,
        mut fields: Map<String, Value>,
        spans: Vec<String>,
    ) -> Value {
        let message = fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        let mut entry = Map::new();
        entry.insert("severity".into(), Value::from(severity(level)));
        entry.insert("message".into(), message);
        entry.insert(
            "time".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        entry.insert("target".into(), Value::from(target));
        if !self.labels.is_empty() {
            entry.insert(
                "logging.googleapis.com/labels".into(),
                Value::Object(self.labels.clone()),
            );
        }
        if !spans.is_empty() {
            entry.insert("spans".into(), Value::from(spans));
        }
        for (k, v) in fields {
            entry.entry(k).or_insert(v);
        }
        Value::Object(entry)
    }
}

impl<S, N> FormatEvent<S, N> for CloudLoggingJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let spans = ctx
            .event_scope()
            .map(|scope| scope.from_root().map(|s| s.name().to_string()).collect())
            .unwrap_or_default();
        if let Some((trace, span)) = current_trace(ctx) {
            let project = std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_default();
            fields.0.insert(
                "logging.googleapis.com/trace".into(),
                Value::from(if project.is_empty() {
                    trace
                } else {
                    format!("projects/{project}/traces/{trace}")
                }),
            );
            fields
                .0
                .insert("logging.googleapis.com/spanId".into(), Value::from(span));
        }
        let entry = self.entry(
            event.metadata().level(),
            event.metadata().target(),
            fields.0,
            spans,
        );
        writeln!(writer, "{entry}")
    }
}

/// The OpenTelemetry trace and span id (hex) of the span an event is in, when traces are
/// exported (`telemetry::otel`), so Cloud Logging links the log line to its trace.
fn current_trace<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    use opentelemetry::trace::TraceContextExt as _;
    if !super::otel::enabled() {
        return None;
    }
    let id = ctx.lookup_current()?.id();
    let cx = tracing::dispatcher::get_default(|d| tracing_opentelemetry::get_otel_context(&id, d))?;
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Whether logs are Cloud Logging JSON (`SLUICE_LOG_FORMAT=json`): then everything `sluice run`
/// writes to stderr is one JSON object per line, the run summary included.
pub fn json_format() -> bool {
    std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json")
}

fn labels() -> Map<String, Value> {
    let mut labels = Map::new();
    if let Ok(pod) = std::env::var("HOSTNAME") {
        labels.insert("pod".into(), Value::from(pod));
    }
    labels
}

/// Writes one structured entry to stderr, in the format of the JSON logs, for reports whose
/// fields are nested (the run summary's per-transform table), which `tracing` fields cannot
/// carry. Call only when [`json_format`] holds.
pub fn write_entry(level: &Level, message: &str, mut fields: Map<String, Value>) {
    use std::io::Write as _;
    fields.insert("message".into(), Value::from(message));
    let entry = CloudLoggingJson { labels: labels() }.entry(level, "sluice", fields, Vec::new());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{entry}");
}

/// A warning where the subscriber is not (yet or any more) installed: a JSON entry with
/// `SLUICE_LOG_FORMAT=json`, else a `sluice: …` line.
pub fn warn_outside_logging(message: &str) {
    if json_format() {
        write_entry(&Level::WARN, message, Map::new());
    } else {
        eprintln!("sluice: {message}");
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `warn,sluice=info`); with
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, spans are exported as OTLP traces too (`telemetry::otel`).
pub fn init() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sluice=info"));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json_format() {
        fmt.event_format(CloudLoggingJson { labels: labels() })
            .boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(super::otel::tracing_layer())
        .with(filter)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_use_cloud_logging_field_names() {
        let f = CloudLoggingJson {
            labels: Map::from_iter([("pod".to_string(), Value::from("sluice-0"))]),
        };
        let mut fields = Map::new();
        fields.insert("message".into(), Value::from("Stop requested"));
        fields.insert("transform".into(), Value::from("Read"));
        let e = f.entry(&Level::WARN, "sluice::cli", fields, vec![]);
        assert_eq!(e["severity"], "WARNING");
        assert_eq!(e["message"], "Stop requested");
        assert_eq!(e["transform"], "Read");
        assert_eq!(e["logging.googleapis.com/labels"]["pod"], "sluice-0");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
}
