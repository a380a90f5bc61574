//! The behaviour every [`StateStore`] backend must show, as one test function per property
//! group. Shared by the backends' unit tests and by emulator-tests/state_stores.rs (which
//! includes this file with `#[path]`), so memory, embedded, Redis and Postgres are held to the same checks.
//! Everything written is deleted again: runs against shared servers leave nothing behind.

use super::{StateConfig, StateStore, open};

fn puts(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

async fn load(store: &dyn StateStore, namespace: &str) -> Vec<(String, String)> {
    store
        .load(namespace)
        .await
        .unwrap_or_else(|e| panic!("load {namespace} from {}: {e}", store.describe()))
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).expect("the test wrote UTF-8")))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sorted loads, overwrites, deletes, put-then-delete in one batch, isolated namespaces, empty
/// commits and a 5 MB value. Uses the namespaces `{prefix}a`, `{prefix}aa`, `{prefix}b`.
pub async fn check(store: &dyn StateStore, prefix: &str) {
    let (a, aa, b) = (
        format!("{prefix}a"),
        format!("{prefix}aa"),
        format!("{prefix}b"),
    );
    assert_eq!(load(store, &a).await, vec![], "a new namespace is empty");

    let unordered = [
        ("b", "2"),
        ("10", "x"),
        ("a", "1"),
        ("é", "e"),
        ("B", "B"),
        ("9", "9"),
    ];
    store.commit(&a, puts(&unordered), vec![]).await.unwrap();
    let loaded: Vec<String> = load(store, &a).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(loaded, keys(&["10", "9", "B", "a", "b", "é"]), "byte order");

    // Puts then deletes: a repeated put keeps the last value, a put-and-deleted key is gone,
    // deleting a missing key is fine, an empty value is a value.
    store
        .commit(
            &a,
            puts(&[("a", "old"), ("a", "new"), ("empty", ""), ("gone", "x")]),
            keys(&["b", "missing", "gone", "10", "9", "B", "é"]),
        )
        .await
        .unwrap();
    assert_eq!(load(store, &a).await, pairs(&[("a", "new"), ("empty", "")]));

    store
        .commit(&aa, puts(&[("a", "in aa")]), vec![])
        .await
        .unwrap();
    store
        .commit(&b, puts(&[("a", "in b")]), vec![])
        .await
        .unwrap();
    assert_eq!(load(store, &a).await, pairs(&[("a", "new"), ("empty", "")]));
    assert_eq!(load(store, &aa).await, pairs(&[("a", "in aa")]));
    assert_eq!(load(store, &b).await, pairs(&[("a", "in b")]));

    store.commit(&a, vec![], vec![]).await.unwrap();
    assert_eq!(
        load(store, &a).await.len(),
        2,
        "an empty commit changes nothing"
    );

    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    store
        .commit(&b, vec![("big".into(), big.clone())], vec![])
        .await
        .unwrap();
    let got = store.load(&b).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0, "big");
    assert!(got[1].1 == big, "the 5 MB value comes back intact");

    store
        .commit(&a, vec![], keys(&["a", "empty"]))
        .await
        .unwrap();
    store.commit(&aa, vec![], keys(&["a"])).await.unwrap();
    store.commit(&b, vec![], keys(&["a", "big"])).await.unwrap();
    for ns in [&a, &aa, &b] {
        assert_eq!(load(store, ns).await, vec![], "{ns} cleaned up");
    }
}

/// [`check`], then a batch of puts and a delete committed together, seen whole by a store
/// opened anew from the same config after the first one is dropped.
pub async fn check_durable(config: &StateConfig, prefix: &str) {
    let ns = format!("{prefix}durable");
    {
        let store = open(config).await.unwrap();
        check(&*store, prefix).await;
        store
            .commit(&ns, puts(&[("keep", "1"), ("drop", "2")]), vec![])
            .await
            .unwrap();
        store
            .commit(&ns, puts(&[("new", "3")]), keys(&["drop"]))
            .await
            .unwrap();
    }
    let store = open(config).await.unwrap();
    assert_eq!(
        load(&*store, &ns).await,
        pairs(&[("keep", "1"), ("new", "3")]),
        "{} after reopening",
        store.describe()
    );
    store
        .commit(&ns, vec![], keys(&["keep", "new"]))
        .await
        .unwrap();
    assert_eq!(load(&*store, &ns).await, vec![]);
}
