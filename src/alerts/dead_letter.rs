//! Dead-letter rates and alarms (SPEC §3 `error_handling.alert`): for every transform with an
//! error output, the share of its records that went to the error output over a sliding window,
//! published as a gauge and on the status page; with an alarm configured, one alert each time
//! the rate goes above `rate_above`.
//!
//! [`DeadLetterMonitor`] is the pure part (ring of counter samples, rate, arming) and is tested
//! on explicit timestamps; [`spawn_monitors`] runs one thin sampling task per transform.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marked_yaml::Node;

use super::alert::{Alert, AlertKind, Finding};
use super::deliver::Alerter;
use super::targets::{AlertTargets, parse_targets};
use crate::config::PipelineSpec;
use crate::config::diag::Reporter;
use crate::config::yaml::{MapReader, pos_of, to_json};
use crate::pipeline::Graph;
use crate::pipeline::operator::StageStats;

/// The window of the rate when `over` is not given (and for transforms without an alarm).
pub const DEFAULT_OVER: Duration = Duration::from_secs(5 * 60);
/// How often the counters are sampled. The counters move once per batch, so a second resolves
/// bursts well enough for windows of a minute or more and costs nothing.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long the end of a run waits for the last alerts to be delivered (the default retry
/// policy gives up after 7.5 s of backoff plus the requests).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// The keys of `error_handling.alert`.
pub const ALARM_KEYS: &[&str] = &[
    "rate_above",
    "over",
    "slack_webhook",
    "webhook",
    "repeat_after",
];

/// `error_handling.alert`: alert when more than `rate_above` of a transform's records went to
/// its error output over the last `over`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterAlarm {
    /// A fraction, 0 < x ≤ 1.
    pub rate_above: f64,
    pub over: Duration,
    pub targets: AlertTargets,
}

/// Reads `error_handling.alert`, reporting every problem with its position.
pub fn parse_alarm(node: &Node, rep: &mut Reporter) -> Option<DeadLetterAlarm> {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`error_handling.alert`",
        ALARM_KEYS,
        rep,
    );
    let rate_above = match r.node("rate_above") {
        None => {
            rep.error(
                r.pos(),
                "`error_handling.alert` is missing required key `rate_above`",
                Some("e.g. `rate_above: 0.05` alerts when more than 5% of records fail".into()),
            );
            None
        }
        Some(n) => match to_json(n).as_f64() {
            Some(x) if x > 0.0 && x <= 1.0 => Some(x),
            _ => {
                rep.error(
                    pos_of(n),
                    "`rate_above` must be a fraction greater than 0 and at most 1",
                    Some("e.g. `rate_above: 0.05` for 5%".into()),
                );
                None
            }
        },
    };
    let over = match r.duration("over", rep) {
        Some(d) if d < SAMPLE_EVERY => {
            rep.error(
                r.pos(),
                "`over` must be at least 1s (the rate is sampled every second)",
                None,
            );
            None
        }
        other => other,
    };
    let targets = parse_targets(&mut r, rep);
    r.finish(rep);
    Some(DeadLetterAlarm {
        rate_above: rate_above?,
        over: over.unwrap_or(DEFAULT_OVER),
        targets: targets?,
    })
}

/// The dead-letter rate over a window: `errors / (errors + rows_out)`, 0 when nothing flowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub rate: f64,
    pub errors: u64,
    /// Records counted: errors plus records emitted.
    pub records: u64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The pure part of a monitor: counter samples over `over`, and the alarm's arming.
#[derive(Debug)]
pub struct DeadLetterMonitor {
    over_ms: i64,
    /// `(at_ms, errors, rows_out)`, oldest first; the first one is at or before `now - over`
    /// once the monitor ran that long, so the window spans `over`.
    samples: VecDeque<(i64, u64, u64)>,
    rate_above: Option<f64>,
    armed: bool,
}

impl DeadLetterMonitor {
    pub fn new(over: Duration, rate_above: Option<f64>) -> Self {
        DeadLetterMonitor {
            over_ms: over.as_millis().min(i64::MAX as u128) as i64,
            samples: VecDeque::new(),
            rate_above,
            armed: true,
        }
    }

