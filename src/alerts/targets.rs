//! Where alerts go: the `slack_webhook`, `webhook` and `repeat_after` keys of an `alert:`
//! mapping (a `Check`'s `alert:` and a dead-letter alarm's `error_handling.alert`).

use std::time::Duration;

use crate::config::diag::Reporter;
use crate::config::yaml::{Located, MapReader};

/// How long alerts with the same dedup key are suppressed after one was sent, unless the
/// `alert:` mapping says otherwise. Ten minutes is Alertmanager's `group_interval`-ish middle
/// ground: a failing hourly check alerts once per run, a flapping one does not flood a channel.
pub const DEFAULT_REPEAT_AFTER: Duration = Duration::from_secs(10 * 60);

/// The keys [`parse_targets`] reads; callers list them among their reader's allowed keys.
pub const TARGET_KEYS: &[&str] = &["slack_webhook", "webhook", "repeat_after"];

/// Where alerts go, parsed from an `alert:` mapping: keys `slack_webhook`, `webhook`,
/// `repeat_after` (duration, default 10m).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTargets {
    /// A Slack incoming-webhook URL: receives Block Kit messages.
    pub slack_webhook: Option<String>,
    /// Any URL: receives the [`crate::alerts::Alert`] as JSON.
    pub webhook: Option<String>,
    /// Alerts with the same dedup key within this long after one was sent are suppressed.
    pub repeat_after: Duration,
}

/// Reads the target keys from a reader over the `alert:` mapping (the caller lists
/// [`TARGET_KEYS`] among the reader's allowed keys).
///
/// Reports an error (with position) when neither webhook is given or a URL is not http(s);
/// returns `None` then.
pub fn parse_targets(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<AlertTargets> {
    let slack = r.string("slack_webhook", rep);
    let webhook = r.string("webhook", rep);
    let repeat_after = r.duration("repeat_after", rep);
    let mut ok = true;
    for url in [&slack, &webhook].into_iter().flatten() {
        if let Err(why) = check_url(&url.value) {
            rep.error(
                url.pos,
                format!("`{}` is not an http(s) URL: {why}", url.value),
                Some("webhook URLs look like https://hooks.slack.com/services/…".into()),
            );
            ok = false;
        }
    }
    if slack.is_none() && webhook.is_none() {
        rep.error(
            r.pos(),
            "`alert` names no target",
            Some("add `slack_webhook: URL` and/or `webhook: URL`".into()),
        );
        ok = false;
    }
    ok.then(|| AlertTargets {
        slack_webhook: slack.map(value),
        webhook: webhook.map(value),
        repeat_after: repeat_after.unwrap_or(DEFAULT_REPEAT_AFTER),
    })
}

fn value(l: Located<String>) -> String {
    l.value
}

fn check_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}`", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Pos;

    fn parse(yaml: &str) -> (Option<AlertTargets>, Vec<String>) {
        let node = marked_yaml::parse_yaml(0, yaml).expect("YAML");
        let mut rep = Reporter::new("t.yaml");
        let mut r = MapReader::new(
            Some(&node),
            Pos::default(),
            "`alert`",
            TARGET_KEYS,
            &mut rep,
        );
        let t = parse_targets(&mut r, &mut rep);
        r.finish(&mut rep);
        let errs = match rep.finish(()) {
            Ok(()) => Vec::new(),
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        };
        (t, errs)
    }

    #[test]
    fn reads_both_targets_and_repeat_after() {
        let (t, errs) = parse(
            "slack_webhook: https://hooks.slack.com/services/T/B/x\nwebhook: http://127.0.0.1:9/h\nrepeat_after: 30s\n",
        );
        assert_eq!(errs, Vec::<String>::new());
        assert_eq!(
            t,
            Some(AlertTargets {
                slack_webhook: Some("https://hooks.slack.com/services/T/B/x".into()),
                webhook: Some("http://127.0.0.1:9/h".into()),
                repeat_after: Duration::from_secs(30),
            })
        );
    }

    #[test]
    fn repeat_after_defaults_to_ten_minutes() {
        let (t, _) = parse("webhook: https://example.com/h\n");
        assert_eq!(t.map(|t| t.repeat_after), Some(DEFAULT_REPEAT_AFTER));
    }

    #[test]
    fn no_target_and_bad_urls_are_errors_with_positions() {
        // A mapping's position is where marked_yaml starts it: its first value.
        let (t, errs) = parse("repeat_after: 1m\n");
        assert_eq!(t, None);
        assert_eq!(
            errs,
            vec![
                "t.yaml:1:13: `alert` names no target\n  hint: add `slack_webhook: URL` and/or `webhook: URL`"
            ]
        );
        let (t, errs) = parse("webhook: ftp://example.com/h\nslack_webhook: nope\n");
        assert_eq!(t, None);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "t.yaml:1:10: `ftp://example.com/h` is not an http(s) URL: scheme `ftp`"
            ),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("t.yaml:2:16: `nope` is not an http(s) URL"),
            "{errs:?}"
        );
    }
}
