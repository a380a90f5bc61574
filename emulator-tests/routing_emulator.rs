//! Keyed routing (docs/scaling.md) against Google's Pub/Sub emulator: the shipped router
//! (`pipelines/recipe_router.yaml`) republishes every event to its shard's topic exactly once,
//! with its id, and the owners' subscriptions (`pipelines/recipe_shard_owner.yaml`'s
//! `sluice setup`) each receive exactly their shard. Also pins the emulator behaviour that made
//! us route by topic rather than by subscription filter: it ignores filters.
//!
//! Run with `emulator-tests/run-pubsub-tests.sh` (see `pubsub_emulator.rs` for how tests skip
//! or fail without the emulator). Every test uses its own topics and subscriptions.

use google_cloud_pubsub::model::Message;
use serde_json::{Value, json};
use sluice::pubsub::Connection;
use std::collections::BTreeMap;

#[path = "support.rs"]
mod support;
use support::*;

const ROUTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/recipe_router.yaml");
const OWNER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/pipelines/recipe_shard_owner.yaml"
);

/// The shard of each recipe for 3 shards: the values pinned in
/// `src/pubsub/shard.rs` (`shards_of_fixed_keys_are_pinned`), written out so that this test
/// checks the router against the documented function, not against itself.
const SHARD_OF_3: [(&str, u32); 6] = [
    ("r0001", 0),
    ("r0002", 2),
    ("r0003", 1),
    ("r0004", 2),
    ("r0005", 1),
    ("r0006", 0),
];

/// Pulls (REST, acknowledging) until a pull finds nothing: everything `name` holds.
async fn drain(conn: &Connection, name: &str) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let got = rest_pull_messages(conn, name).await;
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

fn attr<'a>(m: &'a Value, k: &str) -> &'a str {
    m["attributes"][k].as_str().unwrap_or("-")
}

fn payload(m: &Value) -> Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(m["data"].as_str().expect("data"))
        .expect("base64");
    serde_json::from_slice(&bytes).expect("a JSON payload")
}