    /// Records the stage's counters at `at_ms` and returns the rate over the window, and
    /// whether the alarm fires now: the first sample above `rate_above` fires; it re-arms only
    /// once the rate is back at or below `rate_above`.
    pub fn observe(&mut self, at_ms: i64, errors: u64, rows_out: u64) -> (Measured, bool) {
        self.samples.push_back((at_ms, errors, rows_out));
        let horizon = at_ms.saturating_sub(self.over_ms);
        while self.samples.len() > 1 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
        let (from_ms, e0, o0) = self.samples[0];
        let errors = errors.saturating_sub(e0);
        let records = errors + rows_out.saturating_sub(o0);
        let rate = if records == 0 {
            0.0
        } else {
            errors as f64 / records as f64
        };
        let m = Measured {
            rate,
            errors,
            records,
            from_ms,
            to_ms: at_ms,
        };
        let Some(limit) = self.rate_above else {
            return (m, false);
        };
        let fire = self.armed && rate > limit;
        if fire {
            self.armed = false;
        } else if rate <= limit {
            self.armed = true;
        }
        (m, fire)
    }
}

/// The alert for a rate above the alarm's `rate_above`.
pub fn alert(
    pipeline: &str,
    transform: &str,
    alarm: &DeadLetterAlarm,
    m: &Measured,
    at_ms: i64,
) -> Alert {
    let over = humantime::format_duration(alarm.over);
    Alert {
        pipeline: pipeline.to_string(),
        source: transform.to_string(),
        kind: AlertKind::DeadLetterRate,
        summary: format!(
            "Dead-letter rate of {transform} is {:.1}% over {over} (alarm above {:.1}%)",
            m.rate * 100.0,
            alarm.rate_above * 100.0
        ),
        window_start_ms: Some(m.from_ms),
        window_end_ms: Some(m.to_ms),
        findings: vec![Finding {
            rule: "dead_letter_rate".into(),
            observed: format!(
                "{:.4} ({} errors in {} records)",
                m.rate, m.errors, m.records
            ),
            expected: format!("<= {}", alarm.rate_above),
        }],
        valve: None,
        dedup_key: format!("dead_letter_rate/{pipeline}/{transform}"),
        at_ms,
    }
}

/// One running monitor: the pure state plus what it reads and where it alerts.
struct Watch {
    pipeline: String,
    transform: String,
    stats: Arc<StageStats>,
    alarm: Option<DeadLetterAlarm>,
    monitor: DeadLetterMonitor,
}

impl Watch {
    fn sample(&mut self, alerter: &Alerter) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = chrono::Utc::now().timestamp_millis();
        let (m, fire) = self.monitor.observe(
            now,
            self.stats.errors.load(Relaxed),
            self.stats.rows_out.load(Relaxed),
        );
        self.stats.set_dead_letter_rate(m.rate);
        if let (true, Some(alarm)) = (fire, &self.alarm) {
            tracing::warn!(
                transform = %self.transform,
                rate = m.rate,
                errors = m.errors,
                records = m.records,
                rate_above = alarm.rate_above,
                "Dead-letter rate above the alarm's threshold"
            );
            let a = alert(&self.pipeline, &self.transform, alarm, &m, now);
            alerter.send(&alarm.targets, a);
        }
    }
}

/// The running monitors of a pipeline; [`Monitors::finish`] ends them.
pub struct Monitors {
    watches: Vec<(tokio::task::JoinHandle<()>, Arc<Mutex<Watch>>)>,
    alerter: Alerter,
}

/// Starts one sampling task per transform that declares an error output (`stats` is indexed
/// like `graph.nodes`). Transforms with `error_handling.alert` also alert.
pub fn spawn_monitors(
    spec: &PipelineSpec,
    graph: &Graph,
    stats: &[Arc<StageStats>],
    alerter: &Alerter,
) -> Monitors {
    let mut watches = Vec::new();
    for (node, stats) in graph.nodes.iter().zip(stats) {
        if node.error_port.is_none() {
            continue;
        }
        let alarm = spec
            .transforms
            .get(node.spec)
            .and_then(|t| t.error_alert.clone());
        let over = alarm.as_ref().map_or(DEFAULT_OVER, |a| a.over);
        let watch = Arc::new(Mutex::new(Watch {
            pipeline: spec.name.clone(),
            transform: node.name.clone(),
            stats: stats.clone(),
            monitor: DeadLetterMonitor::new(over, alarm.as_ref().map(|a| a.rate_above)),
            alarm,
        }));
        let (w, a) = (watch.clone(), alerter.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                w.lock().expect("not poisoned").sample(&a);
            }
        });
        watches.push((task, watch));
    }
    Monitors {
        watches,
        alerter: alerter.clone(),
    }
}

