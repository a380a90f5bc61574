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
        let entry = self.entry(
            event.metadata().level(),
            event.metadata().target(),
            fields.0,
            spans,
        );
        writeln!(writer, "{entry}")
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `warn,sluice=info`).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sluice=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        let mut labels = Map::new();
        if let Ok(pod) = std::env::var("HOSTNAME") {
            labels.insert("pod".into(), Value::from(pod));
        }
        builder.event_format(CloudLoggingJson { labels }).init();
    } else {
        builder.init();
    }
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
