//! The bodies posted to alert targets: a Slack incoming-webhook message (Block Kit) and the
//! generic webhook's JSON.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use super::alert::Alert;

/// Slack truncates nothing for us: a header longer than 150 characters or a section text longer
/// than 3000 is rejected with `invalid_blocks` (Block Kit reference limits).
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;

/// The one-line text of an alert, with the suppression note when alerts were suppressed since
/// the last one. Slack shows it in notifications and where blocks cannot be rendered.
pub fn text(alert: &Alert, suppressed_before: u64) -> String {
    match suppressed_before {
        0 => alert.summary.clone(),
        1 => format!("{} (1 similar alert suppressed)", alert.summary),
        n => format!("{} ({n} similar alerts suppressed)", alert.summary),
    }
}

/// `start – end` in RFC 3339 (UTC), when the alert covers a window.
pub fn window(alert: &Alert) -> Option<String> {
    let (start, end) = (alert.window_start_ms?, alert.window_end_ms?);
    Some(format!("{} – {}", rfc3339(start), rfc3339(end)))
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// A Slack incoming-webhook message: `text` (fallback) and `blocks`: a header, a section with
/// pipeline, check/transform, window and valve, a section listing the findings, and a context
/// with the suppression note and the status page link when there is one.
pub fn slack(alert: &Alert, suppressed_before: u64, status_url: Option<&str>) -> Value {
    let mut fields = vec![
        mrkdwn(format!("*Pipeline*\n{}", alert.pipeline)),
        mrkdwn(format!("*{}*\n{}", alert.kind.source_label(), alert.source)),
    ];
    if let Some(w) = window(alert) {
        fields.push(mrkdwn(format!("*Window*\n{w}")));
    }
    if let Some(v) = &alert.valve {
        fields.push(mrkdwn(format!("*Valve*\n{v}")));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&alert.summary, HEADER_MAX)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !alert.findings.is_empty() {
        let lines: Vec<String> = alert
            .findings
            .iter()
            .map(|f| {
                format!(
                    "• {}: observed {}, expected {}",
                    f.rule, f.observed, f.expected
                )
            })
            .collect();
        blocks.push(
            json!({"type": "section", "text": mrkdwn(truncate(&lines.join("\n"), SECTION_MAX))}),
        );
    }
    let mut context = Vec::new();
    if suppressed_before > 0 {
        context.push(mrkdwn(format!(
            "{suppressed_before} similar suppressed since the last alert"
        )));
    }
    if let Some(url) = status_url {
        context.push(mrkdwn(format!("<{url}|Status page>")));
    }
    if !context.is_empty() {
        blocks.push(json!({"type": "context", "elements": context}));
    }
    json!({"text": text(alert, suppressed_before), "blocks": blocks})
}

/// The generic webhook body: the [`Alert`] as JSON plus `status_url` (null when unknown) and
/// `suppressed` (alerts with the same key suppressed since the last one was sent).
pub fn webhook(alert: &Alert, suppressed_before: u64, status_url: Option<&str>) -> Value {
    let mut body = serde_json::to_value(alert).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("status_url".into(), json!(status_url));
        map.insert("suppressed".into(), json!(suppressed_before));
    }
    body
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_rfc3339_utc_and_long_headers_are_cut() {
        assert_eq!(rfc3339(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600_250), "2026-01-01T00:00:00.250Z");
        let long = "x".repeat(200);
        let cut = truncate(&long, HEADER_MAX);
        assert_eq!(cut.chars().count(), HEADER_MAX);
        assert!(cut.ends_with('…'));
    }
}
