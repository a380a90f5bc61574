//! Every metric Sluice exports, in one place. Names are `sluice_<what>_<unit>`, labelled by
//! `pipeline` and `transform`. Values are read from the stages' counters at scrape time (a
//! Prometheus collector), so the hot path only bumps atomics once per batch. Source, sink and
//! window families are exported for the stages that have those counters
//! (`pipeline::stats`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::pipeline::operator::StageStats;
use crate::pipeline::valve::{ValveKind, Valves};

pub const RECORDS_IN: &str = "sluice_records_in";
pub const RECORDS_OUT: &str = "sluice_records_out";
pub const ERRORS: &str = "sluice_errors";
pub const BATCHES: &str = "sluice_batches";
pub const BATCH_DURATION: &str = "sluice_batch_duration_seconds";
pub const WATERMARK: &str = "sluice_watermark_seconds";
pub const WATERMARK_LAG: &str = "sluice_watermark_lag_seconds";
pub const CHECK_FAILURES: &str = "sluice_check_failures";
pub const EVENT_TIME_OUT_OF_RANGE: &str = "sluice_event_time_out_of_range";
pub const VALVE_OPEN: &str = "sluice_valve_open";
pub const GATE_OPEN: &str = "sluice_gate_open";
pub const DEAD_LETTER_RATE: &str = "sluice_dead_letter_rate";
pub const ALERTS_SENT: &str = "sluice_alerts_sent";
pub const ALERTS_FAILED: &str = "sluice_alerts_failed";
pub const ALERTS_SUPPRESSED: &str = "sluice_alerts_suppressed";
pub const ALERTS_DROPPED: &str = "sluice_alerts_dropped";
pub const SOURCE_MESSAGES_RECEIVED: &str = "sluice_source_messages_received";
pub const SOURCE_MESSAGES_ACKED: &str = "sluice_source_messages_acked";
pub const SOURCE_MESSAGES_NACKED: &str = "sluice_source_messages_nacked";
pub const SOURCE_DUPLICATES: &str = "sluice_source_duplicates_dropped";
pub const SOURCE_MESSAGES_OUTSTANDING: &str = "sluice_source_messages_outstanding";
pub const SOURCE_OLDEST_UNACKED_AGE: &str = "sluice_source_oldest_unacked_age_seconds";
pub const SOURCE_THROTTLED: &str = "sluice_source_throttled_seconds";
pub const SOURCE_PAUSED: &str = "sluice_source_paused_seconds";
pub const WINDOW_GROUPS: &str = "sluice_window_groups";
pub const WINDOW_STATE_BYTES: &str = "sluice_window_state_bytes";
pub const SINK_WRITE_DURATION: &str = "sluice_sink_write_duration_seconds";
pub const SINK_RETRIES: &str = "sluice_sink_retries";
pub const SINK_FAILURES: &str = "sluice_sink_failures";

/// What `/metrics` reads.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    pub pipeline: String,
    pub stages: Vec<(String, Arc<StageStats>)>,
    /// Names of the stages that are `Check`s (for `sluice_check_failures`).
    pub checks: Vec<String>,
    pub valves: Arc<Valves>,
    /// The alert counters, when the run alerts.
    pub alerts: Option<crate::alerts::Alerter>,
}