/// The emulator (0.8.20) stores a subscription's `filter` but delivers every message of the
/// topic to it, and accepts filters that do not parse. Real Pub/Sub filters. If this test
/// starts failing, the emulator learnt filters and single-topic routing
/// (`attributes.sluice_shard = "K"`) could be tested here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_ignores_subscription_filters() {
    let Some(conn) = emulator() else { return };
    let id = ids("filters");
    let t = id("topic");
    create_topic(&conn, &t).await;
    let admin = conn.subscription_admin().await.expect("admin");
    for (k, filter) in [
        ("zero", r#"attributes.sluice_shard = "0""#),
        ("one", r#"attributes.sluice_shard = "1""#),
        ("bad", "this is (not a filter"),
    ] {
        let made = admin
            .create_subscription()
            .set_name(sub(&id(k)))
            .set_topic(topic(&t))
            .set_filter(filter)
            .send()
            .await
            .expect("the emulator accepts the filter");
        assert_eq!(made.filter, filter);
    }
    let msgs = ["0", "1", "1"]
        .iter()
        .map(|k| {
            Message::new()
                .set_data(k.as_bytes().to_vec())
                .set_attributes([("sluice_shard", *k)])
        })
        .collect();
    let published = publish_all(&conn, &t, msgs).await;
    for k in ["zero", "one", "bad"] {
        let mut got = rest_pull(&conn, &id(k)).await;
        got.sort();
        let mut all = published.clone();
        all.sort();
        assert_eq!(got, all, "subscription `{k}` received every message");
    }
}

/// The shipped router on 3 shards: `sluice setup` of the router (main topic and subscription,
/// dead-letter topic, the 3 shard topics) and of the owner for SHARD=0..2 (each shard's
/// subscription), 12 events and one malformed message on the main topic, `sluice run
/// --until-idle`. Each owner subscription then holds exactly the events whose recipe hashes to
/// its shard, each once, unchanged, with `sluice_shard` = K and `sluice_id` = the incoming
/// `sluice_id` attribute where the publisher set one, else the main topic's message id. The
/// malformed message is in the dead-letter topic and the main subscription is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_publishes_every_event_once_to_its_shard_with_its_id() {
    let Some(conn) = emulator() else { return };
    let id = ids("route");
    let (main, main_sub, dlq, dlq_sub, prefix) = (
        id("events"),
        id("events-router"),
        id("dlq"),
        id("dlq-sub"),
        id("shard-"),
    );
    let vars = |extra: &[String]| -> Vec<String> {
        let mut v = vec![
            format!("subscription={main_sub}"),
            format!("topic={main}"),
            format!("dead_letter_topic={dlq}"),
            format!("shard_topic_prefix={prefix}"),
            "SHARDS=3".to_string(),
        ];
        v.extend(extra.iter().cloned());
        v.into_iter()
            .flat_map(|v| ["--var".to_string(), v])
            .collect()
    };
    let run_sluice = |args: Vec<String>| {
        let conn = conn.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sluice(&args, &conn).await
        }
    };

    let mut args = vec!["setup".to_string(), ROUTER.to_string()];
    args.extend(vars(&[]));
    let out = run_sluice(args).await;
    assert!(out.status.success(), "{}", show(&out));
    let created = String::from_utf8_lossy(&out.stdout).to_string();
    for k in 0..3 {
        assert!(
            created.contains(&format!("created topic {}", topic(&format!("{prefix}{k}")))),
            "{created}"
        );
    }
    for k in 0..3 {
        let mut args = vec!["setup".to_string(), OWNER.to_string()];
        args.extend(vars(&[format!("SHARD={k}")]));
        let out = run_sluice(args).await;
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "created subscription {}",
                sub(&format!("{prefix}{k}-owner"))
            )),
            "{}",
            show(&out)
        );
    }
    create_subscription(&conn, &dlq_sub, &dlq).await;

    // 12 events, two per recipe; the odd ones carry an upstream `sluice_id`.
    let shard_of: BTreeMap<&str, u32> = SHARD_OF_3.into_iter().collect();
    let events: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "event_id": format!("e{i:02}"),
                "recipe_id": format!("r{:04}", i % 6 + 1),
                "user_id": format!("u{}", i % 4),
                "action": if i % 3 == 0 { "cook" } else { "view" },
                "watch_seconds": i * 10,
                "event_time": format!("2026-01-01T10:00:{i:02}Z"),
            })
        })
        .collect();
    let mut messages: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let m = Message::new().set_data(e.to_string().into_bytes());
            if i % 2 == 1 {
                m.set_attributes([(
                    "sluice_id",
                    format!("upstream-{}", e["event_id"].as_str().expect("event_id")),
                )])
            } else {
                m
            }
        })
        .collect();
    messages.push(Message::new().set_data(b"not json".to_vec()));
    let msg_ids = publish_all(&conn, &main, messages).await;

    let mut args = vec![
        "run".to_string(),
        ROUTER.to_string(),
        "--until-idle".to_string(),
        "3s".to_string(),
    ];
    args.extend(vars(&[]));
    let out = run_sluice(args).await;
    assert!(out.status.success(), "{}", show(&out));

    // (event_id, sluice_id) expected per shard.
    let mut expected: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let recipe = e["recipe_id"].as_str().expect("recipe_id");
        let event = e["event_id"].as_str().expect("event_id").to_string();
        let sluice_id = if i % 2 == 1 {
            format!("upstream-{}", e["event_id"].as_str().expect("event_id"))
        } else {
            msg_ids[i].clone()
        };
        expected
            .entry(shard_of[recipe])
            .or_default()
            .push((event, sluice_id));
    }
    let by_event: BTreeMap<&str, &Value> = events
        .iter()
        .map(|e| (e["event_id"].as_str().expect("event_id"), e))
        .collect();
    let mut seen = 0;
    for k in 0..3u32 {
        let got = drain(&conn, &format!("{prefix}{k}-owner")).await;
        let mut pairs: Vec<(String, String)> = Vec::new();
        for m in &got {
            assert_eq!(attr(m, "sluice_shard"), k.to_string(), "{m}");
            let p = payload(m);
            let event = p["event_id"].as_str().expect("event_id");
            assert_eq!(&p, by_event[event], "the payload is republished unchanged");
            pairs.push((event.to_string(), attr(m, "sluice_id").to_string()));
        }
        pairs.sort();
        let mut want = expected.remove(&k).unwrap_or_default();
        want.sort();
        assert_eq!(pairs, want, "shard {k}");
        seen += pairs.len();
    }
    assert_eq!(seen, 12, "every event exactly once over all shards");

    let dead = drain(&conn, &dlq_sub).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = payload(&dead[0]);
    assert_eq!(
        (record["element"].as_str(), record["transform"].as_str()),
        (Some("not json"), Some("ReadEvents"))
    );
    assert!(
        rest_pull(&conn, &main_sub).await.is_empty(),
        "the router acknowledged everything it published"
    );
}
