//! Delivery tests against a local axum receiver on 127.0.0.1:0: exact Slack and webhook bodies,
//! dedup, retries on 5xx and 429, a dead receiver, and recording mode.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;

/// Answers with the scripted statuses (then 200) and keeps every body it was posted.
#[derive(Default)]
struct Receiver {
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    bodies: Mutex<Vec<Value>>,
    hits: Mutex<usize>,
}

async fn hook(State(r): State<Arc<Receiver>>, body: axum::body::Bytes) -> Response {
    *r.hits.lock().unwrap() += 1;
    let next = r.script.lock().unwrap().pop_front();
    match next {
        Some((status, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap();
            match retry_after {
                Some(s) => (status, [("retry-after", s)], "no").into_response(),
                None => (status, "no").into_response(),
            }
        }
        None => {
            r.bodies
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            (StatusCode::OK, "ok").into_response()
        }
    }
}

async fn receiver(script: &[(u16, Option<&'static str>)]) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    r.script.lock().unwrap().extend(script.iter().copied());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), r)
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        initial_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
    }
}

fn targets(slack: Option<&str>, webhook: Option<&str>) -> AlertTargets {
    AlertTargets {
        slack_webhook: slack.map(String::from),
        webhook: webhook.map(String::from),
        repeat_after: Duration::from_secs(600),
    }
}

fn check_alert() -> Alert {
    Alert {
        pipeline: "orders".into(),
        source: "CheckOrders".into(),
        kind: AlertKind::CheckFailed,
        summary: "Check CheckOrders failed: 2 of 3 rules".into(),
        window_start_ms: Some(1_767_225_600_000),
        window_end_ms: Some(1_767_225_660_000),
        findings: vec![
            Finding {
                rule: "row_count.min".into(),
                observed: "3".into(),
                expected: ">= 10".into(),
            },
            Finding {
                rule: "not_null(id)".into(),
                observed: "1 null".into(),
                expected: "0 nulls".into(),
            },
        ],
        valve: Some("closed".into()),
        dedup_key: "check/orders/CheckOrders".into(),
        at_ms: 1_767_225_661_000,
    }
}

async fn flushed(a: &Alerter) {
    assert!(a.flush(Duration::from_secs(10)).await, "queue drained");
}

#[tokio::test]
async fn slack_message_has_the_exact_text_and_blocks() {
    let (url, r) = receiver(&[]).await;
    let a = Alerter::start_with(Some("http://sluice.example:8080/".into()), fast());
    a.send(&targets(Some(&url), None), check_alert());
    flushed(&a).await;
    let bodies = r.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies,
        vec![json!({
            "text": "Check CheckOrders failed: 2 of 3 rules",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Check CheckOrders failed: 2 of 3 rules"}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": "*Pipeline*\norders"},
                    {"type": "mrkdwn", "text": "*Check*\nCheckOrders"},
                    {"type": "mrkdwn", "text": "*Window*\n2026-01-01T00:00:00Z – 2026-01-01T00:01:00Z"},
                    {"type": "mrkdwn", "text": "*Valve*\nclosed"},
                ]},
                {"type": "section", "text": {"type": "mrkdwn", "text":
                    "• row_count.min: observed 3, expected >= 10\n• not_null(id): observed 1 null, expected 0 nulls"}},
                {"type": "context", "elements": [
                    {"type": "mrkdwn", "text": "<http://sluice.example:8080/|Status page>"},
                ]},
            ],
        })]
    );
    assert_eq!(
        a.stats(),
        AlertStats {
            sent: 1,
            ..AlertStats::default()
        }
    );
}

#[tokio::test]
async fn webhook_gets_the_alert_as_json_with_status_url() {
    let (url, r) = receiver(&[]).await;
    let a = Alerter::start_with(None, fast());
    a.default_status_url("http://127.0.0.1:8080/".into());
    a.send(&targets(None, Some(&url)), check_alert());
    flushed(&a).await;
    let bodies = r.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies,
        vec![json!({
            "pipeline": "orders",
            "source": "CheckOrders",
            "kind": "check_failed",
            "summary": "Check CheckOrders failed: 2 of 3 rules",
            "window_start_ms": 1_767_225_600_000_i64,
            "window_end_ms": 1_767_225_660_000_i64,
            "findings": [
                {"rule": "row_count.min", "observed": "3", "expected": ">= 10"},
                {"rule": "not_null(id)", "observed": "1 null", "expected": "0 nulls"},
            ],
            "valve": "closed",
            "dedup_key": "check/orders/CheckOrders",
            "at_ms": 1_767_225_661_000_i64,
            "status_url": "http://127.0.0.1:8080/",
            "suppressed": 0,
        })]
    );
}

