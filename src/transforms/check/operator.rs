//! The `Check` operator: cuts its input into units (window panes, or batches), evaluates the
//! rules on each, alerts, and — when a halting check fails — closes its valve and holds the unit
//! and everything after it until the valve reopens.
//!
//! Units: rows of aggregated input (from `Combine`) carry their window and pane timing in hidden
//! columns, and one firing arrives as one batch, so a batch is split by (window, timing) and each
//! part is a complete pane. Un-aggregated rows in fixed windows are collected per window until
//! the watermark passes its end. Anything else is checked batch by batch.
//!
//! Holding: held units keep their acknowledgement holds (nothing derived from them is
//! acknowledged), the sources behind the valve pause (see `pipeline::valve`), and the output
//! watermark stays where it was when the first unit was held, so downstream windows do not close
//! over data that is still to come. Reopening (`POST /valves/{name}/open`, or a passing re-check
//! after `retry_after`) releases the held units in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use tokio::time::Instant;

use super::config::CheckConfig;
use super::rules;
use crate::alerts::{Alert, AlertKind, Alerter, Finding};
use crate::config::WindowKind;
use crate::expr::{self, Compiled};
use crate::pipeline::operator::{EngineError, EventTime, Operator, Output, StageStats};
use crate::pipeline::valve::{ValveState, Valves};
use crate::record::{Batch, meta};
use crate::time::Window;

/// How often a halting check looks at its valve (reopened over HTTP, time to re-check).
const VALVE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `PaneTiming::OnTime` as it travels in the hidden column.
const ON_TIME: i8 = 1;
const LATE: i8 = 2;

/// One thing a check is evaluated on.
struct Unit {
    batch: Batch,
    window: Option<Window>,
    /// Pane timing (EARLY 0, ON_TIME 1, LATE 2); `None` for a plain batch.
    timing: Option<i8>,
    /// Evaluated already (a failed unit waiting for its valve, or one that passed).
    checked: bool,
    /// The input watermark before this unit was queued: the most a held unit without a window
    /// lets the output watermark advance to.
    queued_at: EventTime,
}

impl Unit {
    /// How far the output watermark may advance while this unit is held: the start of its
    /// window (everything before it may flow on and close downstream), or for a plain batch
    /// the watermark it was queued under.
    fn hold(&self) -> EventTime {
        self.window.map_or(self.queued_at, |w| w.start.min(w.end))
    }
}

pub struct Check {
    name: String,
    pipeline: String,
    cfg: CheckConfig,
    valves: Arc<Valves>,
    alerter: Alerter,
    stats: Arc<StageStats>,
    /// The input's windowing, for un-aggregated fixed windows.
    windowing: WindowKind,
    predicate: Option<(SchemaRef, Result<Compiled, String>)>,
    /// Un-aggregated fixed windows waiting for the watermark.
    pending: BTreeMap<Window, Vec<Batch>>,
    queue: VecDeque<Unit>,
    /// Row counts of the last units that flowed on (volume baseline), newest last.
    history: VecDeque<usize>,
    input_wm: EventTime,
    /// While units are held: the watermark to forward at most.
    hold: Option<EventTime>,
    /// When this check closed its valve.
    closed_at: Option<Instant>,
    /// `every`: batches of the current interval, and when it started.
    interval: Vec<Batch>,
    interval_started: Option<Instant>,
    /// While an interval is open: the input watermark when it started (the most to forward).
    interval_hold: Option<EventTime>,
}

impl Check {
    pub fn new(
        name: &str,
        pipeline: &str,
        cfg: CheckConfig,
        windowing: WindowKind,
        valves: Arc<Valves>,
        alerter: Alerter,
        stats: Arc<StageStats>,
    ) -> Self {
        if cfg.on_failure.halts() {
            valves.register(name, crate::pipeline::valve::ValveKind::Check);
        }
        Check {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            cfg,
            valves,
            alerter,
            stats,
            windowing,
            predicate: None,
            pending: BTreeMap::new(),
            queue: VecDeque::new(),
            history: VecDeque::new(),
            input_wm: EventTime::MIN,
            hold: None,
            closed_at: None,
            interval: Vec::new(),
            interval_started: None,
            interval_hold: None,
        }
    }

    fn internal(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::internal(&self.name, e.to_string())
    }

    fn valve(&self) -> ValveState {
        if self.cfg.on_failure.halts() {
            self.valves.state(&self.name).unwrap_or(ValveState::Open)
        } else {
            ValveState::Open
        }
    }

