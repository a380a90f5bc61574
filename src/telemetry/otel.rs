//! OpenTelemetry export over OTLP (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (SPEC §2): the `tracing` spans — one per batch per stage, with the batch's first message ids —
//! become OTLP traces, and the pipeline's counters are exported as OTLP metrics. The exporters
//! read the standard `OTEL_*` variables themselves (endpoint, headers, `OTEL_SERVICE_NAME`,
//! `OTEL_METRIC_EXPORT_INTERVAL`). Without the variable nothing is set up and nothing is sent.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::registry::LookupSpan;

use super::metrics::PipelineMetrics;

static TRACES: OnceLock<SdkTracerProvider> = OnceLock::new();
static METRICS: OnceLock<SdkMeterProvider> = OnceLock::new();

/// Whether `OTEL_EXPORTER_OTLP_ENDPOINT` asks for export.
pub fn enabled() -> bool {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.trim().is_empty())
}

fn resource() -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "sluice".into()))
        .build()
}

/// The `tracing` layer that turns spans into OTLP traces, when export is enabled. Call before
/// the tokio runtime starts (the exporters run on their own threads).
pub fn tracing_layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if !enabled() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            super::logging::warn_outside_logging(&format!("OTLP trace export disabled: {e}"));
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("sluice");
    let _ = TRACES.set(provider);
    if let Ok(exporter) = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        let _ = METRICS.set(
            SdkMeterProvider::builder()
                .with_periodic_exporter(exporter)
                .with_resource(resource())
                .build(),
        );
    }
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Exports the pipeline's counters (records in/out, errors per transform, valves) as OTLP
/// metrics, read when the periodic reader collects, like `/metrics`.
pub fn export_metrics(metrics: &Arc<PipelineMetrics>) {
    let Some(provider) = METRICS.get() else {
        return;
    };
    let meter = provider.meter("sluice");
    type Read = fn(&crate::pipeline::operator::StageStats) -> u64;
    let counters: [(&'static str, Read); 3] = [
        (super::metrics::RECORDS_IN, |s| {
            s.rows_in.load(std::sync::atomic::Ordering::Relaxed)
        }),
        (super::metrics::RECORDS_OUT, |s| {
            s.rows_out.load(std::sync::atomic::Ordering::Relaxed)
        }),
        (super::metrics::ERRORS, |s| {
            s.errors.load(std::sync::atomic::Ordering::Relaxed)
        }),
    ];
    for (name, read) in counters {
        let m = metrics.clone();
        meter
            .u64_observable_counter(name)
            .with_callback(move |obs| {
                for (transform, stats) in &m.stages {
                    obs.observe(
                        read(stats),
                        &[
                            KeyValue::new("pipeline", m.pipeline.clone()),
                            KeyValue::new("transform", transform.clone()),
                        ],
                    );
                }
            })
            .build();
    }
    let m = metrics.clone();
    meter
        .i64_observable_gauge(super::metrics::VALVE_OPEN)
        .with_callback(move |obs| {
            for (valve, _, state) in m.valves.list() {
                obs.observe(
                    i64::from(state.is_open()),
                    &[
                        KeyValue::new("pipeline", m.pipeline.clone()),
                        KeyValue::new("check", valve),
                    ],
                );
            }
        })
        .build();
}

/// Sends what is buffered and stops the exporters (end of `main`, outside the runtime).
pub fn shutdown() {
    if let Some(p) = TRACES.get()
        && let Err(e) = p.shutdown()
    {
        super::logging::warn_outside_logging(&format!("Flushing OTLP traces failed: {e}"));
    }
    if let Some(p) = METRICS.get()
        && let Err(e) = p.shutdown()
    {
        super::logging::warn_outside_logging(&format!("Flushing OTLP metrics failed: {e}"));
    }
}