impl Monitors {
    /// Stops sampling after one last sample (so a burst at the end of a bounded run still
    /// alerts), then waits (bounded) for queued alerts to be delivered.
    pub async fn finish(self) {
        for (task, watch) in &self.watches {
            task.abort();
            watch.lock().expect("not poisoned").sample(&self.alerter);
        }
        if !self.alerter.flush(FLUSH_TIMEOUT).await {
            tracing::warn!("Alerts still undelivered at exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    #[test]
    fn rate_is_errors_over_records_within_the_window() {
        let mut m = DeadLetterMonitor::new(Duration::from_secs(60), None);
        assert_eq!(m.observe(0, 0, 0).0.rate, 0.0, "nothing flowed");
        let (r, _) = m.observe(S, 0, 20);
        assert_eq!((r.rate, r.errors, r.records, r.from_ms), (0.0, 0, 20, 0));
        let (r, _) = m.observe(2 * S, 10, 20);
        assert_eq!((r.errors, r.records), (10, 30));
        assert!((r.rate - 1.0 / 3.0).abs() < 1e-12);
        // The window's base is the newest sample at or before `now - over`.
        let (r, _) = m.observe(60 * S, 10, 20);
        assert_eq!((r.errors, r.records, r.from_ms), (10, 30, 0));
        let (r, _) = m.observe(61 * S, 10, 20);
        assert_eq!((r.errors, r.records, r.rate, r.from_ms), (10, 10, 1.0, S));
        let (r, _) = m.observe(62 * S, 10, 20);
        assert_eq!((r.rate, r.records, r.from_ms), (0.0, 0, 2 * S));
    }

    #[test]
    fn alarm_fires_once_per_excursion_and_rearms_at_or_below_the_threshold() {
        let mut m = DeadLetterMonitor::new(Duration::from_secs(10), Some(0.2));
        let mut fired = Vec::new();
        // (t, errors, rows_out) cumulative; rates over 10 s.
        let samples = [
            (0, 0, 0),
            (1, 0, 8),   // 0.0
            (2, 3, 8),   // 3/11 > 0.2: fires
            (3, 6, 8),   // 6/14: still above, no second alert
            (4, 6, 30),  // 6/36 = 0.167: re-armed
            (5, 6, 30),  // same
            (6, 16, 30), // 16/46 = 0.348: fires again
            (7, 16, 54), // 16/70 = 0.229: above, silent
        ];
        for (t, e, o) in samples {
            let (_, fire) = m.observe(t * S, e, o);
            if fire {
                fired.push(t);
            }
        }
        assert_eq!(fired, vec![2, 6]);
        // Exactly at the threshold counts as recovered: 2/10 = 0.2.
        let mut m = DeadLetterMonitor::new(Duration::from_secs(10), Some(0.2));
        m.observe(0, 0, 0);
        assert!(m.observe(S, 3, 7).1);
        assert!(!m.observe(2 * S, 4, 16).1, "4/20 = 0.2 re-arms");
        assert!(m.observe(3 * S, 10, 16).1);
    }

    #[test]
    fn the_alert_names_transform_rate_and_counts() {
        let alarm = DeadLetterAlarm {
            rate_above: 0.2,
            over: Duration::from_secs(60),
            targets: AlertTargets {
                slack_webhook: None,
                webhook: Some("http://127.0.0.1:1/h".into()),
                repeat_after: Duration::from_secs(600),
            },
        };
        let m = Measured {
            rate: 10.0 / 30.0,
            errors: 10,
            records: 30,
            from_ms: 1_000,
            to_ms: 5_000,
        };
        let a = alert("p", "Read", &alarm, &m, 5_000);
        assert_eq!(
            a.summary,
            "Dead-letter rate of Read is 33.3% over 1m (alarm above 20.0%)"
        );
        assert_eq!(
            a.findings,
            vec![Finding {
                rule: "dead_letter_rate".into(),
                observed: "0.3333 (10 errors in 30 records)".into(),
                expected: "<= 0.2".into(),
            }]
        );
        assert_eq!(a.dedup_key, "dead_letter_rate/p/Read");
        assert_eq!(
            (a.window_start_ms, a.window_end_ms),
            (Some(1_000), Some(5_000))
        );
    }

    fn parse(yaml: &str) -> (Option<DeadLetterAlarm>, Vec<String>) {
        let node = marked_yaml::parse_yaml(0, yaml).expect("YAML");
        let mut rep = Reporter::new("t.yaml");
        let a = parse_alarm(&node, &mut rep);
        let errs = match rep.finish(()) {
            Ok(()) => Vec::new(),
            Err(d) => {
                d.0.iter()
                    .map(|d| format!("{}:{} {}", d.pos.line, d.pos.col, d.message))
                    .collect()
            }
        };
        (a, errs)
    }

    #[test]
    fn parses_and_validates_the_alarm() {
        let (a, errs) = parse("rate_above: 0.05\nover: 1m\nwebhook: http://h/x\n");
        assert_eq!(errs, Vec::<String>::new());
        let a = a.expect("alarm");
        assert_eq!((a.rate_above, a.over), (0.05, Duration::from_secs(60)));
        let (a, _) = parse("rate_above: 1\nslack_webhook: https://hooks.slack.com/x\n");
        assert_eq!(a.map(|a| (a.rate_above, a.over)), Some((1.0, DEFAULT_OVER)));
        let (a, errs) = parse("rate_above: 1.5\nwebhook: http://h/x\n");
        assert_eq!(a, None);
        assert_eq!(
            errs,
            vec!["1:13 `rate_above` must be a fraction greater than 0 and at most 1"]
        );
        let (_, errs) = parse("rate_above: 0\nwebhook: http://h/x\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (_, errs) = parse("over: 1m\nwebhok: http://h/x\n");
        assert_eq!(
            errs,
            vec![
                "1:5 `alert` names no target",
                "1:5 `error_handling.alert` is missing required key `rate_above`",
                "2:1 unknown key `webhok` in `error_handling.alert`",
            ]
        );
    }

    fn pipeline(error_handling: &str) -> Result<crate::config::PipelineSpec, String> {
        let text = format!(
            "pipeline:\n  transforms:\n    - type: Create\n      config: {{elements: [{{a: 1}}]}}\n    - type: MapToFields\n      input: Create\n      config: {{language: sql, fields: {{b: a}}}}\n      error_handling:\n{error_handling}"
        );
        crate::config::spec::parse("p.yaml", &text, &Default::default()).map_err(|d| d.to_string())
    }

    #[test]
    fn error_handling_carries_the_alarm_and_needs_an_output() {
        let spec = pipeline(
            "        output: bad\n        alert: {rate_above: 0.2, over: 1m, webhook: http://127.0.0.1:9/h}\n",
        )
        .expect("valid");
        let t = spec.transform("MapToFields").expect("transform");
        assert_eq!(
            t.error_output.as_ref().map(|o| o.value.as_str()),
            Some("bad")
        );
        let alarm = t.error_alert.as_ref().expect("alarm");
        assert_eq!(
            (alarm.rate_above, alarm.over),
            (0.2, Duration::from_secs(60))
        );
        assert_eq!(
            alarm.targets.webhook.as_deref(),
            Some("http://127.0.0.1:9/h")
        );
        assert_eq!(
            spec.transform("Create").and_then(|t| t.error_alert.clone()),
            None
        );

        let err = pipeline("        alert: {rate_above: 0.2, webhook: http://127.0.0.1:9/h}\n")
            .expect_err("no output");
        assert!(
            err.starts_with("p.yaml:9:16: `error_handling.alert` needs an error output\n  hint: add `output: NAME`"),
            "{err}"
        );
    }
}
