//! Every metric Sluice exports, in one place. Names are `sluice_<what>_<unit>`, labelled by
//! `pipeline` and `transform`. Values are read from the stages' counters at scrape time (a
//! Prometheus collector), so the hot path only bumps atomics once per batch.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
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
pub const VALVE_OPEN: &str = "sluice_valve_open";
pub const GATE_OPEN: &str = "sluice_gate_open";
pub const DEAD_LETTER_RATE: &str = "sluice_dead_letter_rate";
pub const ALERTS_SENT: &str = "sluice_alerts_sent";
pub const ALERTS_FAILED: &str = "sluice_alerts_failed";
pub const ALERTS_SUPPRESSED: &str = "sluice_alerts_suppressed";
pub const ALERTS_DROPPED: &str = "sluice_alerts_dropped";

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
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
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
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters: [CounterSpec; 4] = [
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
        let now = chrono::Utc::now().timestamp_millis();
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
