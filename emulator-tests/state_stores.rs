//! The durable state backends against real servers (Redis at `SLUICE_TEST_REDIS_ADDR`,
//! Postgres at `SLUICE_TEST_PG_ADDR`, database `test`; emulator-tests/run-stores-tests.sh starts
//! private ones). Both run
//! the same contract as the in-process backends (src/state/contract.rs). Every test uses its
//! own namespace prefix and deletes what it wrote. Without the servers these tests fail: they
//! never skip.

#[path = "../src/state/contract.rs"]
mod contract;
mod support;

use sluice::state::{Backend, StateConfig, StateError, StateStore, open};

fn redis_url() -> String {
    support::redis_url()
}

fn postgres_url() -> String {
    support::pg_url()
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test/{test}/{}-{}/", std::process::id(), nanos)
}

fn config(backend: Backend, path: &str) -> StateConfig {
    StateConfig {
        backend,
        path: Some(path.into()),
        ..StateConfig::default()
    }
}

async fn postgres_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("Postgres must be running at SLUICE_TEST_PG_ADDR (emulator-tests/run-stores-tests.sh starts it)");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn redis_keeps_the_contract_across_reopening() {
    contract::check_durable(&config(Backend::Redis, &redis_url()), &unique("redis")).await;
}

#[tokio::test]
async fn postgres_keeps_the_contract_across_reopening() {
    contract::check_durable(&config(Backend::Postgres, &postgres_url()), &unique("pg")).await;
}

#[tokio::test]
async fn jdbc_urls_open_and_describe_hides_the_password() {
    let (pg, rd) = (support::pg_addr(), support::redis_addr());
    let store = open(&config(
        Backend::Postgres,
        &format!("jdbc:postgresql://{pg}/test?user=postgres"),
    ))
    .await
    .unwrap();
    assert_eq!(store.describe(), format!("postgres postgresql://{pg}/test"));
    let store = open(&config(Backend::Redis, &format!("redis://:secret@{rd}/")))
        .await
        .err()
        .expect("the server has no password");
    assert!(!store.to_string().contains("secret"), "{store}");
    let redis = open(&config(Backend::Redis, &redis_url())).await.unwrap();
    assert_eq!(redis.describe(), format!("redis redis://{rd}/"));
}

#[tokio::test]
async fn the_postgres_table_and_redis_hash_hold_what_the_docs_say() {
    let ns = unique("layout");
    let pg = open(&config(Backend::Postgres, &postgres_url()))
        .await
        .unwrap();
    pg.commit(&ns, vec![("k".into(), b"\x00\xff".to_vec())], vec![])
        .await
        .unwrap();
    let client = postgres_client().await;
    let row = client
        .query_one(
            "SELECT key, value FROM sluice_state WHERE namespace = $1",
            &[&ns],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "k");
    assert_eq!(row.get::<_, Vec<u8>>(1), vec![0u8, 0xff]);
    pg.commit(&ns, vec![], vec!["k".into()]).await.unwrap();

    let redis = open(&config(Backend::Redis, &redis_url())).await.unwrap();
    redis
        .commit(&ns, vec![("k".into(), b"v".to_vec())], vec![])
        .await
        .unwrap();
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: Vec<u8> = redis::cmd("HGET")
        .arg(format!("sluice:state:{ns}"))
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, b"v");
    redis.commit(&ns, vec![], vec!["k".into()]).await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("sluice:state:{ns}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "an emptied namespace leaves no hash behind");
}

/// A commit whose second statement fails leaves nothing of the first: Postgres `text` refuses
/// NUL, so the DELETE fails after the upsert ran inside the same transaction.
#[tokio::test]
async fn a_failed_postgres_commit_applies_nothing() {
    let ns = unique("pg-atomic");
    let store = open(&config(Backend::Postgres, &postgres_url()))
        .await
        .unwrap();
    store
        .commit(&ns, vec![("old".into(), b"1".to_vec())], vec![])
        .await
        .unwrap();
    let err = store
        .commit(
            &ns,
            vec![("new".into(), b"2".to_vec()), ("old".into(), b"3".to_vec())],
            vec!["bad\0key".into()],
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    // Refused by the server, after the upsert ran in the same transaction.
    assert!(err.to_string().contains("(SQLSTATE 22021)"), "{err}");
    assert!(
        matches!(
            err,
            StateError::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.load(&ns).await.unwrap(),
        vec![("old".to_string(), b"1".to_vec())]
    );
    store.commit(&ns, vec![], vec!["old".into()]).await.unwrap();
}

/// Redis does not roll back a transaction whose commands fail at EXEC; both commands fail on a
/// key of the wrong type, so nothing is applied and the error says so (not retryable).
#[tokio::test]
async fn a_redis_commit_on_a_foreign_key_fails_without_retry() {
    let ns = unique("redis-wrongtype");
    let key = format!("sluice:state:{ns}");
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = open(&config(Backend::Redis, &redis_url())).await.unwrap();
    let err = store
        .commit(&ns, vec![("k".into(), b"v".to_vec())], vec!["x".into()])
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_servers_are_retryable() {
    let err = open(&config(Backend::Redis, "redis://127.0.0.1:1/"))
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
    let err = open(&config(
        Backend::Postgres,
        "postgres://postgres@127.0.0.1:1/test",
    ))
    .await
    .err()
    .expect("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
}

/// docs/scaling.md: one replica holds a pipeline's lease; another is told who holds it until
/// the holder releases it or it lapses.
async fn leases_admit_one_holder(backend: Backend, path: &str, test: &str) {
    use std::time::Duration;
    let store = open(&config(backend, path)).await.unwrap();
    let name = unique(test);
    let ttl = Duration::from_millis(1500);
    assert_eq!(store.lease(&name, "a", ttl).await.unwrap(), None);
    assert_eq!(store.lease(&name, "a", ttl).await.unwrap(), None, "renewed");
    assert_eq!(
        store.lease(&name, "b", ttl).await.unwrap(),
        Some("a".to_string())
    );
    // Only the holder can release it.
    store.release_lease(&name, "b").await.unwrap();
    assert_eq!(
        store.lease(&name, "b", ttl).await.unwrap(),
        Some("a".to_string())
    );
    store.release_lease(&name, "a").await.unwrap();
    assert_eq!(store.lease(&name, "b", ttl).await.unwrap(), None);
    // Not renewed: it lapses and another replica takes it.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(store.lease(&name, "a", ttl).await.unwrap(), None);
    assert_eq!(
        store.lease(&name, "b", ttl).await.unwrap(),
        Some("a".to_string())
    );
    store.release_lease(&name, "a").await.unwrap();
}

#[tokio::test]
async fn redis_leases_admit_one_holder() {
    leases_admit_one_holder(Backend::Redis, &redis_url(), "redis-lease").await;
}

#[tokio::test]
async fn postgres_leases_admit_one_holder() {
    leases_admit_one_holder(Backend::Postgres, &postgres_url(), "pg-lease").await;
}