type Labels = [(&'static str, String); 2];

impl PipelineMetrics {
    fn labels(&self, transform: &str) -> Labels {
        [
            ("pipeline", self.pipeline.clone()),
            ("transform", transform.to_string()),
        ]
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        self.render_at(chrono::Utc::now().timestamp_millis())
    }

    /// [`render`](Self::render) with the wall clock at `now_ms` (ages and lags are measured
    /// against it).
    pub fn render_at(self: &Arc<Self>, now_ms: i64) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(At(self.clone(), now_ms)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The metrics as read at a given wall-clock time (ms).
#[derive(Debug)]
struct At(Arc<PipelineMetrics>, i64);

impl Collector for At {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode_at(encoder, self.1)
    }
}

impl PipelineMetrics {
    /// Alert counters, labelled by `pipeline` only (the alerter is shared by the pipeline).
    fn encode_alerts(
        &self,
        a: crate::alerts::AlertStats,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let labels = [("pipeline", self.pipeline.clone())];
        for (name, help, value) in [
            (
                ALERTS_SENT,
                "Alert deliveries (one alert to one URL) that succeeded.",
                a.sent,
            ),
            (
                ALERTS_FAILED,
                "Alert deliveries given up on after retries.",
                a.failed,
            ),
            (
                ALERTS_SUPPRESSED,
                "Alert deliveries suppressed by dedup (repeat_after) or the per-URL rate limit.",
                a.suppressed,
            ),
            (
                ALERTS_DROPPED,
                "Alert deliveries dropped because the queue was full.",
                a.dropped,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl PipelineMetrics {
    /// A counter family with one series per stage `read` returns a value for.
    fn counter<N: EncodeCounterValue>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        read: impl Fn(&StageStats) -> Option<N>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (transform, stats) in &self.stages {
            if let Some(v) = read(stats) {
                ConstCounter::new(v).encode(family.encode_family(&self.labels(transform))?)?;
            }
        }
        Ok(())
    }

    /// A gauge family with one series per stage `read` returns a value for.
    fn gauge<N: EncodeGaugeValue>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        read: impl Fn(&StageStats) -> Option<N>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (transform, stats) in &self.stages {
            if let Some(v) = read(stats) {
                ConstGauge::new(v).encode(family.encode_family(&self.labels(transform))?)?;
            }
        }
        Ok(())
    }

    /// Sources (every source; message counts for those that acknowledge), sinks, windows.
    fn encode_stage_kinds(
        &self,
        encoder: &mut DescriptorEncoder,
        now_ms: i64,
    ) -> Result<(), std::fmt::Error> {
        let acks = |s: &StageStats| s.acks.get().map(|a| a.counts());
        self.counter(
            encoder,
            (
                SOURCE_MESSAGES_RECEIVED,
                "Messages a source pulled (counted when they form a batch).",
            ),
            |s| acks(s).map(|c| c.received),
        )?;
        self.counter(
            encoder,
            (
                SOURCE_MESSAGES_ACKED,
                "Messages acknowledged: everything derived from them was written.",
            ),
            |s| acks(s).map(|c| c.acked),
        )?;
        self.counter(
            encoder,
            (
                SOURCE_MESSAGES_NACKED,
                "Messages nacked (redelivered) because the run failed or stopped first.",
            ),
            |s| acks(s).map(|c| c.nacked),
        )?;
        self.counter(
            encoder,
            (
                SOURCE_DUPLICATES,
                "Messages dropped at the source: their id (id_attribute, else the message id) was seen within the dedupe horizon.",
            ),
            |s| s.acks.get().map(|a| a.duplicates()),
        )?;
        self.gauge(
            encoder,
            (
                SOURCE_MESSAGES_OUTSTANDING,
                "Messages received and not yet acknowledged or nacked.",
            ),
            |s| acks(s).map(|c| c.outstanding),
        )?;
        self.gauge(
            encoder,
            (
                SOURCE_OLDEST_UNACKED_AGE,
                "Seconds since the oldest message not yet acknowledged was received (0 if none).",
            ),
            |s| s.acks.get().map(|a| a.oldest_unacked_seconds(now_ms)),
        )?;
        self.counter(
            encoder,
            (
                SOURCE_THROTTLED,
                "Seconds a source waited to hand batches to full downstream inboxes (backpressure).",
            ),
            |s| s.source.get().map(|x| x.throttled_seconds()),
        )?;
        self.counter(
            encoder,
            (
                SOURCE_PAUSED,
                "Seconds a source waited for a closed valve or gate to open.",
            ),
            |s| s.source.get().map(|x| x.paused_seconds()),
        )?;
        self.gauge(
            encoder,
            (
                WINDOW_GROUPS,
                "(window, key) groups a windowed aggregation holds.",
            ),
            |s| s.window.get().map(|w| w.groups.load(Relaxed)),
        )?;
        self.gauge(
            encoder,
            (
                WINDOW_STATE_BYTES,
                "Estimated bytes of a windowed aggregation's state.",
            ),
            |s| s.window.get().map(|w| w.state_bytes.load(Relaxed)),
        )?;
        let mut family = encoder.encode_descriptor(
            SINK_WRITE_DURATION,
            "Time of one write attempt of a sink (request, statement, publish round, file write).",
            None,
            MetricType::Histogram,
        )?;
        for (transform, stats) in &self.stages {
            if let Some(sink) = stats.sink.get() {
                sink.write_seconds
                    .encode(family.encode_family(&self.labels(transform))?)?;
            }
        }
        self.counter(
            encoder,
            (
                SINK_RETRIES,
                "Sink write attempts repeated after a transient failure.",
            ),
            |s| s.sink.get().map(|k| k.retries()),
        )?;
        self.counter(
            encoder,
            (
                SINK_FAILURES,
                "Sink write attempts that failed (retried or not; rejected rows excluded).",
            ),
            |s| s.sink.get().map(|k| k.failures()),
        )
    }
}

/// Event time of a watermark in seconds, and its lag behind `now_ms`; `None` before the first
/// watermark and after the end of time.
pub fn watermark_seconds(wm: i64, now_ms: i64) -> Option<(f64, f64)> {
    if wm == i64::MIN || wm == i64::MAX {
        return None;
    }
    Some((wm as f64 / 1000.0, (now_ms - wm).max(0) as f64 / 1000.0))
}

/// A counter family: name, help, and how to read it from a stage's counters.
type CounterSpec = (&'static str, &'static str, fn(&StageStats) -> u64);

impl Collector for PipelineMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_at(encoder, chrono::Utc::now().timestamp_millis())
    }
}

impl PipelineMetrics {
    fn encode_at(&self, mut encoder: DescriptorEncoder, now: i64) -> Result<(), std::fmt::Error> {
        let counters: [CounterSpec; 5] = [
            (RECORDS_IN, "Records a transform received.", |s| {
                s.rows_in.load(Relaxed)
            }),
            (
                RECORDS_OUT,
                "Records a transform emitted on its outputs (error outputs excluded).",
                |s| s.rows_out.load(Relaxed),
            ),
            (
                ERRORS,
                "Records that failed in a transform (sent to its error output, or counted).",
                |s| s.errors.load(Relaxed),
            ),
            (BATCHES, "Batches a transform processed.", |s| {
                s.batches_in.load(Relaxed)
            }),
            (
                EVENT_TIME_OUT_OF_RANGE,
                "Event times more than 100 years from now (still processed; usually a numeric timestamp in an unexpected unit).",
                |s| s.event_time_out_of_range.load(Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (transform, stats) in &self.stages {
                let labels = self.labels(transform);
                ConstCounter::new(read(stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            BATCH_DURATION,
            "Time to process one batch.",
            None,
            MetricType::Histogram,
        )?;
        for (transform, stats) in &self.stages {
            let labels = self.labels(transform);
            stats.batch_seconds.encode(family.encode_family(&labels)?)?;
        }
        let marks: Vec<(&String, (f64, f64))> = self
            .stages
            .iter()
            .filter_map(|(t, s)| watermark_seconds(s.watermark.load(Relaxed), now).map(|w| (t, w)))
            .collect();
        let mut family = encoder.encode_descriptor(
            WATERMARK,
            "Event time up to which the transform's output is complete.",
            None,
            MetricType::Gauge,
        )?;
        for (transform, (wm, _)) in &marks {
            ConstGauge::new(*wm).encode(family.encode_family(&self.labels(transform))?)?;
        }
        let mut family = encoder.encode_descriptor(
            WATERMARK_LAG,
            "Wall-clock time minus the watermark.",
            None,
            MetricType::Gauge,
        )?;
        for (transform, (_, lag)) in &marks {
            ConstGauge::new(*lag).encode(family.encode_family(&self.labels(transform))?)?;
        }
        let mut family = encoder.encode_descriptor(
            CHECK_FAILURES,
            "Panes or batches a Check found failing.",
            None,
            MetricType::Counter,
        )?;
        for (transform, stats) in self.stages.iter().filter(|(t, _)| self.checks.contains(t)) {
            ConstCounter::new(stats.check_failures.load(Relaxed))
                .encode(family.encode_family(&self.labels(transform))?)?;
        }
        let valves = self.valves.list();
        for (name, help, kind, label) in [
            (
                VALVE_OPEN,
                "1 while the valve of a halting Check is open, else 0.",
                ValveKind::Check,
                "check",
            ),
            (
                GATE_OPEN,
                "1 while the other pipeline's valve this one is gated on is open, else 0.",
                ValveKind::Gate,
                "gate",
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (valve, _, state) in valves.iter().filter(|(_, k, _)| *k == kind) {
                let labels = [("pipeline", self.pipeline.clone()), (label, valve.clone())];
                ConstGauge::new(i64::from(state.is_open()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            DEAD_LETTER_RATE,
            "Share of a transform's records sent to its error output over the alarm window.",
            None,
            MetricType::Gauge,
        )?;
        for (transform, stats) in &self.stages {
            if let Some(rate) = stats.dead_letter_rate() {
                ConstGauge::new(rate).encode(family.encode_family(&self.labels(transform))?)?;
            }
        }
        self.encode_stage_kinds(&mut encoder, now)?;
        if let Some(alerter) = &self.alerts {
            self.encode_alerts(alerter.stats(), &mut encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_pipeline_and_transform_labels() {
        let stats = Arc::new(StageStats::default());
        StageStats::add(&stats.rows_in, 7);
        StageStats::add(&stats.errors, 2);
        stats.batch_seconds.observe(0.001);
        let valves = Arc::new(Valves::default());
        valves.register("Volume", ValveKind::Check);
        valves.close("Volume", "too few rows");
        let m = Arc::new(PipelineMetrics {
            pipeline: "p".into(),
            stages: vec![("Read".into(), stats)],
            checks: vec![],
            valves,
            alerts: None,
        });
        let text = m.render();
        assert!(
            text.contains("sluice_records_in_total{pipeline=\"p\",transform=\"Read\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_errors_total{pipeline=\"p\",transform=\"Read\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_batch_duration_seconds_count{pipeline=\"p\",transform=\"Read\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("sluice_watermark_seconds{"),
            "no watermark yet: {text}"
        );
        assert!(
            text.contains("sluice_valve_open{pipeline=\"p\",check=\"Volume\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_source_window_and_sink_families_only_for_those_stages() {
        use std::time::Duration;
        let read = Arc::new(StageStats::default());
        read.source().add_throttled(Duration::from_millis(1500));
        read.source().add_paused(Duration::from_millis(250));
        let acks = read.acks();
        let _held = acks.received(3, 1_000_000);
        let done = acks.received(2, 1_004_000);
        acks.released(done, 2, true);
        acks.nacked_unbatched(1);
        let sum = Arc::new(StageStats::default());
        sum.window().set(4, 1234);
        let write = Arc::new(StageStats::default());
        write.sink().write_seconds.observe(0.01);
        write.sink().retried();
        write.sink().failed();
        write.sink().failed();
        let m = Arc::new(PipelineMetrics {
            pipeline: "p".into(),
            stages: vec![
                ("Read".into(), read),
                ("Map".into(), Arc::new(StageStats::default())),
                ("Sum".into(), sum),
                ("Write".into(), write),
            ],
            checks: vec![],
            valves: Arc::default(),
            alerts: None,
        });
        let text = m.render_at(1_010_000);
        let series = |line: &str| {
            assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
        };
        let read = "{pipeline=\"p\",transform=\"Read\"}";
        series(&format!("sluice_source_messages_received_total{read} 6"));
        series(&format!("sluice_source_messages_acked_total{read} 2"));
        series(&format!("sluice_source_messages_nacked_total{read} 1"));
        series(&format!("sluice_source_duplicates_dropped_total{read} 0"));
        series(&format!("sluice_source_messages_outstanding{read} 3"));
        series(&format!(
            "sluice_source_oldest_unacked_age_seconds{read} 10.0"
        ));
        series(&format!("sluice_source_throttled_seconds_total{read} 1.5"));
        series(&format!("sluice_source_paused_seconds_total{read} 0.25"));
        series("# TYPE sluice_source_throttled_seconds counter");
        series("# TYPE sluice_source_oldest_unacked_age_seconds gauge");
        let sum = "{pipeline=\"p\",transform=\"Sum\"}";
        series(&format!("sluice_window_groups{sum} 4"));
        series(&format!("sluice_window_state_bytes{sum} 1234"));
        series("# TYPE sluice_sink_write_duration_seconds histogram");
        series("sluice_sink_write_duration_seconds_count{pipeline=\"p\",transform=\"Write\"} 1");
        for (le, n) in [("0.008", 0), ("0.032", 1)] {
            series(&format!(
                "sluice_sink_write_duration_seconds_bucket{{le=\"{le}\",pipeline=\"p\",transform=\"Write\"}} {n}"
            ));
        }
        series("sluice_sink_retries_total{pipeline=\"p\",transform=\"Write\"} 1");
        series("sluice_sink_failures_total{pipeline=\"p\",transform=\"Write\"} 2");
        // Each family only for the stages of its kind.
        for line in text.lines().filter(|l| {
            ["sluice_source_", "sluice_window_", "sluice_sink_"]
                .iter()
                .any(|p| l.starts_with(p))
        }) {
            let kind = if line.starts_with("sluice_source_") {
                "Read"
            } else if line.starts_with("sluice_window_") {
                "Sum"
            } else {
                "Write"
            };
            assert!(
                line.contains(&format!("transform=\"{kind}\"")),
                "{line} in:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn renders_dead_letter_rates_of_measured_stages_and_alert_counters() {
        let measured = Arc::new(StageStats::default());
        measured.set_dead_letter_rate(0.25);
        let (alerter, _) = crate::alerts::Alerter::recording();
        let m = Arc::new(PipelineMetrics {
            pipeline: "p".into(),
            stages: vec![
                ("Read".into(), measured),
                ("Write".into(), Arc::new(StageStats::default())),
            ],
            checks: vec![],
            valves: Arc::default(),
            alerts: Some(alerter),
        });
        let text = m.render();
        assert!(
            text.contains("sluice_dead_letter_rate{pipeline=\"p\",transform=\"Read\"} 0.25\n"),
            "{text}"
        );
        assert!(!text.contains("transform=\"Write\"} NaN"), "{text}");
        assert!(
            !text.contains("sluice_dead_letter_rate{pipeline=\"p\",transform=\"Write\"}"),
            "{text}"
        );
        for name in ["sent", "failed", "suppressed", "dropped"] {
            assert!(
                text.contains(&format!("sluice_alerts_{name}_total{{pipeline=\"p\"}} 0\n")),
                "{text}"
            );
        }
    }
}