#[tokio::test]
async fn same_dedup_key_within_repeat_after_is_delivered_once() {
    let (url, r) = receiver(&[]).await;
    let a = Alerter::start_with(None, fast());
    let t = targets(None, Some(&url));
    a.send(&t, check_alert());
    a.send(&t, check_alert());
    flushed(&a).await;
    assert_eq!(r.bodies.lock().unwrap().len(), 1);
    assert_eq!(
        a.stats(),
        AlertStats {
            sent: 1,
            suppressed: 1,
            ..AlertStats::default()
        }
    );
}

#[tokio::test]
async fn the_next_alert_after_suppressions_says_how_many() {
    let (url, r) = receiver(&[]).await;
    let a = Alerter::start_with(None, fast());
    let mut t = targets(Some(&url), None);
    t.repeat_after = Duration::from_millis(200);
    for _ in 0..3 {
        a.send(&t, check_alert());
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    a.send(&t, check_alert());
    flushed(&a).await;
    let bodies = r.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[1]["text"],
        "Check CheckOrders failed: 2 of 3 rules (2 similar alerts suppressed)"
    );
    assert_eq!(
        bodies[1]["blocks"][3]["elements"][0]["text"],
        "2 similar suppressed since the last alert"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered() {
    let (url, r) = receiver(&[(500, None), (500, None)]).await;
    let a = Alerter::start_with(None, fast());
    a.send(&targets(None, Some(&url)), check_alert());
    flushed(&a).await;
    assert_eq!(*r.hits.lock().unwrap(), 3);
    assert_eq!(r.bodies.lock().unwrap().len(), 1);
    assert_eq!(
        a.stats(),
        AlertStats {
            sent: 1,
            ..AlertStats::default()
        }
    );
}

#[tokio::test]
async fn too_many_requests_waits_retry_after_instead_of_the_backoff() {
    let (url, r) = receiver(&[(429, Some("0"))]).await;
    // A backoff of an hour would never finish within the flush timeout.
    let policy = RetryPolicy {
        initial_backoff: Duration::from_secs(3600),
        ..fast()
    };
    let a = Alerter::start_with(None, policy);
    a.send(&targets(None, Some(&url)), check_alert());
    flushed(&a).await;
    assert_eq!((*r.hits.lock().unwrap(), a.stats().sent), (2, 1));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (url, r) = receiver(&[(404, None)]).await;
    let a = Alerter::start_with(None, fast());
    a.send(&targets(None, Some(&url)), check_alert());
    flushed(&a).await;
    assert_eq!((*r.hits.lock().unwrap(), a.stats().failed), (1, 1));
}

#[tokio::test]
async fn a_dead_receiver_counts_one_failure_and_send_does_not_wait() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // 3 attempts with 300 + 600 ms between them: delivery takes ≥ 0.9 s.
    let policy = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(300),
        timeout: Duration::from_secs(2),
    };
    let a = Alerter::start_with(None, policy);
    let started = Instant::now();
    a.send(
        &targets(None, Some(&format!("http://127.0.0.1:{port}/hook"))),
        check_alert(),
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    flushed(&a).await;
    assert_eq!(
        a.stats(),
        AlertStats {
            failed: 1,
            ..AlertStats::default()
        }
    );
}

#[tokio::test]
async fn recording_keeps_what_would_be_sent_after_dedup() {
    let (a, log) = Alerter::recording();
    let t = targets(Some("https://hooks.slack.com/services/x"), None);
    a.send(&t, check_alert());
    a.send(&t, check_alert());
    let mut other = check_alert();
    other.dedup_key = "other".into();
    a.send(&t, other.clone());
    assert_eq!(*log.lock().unwrap(), vec![check_alert(), other]);
    assert_eq!((a.stats().sent, a.stats().suppressed), (1 + 1, 1));
}