    /// Cuts `batch` into units: complete panes go to the queue, un-aggregated rows of fixed
    /// windows to `pending`.
    fn split(&mut self, batch: Batch) -> Result<(), EngineError> {
        let starts = batch.column_i64(meta::WINDOW_START).cloned();
        let ends = batch.column_i64(meta::WINDOW_END).cloned();
        if let (Some(starts), Some(ends)) = (starts, ends) {
            let timings = batch
                .rows
                .column_by_name(meta::PANE_TIMING)
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int8Array>())
                .cloned();
            let timing = |i: usize| timings.as_ref().map_or(ON_TIME, |t| t.value(i));
            let mut groups: BTreeMap<(i64, i64, i8), Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                groups
                    .entry((ends.value(i), starts.value(i), timing(i)))
                    .or_default()
                    .push(i as u32);
            }
            let single = groups.len() == 1;
            for ((end, start, timing), idx) in groups {
                let rows = if single {
                    batch.rows.clone()
                } else {
                    take_record_batch(&batch.rows, &UInt32Array::from(idx))
                        .map_err(|e| self.internal(e))?
                };
                let window = Window::new(start, end);
                self.queue.push_back(Unit {
                    batch: batch.derive(rows),
                    window: (!window.is_global()).then_some(window),
                    timing: Some(timing),
                    checked: false,
                    queued_at: self.input_wm,
                });
            }
            return Ok(());
        }
        let times = batch.event_times().cloned();
        if self.cfg.every.is_some() && !matches!(self.windowing, WindowKind::Fixed { .. }) {
            self.interval_started.get_or_insert_with(Instant::now);
            self.interval_hold.get_or_insert(self.input_wm);
            self.interval.push(batch);
            return Ok(());
        }
        let (WindowKind::Fixed { size_ms, offset_ms }, Some(times)) = (&self.windowing, times)
        else {
            self.queue.push_back(Unit {
                batch,
                window: None,
                timing: None,
                checked: false,
                queued_at: self.input_wm,
            });
            return Ok(());
        };
        let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, ts) in times.iter().enumerate() {
            let ts = ts.unwrap_or(EventTime::MIN);
            let start = ts - (ts - offset_ms).rem_euclid(*size_ms);
            groups.entry(start).or_default().push(i as u32);
        }
        for (start, idx) in groups {
            let rows = take_record_batch(&batch.rows, &UInt32Array::from(idx))
                .map_err(|e| self.internal(e))?;
            let window = Window::new(start, start.saturating_add(*size_ms));
            let part = batch.derive(rows);
            if window.end <= self.input_wm {
                // The window already closed: these late rows are a unit of their own.
                self.queue.push_back(Unit {
                    batch: part,
                    window: Some(window),
                    timing: Some(LATE),
                    checked: false,
                    queued_at: self.input_wm,
                });
            } else {
                self.pending.entry(window).or_default().push(part);
            }
        }
        Ok(())
    }

    /// Moves pending windows that the watermark `wm` passed into the queue.
    fn close_windows(&mut self, wm: EventTime) -> Result<(), EngineError> {
        let ready: Vec<Window> = self
            .pending
            .keys()
            .filter(|w| w.end <= wm)
            .copied()
            .collect();
        for w in ready {
            let parts = self.pending.remove(&w).unwrap_or_default();
            let Some(first) = parts.first() else { continue };
            let rows = concat_batches(&first.schema(), parts.iter().map(|b| &b.rows))
                .map_err(|e| self.internal(e))?;
            let acks = parts.iter().flat_map(|b| b.acks.iter().cloned()).collect();
            self.queue.push_back(Unit {
                batch: Batch { rows, acks },
                window: Some(w),
                timing: Some(ON_TIME),
                checked: false,
                queued_at: w.start,
            });
        }
        Ok(())
    }

    /// Ends the current `every` interval: what arrived in it becomes one unit, held (if it
    /// fails) at the watermark the interval started under.
    fn close_interval(&mut self) -> Result<(), EngineError> {
        self.interval_started = None;
        let hold = self.interval_hold.take();
        let parts = std::mem::take(&mut self.interval);
        let Some(first) = parts.first() else {
            return Ok(());
        };
        let rows = concat_batches(&first.schema(), parts.iter().map(|b| &b.rows))
            .map_err(|e| self.internal(e))?;
        let acks = parts.iter().flat_map(|b| b.acks.iter().cloned()).collect();
        self.queue.push_back(Unit {
            batch: Batch { rows, acks },
            window: None,
            timing: None,
            checked: false,
            queued_at: hold.unwrap_or(self.input_wm),
        });
        Ok(())
    }

    fn evaluate(&mut self, i: usize) -> Vec<Finding> {
        let unit = &self.queue[i];
        let rows: &RecordBatch = &unit.batch.rows;
        if let Some(e) = &self.cfg.expression
            && self
                .predicate
                .as_ref()
                .is_none_or(|(s, _)| s != &rows.schema())
        {
            self.predicate = Some((rows.schema(), expr::compile(e, &rows.schema())));
        }
        let baseline = match (&self.cfg.volume_change, unit.timing) {
            (Some(v), None | Some(ON_TIME)) if !self.history.is_empty() => {
                let depth = v.baseline.depth().min(self.history.len());
                let recent = self.history.iter().rev().take(depth);
                Some(recent.sum::<usize>() as f64 / depth as f64)
            }
            _ => None,
        };
        let unit = &self.queue[i];
        rules::evaluate(
            &self.cfg,
            &unit.batch.rows,
            self.predicate.as_ref().map(|(_, p)| p),
            baseline,
        )
    }

    /// Emits the front unit and records its size for the volume baseline.
    fn release_front(&mut self, out: &mut Output) {
        let Some(unit) = self.queue.pop_front() else {
            return;
        };
        if matches!(unit.timing, None | Some(ON_TIME))
            && let Some(v) = &self.cfg.volume_change
        {
            self.history.push_back(unit.batch.num_rows());
            while self.history.len() > v.baseline.depth() {
                self.history.pop_front();
            }
        }
        out.main(unit.batch);
    }

    /// Evaluates and releases queued units as far as the valve allows.
    fn pump(&mut self, out: &mut Output) {
        loop {
            let state = self.valve();
            let next = match &state {
                ValveState::Open => match self.queue.front() {
                    None => break,
                    Some(u) if u.checked => {
                        self.release_front(out);
                        continue;
                    }
                    Some(_) => 0,
                },
                ValveState::Probing { .. } => match self.queue.iter().position(|u| !u.checked) {
                    Some(i) => i,
                    None => break,
                },
                ValveState::Closed { .. } => break,
            };
            let findings = self.evaluate(next);
            self.queue[next].checked = true;
            if findings.is_empty() {
                if let ValveState::Probing { .. } = state {
                    tracing::info!(check = %self.name, "Re-check passed: reopening the valve");
                    self.reopened("a re-check after retry_after passed");
                    let _ = self.valves.open(&self.name);
                }
                continue;
            }
            self.failed(next, &findings);
            if self.cfg.on_failure.halts() {
                break;
            }
        }
        // What passed flowed on; the output watermark may advance up to the first thing held
        // (the start of the first held window), even when several units were judged in this
        // step, so downstream windows over the released units close.
        self.hold = self.queue.iter().map(Unit::hold).min();
    }

    /// A unit failed: count, log, alert, and close the valve when halting.
    fn failed(&mut self, i: usize, findings: &[Finding]) {
        self.stats.check_failures.fetch_add(1, Ordering::Relaxed);
        let unit = &self.queue[i];
        let what = findings
            .iter()
            .map(|f| format!("{}: {} (expected {})", f.rule, f.observed, f.expected))
            .collect::<Vec<_>>()
            .join("; ");
        let window = unit
            .window
            .map(|w| format!(" for window [{}, {})", fmt_ms(w.start), fmt_ms(w.end)))
            .unwrap_or_default();
        let halts = self.cfg.on_failure.halts();
        tracing::warn!(check = %self.name, rows = unit.batch.num_rows(), findings = %what, halt = halts, "Check failed{window}");
        if let (true, Some(targets)) = (self.cfg.on_failure.alerts(), &self.cfg.alert) {
            let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
            self.alerter.send(
                targets,
                Alert {
                    pipeline: self.pipeline.clone(),
                    source: self.name.clone(),
                    kind: AlertKind::CheckFailed,
                    summary: format!(
                        "Check `{}` failed{window}{}: {what}",
                        self.name,
                        if halts { "; valve closed" } else { "" }
                    ),
                    window_start_ms: unit.window.map(|w| w.start),
                    window_end_ms: unit.window.map(|w| w.end),
                    findings: findings.to_vec(),
                    valve: halts.then(|| "closed".to_string()),
                    dedup_key: format!("{}/{}/{}", self.pipeline, self.name, rules.join(",")),
                    at_ms: chrono::Utc::now().timestamp_millis(),
                },
            );
        }
        if halts {
            self.valves.close(&self.name, &what);
            self.closed_at = Some(Instant::now());
        }
    }

    fn reopened(&mut self, how: &str) {
        self.closed_at = None;
        tracing::info!(check = %self.name, held = self.queue.len(), how, "Valve reopened");
        if let (true, Some(targets)) = (self.cfg.on_failure.alerts(), &self.cfg.alert) {
            self.alerter.send(
                targets,
                Alert {
                    pipeline: self.pipeline.clone(),
                    source: self.name.clone(),
                    kind: AlertKind::ValveReopened,
                    summary: format!("Valve `{}` reopened: {how}", self.name),
                    window_start_ms: None,
                    window_end_ms: None,
                    findings: Vec::new(),
                    valve: Some("open".into()),
                    dedup_key: format!("{}/{}/reopened", self.pipeline, self.name),
                    at_ms: chrono::Utc::now().timestamp_millis(),
                },
            );
        }
    }

    fn held_rows(&self) -> usize {
        self.queue.iter().map(|u| u.batch.num_rows()).sum()
    }
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

