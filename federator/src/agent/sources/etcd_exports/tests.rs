//! Tests of the etcd export source: the state kept between events, and the watcher against
//! a real etcd (skipped when no etcd binary is installed).

use std::time::Instant;

use serde_json::json;

use super::test_etcd::{TestEtcd, available, wait_for};
use super::*;
use crate::service::ServiceKey;

const TD: &str = "a.example";
const PREFIX: &str = "/federator/exports/";

fn document(name: &str) -> String {
    json!({
        "ports": [{"port": 80}],
        "endpoints": [{"address": "127.0.0.1"}],
        "identities": [format!("spiffe://a.example/ns/shop/sa/{name}")]
    })
    .to_string()
}

fn names(set: &ExportSet) -> Vec<String> {
    set.exports.keys().map(|k: &ServiceKey| k.to_string()).collect()
}

fn locations(set: &ExportSet) -> Vec<String> {
    set.problems.iter().map(|p| p.location.clone()).collect()
}

// === without etcd ===

#[test]
fn prefix_ends_follow_etcd() {
    assert_eq!(prefix_end(b"/a/"), b"/a0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
}

#[test]
fn backoff_grows_with_jitter_up_to_a_ceiling() {
    for _ in 0..100 {
        let first = backoff(1);
        assert!(first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE, "{first:?}");
        let later = backoff(1_000);
        assert!(later >= BACKOFF_MAX / 2 && later <= BACKOFF_MAX, "{later:?}");
    }
    assert!(backoff(u32::MAX) <= BACKOFF_MAX);
}

#[test]
fn the_state_follows_listings_changes_and_outages() {
    let mut state = ExportsState::new(vec!["127.0.0.1:1".into()], PREFIX.into(), TD.into());
    let first = state.set();
    assert!(first.exports.is_empty());
    assert_eq!(first.problems[0].location, PREFIX);
    assert_eq!(first.problems[0].message, "not listed yet");

    state.apply(RangeEvent::Listed(vec![
        (format!("{PREFIX}shop/cart"), document("cart").into_bytes()),
        (format!("{PREFIX}shop/bad"), b"{".to_vec()),
        (format!("{PREFIX}nokey"), document("x").into_bytes()),
    ]));
    let set = state.set();
    assert_eq!(names(&set), ["shop/cart"]);
    assert_eq!(locations(&set), [format!("{PREFIX}nokey"), format!("{PREFIX}shop/bad")]);

    state.apply(RangeEvent::Changed(vec![
        Change::Put(format!("{PREFIX}shop/pay"), document("pay").into_bytes()),
        Change::Delete(format!("{PREFIX}shop/bad")),
        Change::Put(format!("{PREFIX}shop/cart"), b"[]".to_vec()),
    ]));
    let set = state.set();
    assert_eq!(names(&set), ["shop/pay"]);
    assert_eq!(locations(&set), [format!("{PREFIX}nokey"), format!("{PREFIX}shop/cart")]);

    state.apply(RangeEvent::Unreachable("connection refused".into()));
    let set = state.set();
    assert_eq!(names(&set), ["shop/pay"], "kept while unreachable");
    assert_eq!(set.problems[0].location, PREFIX);
    assert!(set.problems[0].message.contains("connection refused"), "{set:?}");
    assert!(set.problems[0].message.contains("keeping the exports last listed"), "{set:?}");

    state.apply(RangeEvent::Listed(vec![(
        format!("{PREFIX}shop/cart"),
        document("cart").into_bytes(),
    )]));
    let set = state.set();
    assert_eq!(names(&set), ["shop/cart"], "a listing replaces everything");
    assert!(set.problems.is_empty(), "{set:?}");
}

// === against etcd ===

#[tokio::test]
async fn documents_are_listed_then_followed() {
    if !available() {
        return;
    }
    let etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    client.put(format!("{PREFIX}shop/cart"), document("cart"), None).await.expect("put");
    client.put(format!("{PREFIX}shop/bad"), "not json", None).await.expect("put");
    client.put("/federator/exportsx/shop/cart", document("cart"), None).await.expect("put");
    client.put("/federator/other", "x", None).await.expect("put");

    // The prefix without its slash means the same.
    let mut rx = watch_etcd_exports(
        vec![etcd.url()],
        EtcdAuth::default(),
        "/federator/exports".into(),
        TD.into(),
    )
    .await;
    {
        let first = rx.borrow_and_update();
        assert_eq!(names(&first), ["shop/cart"], "{first:?}");
        assert_eq!(locations(&first), [format!("{PREFIX}shop/bad")]);
        assert!(first.problems[0].message.starts_with("body: not well-formed JSON"));
    }

    client.put(format!("{PREFIX}shop/pay"), document("pay"), None).await.expect("put");
    wait_for(&mut rx, 10, "pay", |s| names(s) == ["shop/cart", "shop/pay"]).await;

    client.put(format!("{PREFIX}shop/bad"), document("bad"), None).await.expect("put");
    let set = wait_for(&mut rx, 10, "bad fixed", |s| s.exports.len() == 3).await;
    assert!(set.problems.is_empty(), "{set:?}");

    client.put(format!("{PREFIX}shop/cart"), "{\"ports\": 1}", None).await.expect("put");
    let set = wait_for(&mut rx, 10, "cart broken", |s| s.exports.len() == 2).await;
    assert_eq!(locations(&set), [format!("{PREFIX}shop/cart")]);
    assert!(set.problems[0].message.starts_with("ports: invalid type"), "{set:?}");

    client.delete(format!("{PREFIX}shop/cart"), None).await.expect("delete");
    let set = wait_for(&mut rx, 10, "cart gone", |s| s.problems.is_empty()).await;
    assert_eq!(names(&set), ["shop/bad", "shop/pay"]);

    // Several changes in one transaction arrive as one response.
    let txn = etcd_client::Txn::new().and_then(vec![
        etcd_client::TxnOp::delete(format!("{PREFIX}shop/pay"), None),
        etcd_client::TxnOp::put(format!("{PREFIX}web/front"), document("front"), None),
    ]);
    client.txn(txn).await.expect("txn");
    wait_for(&mut rx, 10, "txn", |s| names(s) == ["shop/bad", "web/front"]).await;
}

#[tokio::test]
async fn a_large_prefix_is_listed_in_pages() {
    if !available() {
        return;
    }
    let etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    let count = usize::try_from(PAGE_SIZE).expect("small") * 2 + 7;
    for i in 0..count {
        client.put(format!("{PREFIX}ns/svc-{i:03}"), document("x"), None).await.expect("put");
    }
    let rx =
        watch_etcd_exports(vec![etcd.url()], EtcdAuth::default(), PREFIX.into(), TD.into()).await;
    let set = rx.borrow().clone();
    assert_eq!(set.exports.len(), count, "{:?}", set.problems);
    assert!(set.problems.is_empty());
}

#[tokio::test]
async fn an_outage_keeps_the_exports_and_a_restart_resumes() {
    if !available() {
        return;
    }
    let mut etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    client.put(format!("{PREFIX}shop/cart"), document("cart"), None).await.expect("put");
    let mut rx =
        watch_etcd_exports(vec![etcd.url()], EtcdAuth::default(), PREFIX.into(), TD.into()).await;
    assert_eq!(names(&rx.borrow_and_update()), ["shop/cart"]);

    etcd.kill();
    let set = wait_for(&mut rx, 30, "an outage", |s| !s.problems.is_empty()).await;
    assert_eq!(names(&set), ["shop/cart"], "kept");
    assert_eq!(locations(&set), [PREFIX]);
    assert!(set.problems[0].message.contains("keeping the exports last listed"), "{set:?}");

    etcd.restart().await;
    let mut client = etcd.client().await;
    client.put(format!("{PREFIX}shop/pay"), document("pay"), None).await.expect("put");
    let set = wait_for(&mut rx, 60, "recovery", |s| {
        s.problems.is_empty() && names(s) == ["shop/cart", "shop/pay"]
    })
    .await;
    assert!(set.problems.is_empty());
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_problem_from_the_start() {
    let port = crate::net::free_local_port().expect("port");
    let started = Instant::now();
    let rx = watch_etcd_exports(
        vec![format!("127.0.0.1:{port}")],
        EtcdAuth::default(),
        PREFIX.into(),
        TD.into(),
    )
    .await;
    assert!(started.elapsed() <= FIRST_LISTING_WAIT + Duration::from_secs(1));
    let set = rx.borrow().clone();
    assert!(set.exports.is_empty());
    assert_eq!(locations(&set), [PREFIX]);
    assert!(set.problems[0].message.contains("not listed yet"), "{set:?}");
}

#[tokio::test]
async fn the_task_ends_when_every_receiver_is_dropped() {
    if !available() {
        return;
    }
    let etcd = TestEtcd::start().await;
    let (rx, task) = spawn_watch(vec![etcd.url()], EtcdAuth::default(), PREFIX.into(), TD.into());
    let mut other = rx.clone();
    drop(rx);
    wait_for(&mut other, 10, "a listing", |s| s.problems.is_empty()).await;
    assert!(!task.is_finished());
    drop(other);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends").expect("no panic");
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_ends_for_a_new_listing() {
    if !available() {
        return;
    }
    let etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    for i in 0..5 {
        client
            .put(format!("{PREFIX}shop/cart"), document(&format!("c{i}")), None)
            .await
            .expect("put");
    }
    let revision = client.get("x", None).await.expect("get").header().expect("header").revision();
    client.compact(revision, None).await.expect("compact");
    let range = Range {
        endpoints: vec![etcd.url()],
        auth: EtcdAuth::default(),
        key: PREFIX.as_bytes().to_vec(),
        range_end: Some(prefix_end(PREFIX.as_bytes())),
    };
    let mut events = Vec::new();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        watch_from(&client, &range, 2, &mut 5, &mut |event| events.push(event)),
    )
    .await
    .expect("ends");
    assert!(matches!(ended, Ended::Compacted(r) if r == revision), "{ended:?}");
    assert!(events.is_empty());
}