#[async_trait]
impl Operator for Check {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.split(batch)?;
        self.pump(out);
        Ok(())
    }

    async fn on_watermark(&mut self, wm: EventTime, out: &mut Output) -> Result<(), EngineError> {
        self.input_wm = wm;
        self.close_windows(wm)?;
        self.pump(out);
        Ok(())
    }

    async fn on_end(&mut self, out: &mut Output) -> Result<(), EngineError> {
        self.close_windows(EventTime::MAX)?;
        self.close_interval()?;
        self.pump(out);
        if self.queue.is_empty() {
            return Ok(());
        }
        let reason = match self.valve() {
            ValveState::Closed { reason, .. } | ValveState::Probing { reason, .. } => reason,
            ValveState::Open => String::new(),
        };
        Err(EngineError::Halted {
            transform: self.name.clone(),
            message: format!(
                "the input ended with the valve closed ({reason}); {} held rows were not passed on and their input is not acknowledged",
                self.held_rows()
            ),
        })
    }

    async fn on_drain_keep(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        // Held and pending units are left for redelivery: a new worker checks them again.
        for u in &self.queue {
            crate::record::abandon(&u.batch.acks);
        }
        for parts in self.pending.values() {
            for b in parts {
                crate::record::abandon(&b.acks);
            }
        }
        for b in &self.interval {
            crate::record::abandon(&b.acks);
        }
        self.queue.clear();
        self.pending.clear();
        self.interval.clear();
        self.interval_hold = None;
        Ok(())
    }

    fn output_watermark(&self, input_wm: EventTime) -> EventTime {
        let mut wm = input_wm;
        if let Some(h) = self.hold {
            wm = wm.min(h);
        }
        if let Some(start) = self.pending.keys().map(|w| w.start).min() {
            wm = wm.min(start);
        }
        if let Some(h) = self.interval_hold {
            wm = wm.min(h);
        }
        wm
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        let valve = self.cfg.on_failure.halts().then_some(VALVE_POLL);
        match (valve, self.cfg.every) {
            (Some(v), Some(e)) => Some(v.min(e)),
            (v, e) => v.or(e),
        }
    }

    async fn on_timer(&mut self, now: Instant, out: &mut Output) -> Result<(), EngineError> {
        if let (Some(every), Some(started)) = (self.cfg.every, self.interval_started)
            && now.duration_since(started) >= every
        {
            self.close_interval()?;
            self.pump(out);
        }
        let Some(closed_at) = self.closed_at else {
            return Ok(());
        };
        match self.valve() {
            ValveState::Open => self.reopened("opened over HTTP"),
            ValveState::Closed { .. } => {
                if let Some(after) = self.cfg.retry_after
                    && now.duration_since(closed_at) >= after
                {
                    tracing::info!(check = %self.name, "Re-checking after retry_after: letting data in");
                    self.valves.probe(&self.name);
                }
            }
            ValveState::Probing { .. } => {}
        }
        self.pump(out);
        Ok(())
    }
}
