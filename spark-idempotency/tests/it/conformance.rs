//! The store contract, written once and run on every backend.

use std::time::Duration;

use spark_idempotency::{Claim, Fingerprint, IdempotencyError, IdempotencyKey, StoredResponse};

use crate::harness::{Harness, LEASE, TTL, on_every_backend};

fn key(s: &str) -> IdempotencyKey {
    s.parse().unwrap()
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/orders", body.as_bytes())
}

fn acquired(claim: Claim) -> spark_idempotency::Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

on_every_backend!(
    first_claim_acquires_then_replays,
    in_flight_until_lease_expires_then_takeover_fences_old_holder,
    mismatch_on_other_fingerprint,
    non_definitive_outcome_releases_key,
    release_frees_the_key,
    after_ttl_the_key_is_new,
    scopes_are_independent,
    gc_deletes_only_expired_and_stats_count,
    takeover_near_the_ttl_keeps_the_record_for_the_lease,
    gc_with_batch_size_zero_finishes,
);

async fn first_claim_acquires_then_replays(h: Harness) {
    let lease = acquired(h.store.claim("alice", &key("k1"), &fp("a")).await.unwrap());
    assert_eq!(lease.fencing(), 1);
    assert!(!lease.is_takeover());
    let response =
        StoredResponse::new(201, b"{\"order_id\":\"1\"}".to_vec()).with_header("content-type", "application/json");
    h.store.complete(&lease, &response).await.unwrap();
    for _ in 0..3 {
        assert_eq!(h.store.claim("alice", &key("k1"), &fp("a")).await.unwrap(), Claim::Replay(response.clone()));
    }
    // A second completion of the same lease is refused: the outcome is final.
    assert!(matches!(h.store.complete(&lease, &response).await, Err(IdempotencyError::LeaseLost { .. })));
}

async fn in_flight_until_lease_expires_then_takeover_fences_old_holder(h: Harness) {
    let old = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    h.clock.advance(Duration::from_secs(10));
    match h.store.claim("alice", &key("k"), &fp("a")).await.unwrap() {
        Claim::InFlight { retry_after } => assert_eq!(retry_after, LEASE - Duration::from_secs(10)),
        other => panic!("expected InFlight, got {other:?}"),
    }
    h.clock.advance(LEASE);
    let new = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    assert!(new.is_takeover());
    assert_eq!(new.fencing(), 2);
    // The old holder wakes up: its completion and release are refused.
    let late = StoredResponse::new(201, "late");
    assert!(matches!(h.store.complete(&old, &late).await, Err(IdempotencyError::LeaseLost { fencing: 1, .. })));
    assert!(matches!(h.store.release(&old).await, Err(IdempotencyError::LeaseLost { .. })));
    let fresh = StoredResponse::new(201, "fresh");
    h.store.complete(&new, &fresh).await.unwrap();
    assert_eq!(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap(), Claim::Replay(fresh));
}

async fn mismatch_on_other_fingerprint(h: Harness) {
    let lease = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    // In flight and mismatched: mismatch wins, whatever the state.
    assert_eq!(h.store.claim("alice", &key("k"), &fp("b")).await.unwrap(), Claim::Mismatch);
    let other_path = Fingerprint::of_request("POST", "/v1/other", b"a");
    assert_eq!(h.store.claim("alice", &key("k"), &other_path).await.unwrap(), Claim::Mismatch);
    h.store.complete(&lease, &StoredResponse::new(200, "ok")).await.unwrap();
    let other_method = Fingerprint::of_request("PATCH", "/v1/orders", b"a");
    assert_eq!(h.store.claim("alice", &key("k"), &other_method).await.unwrap(), Claim::Mismatch);
    // An expired lease does not let another request take the key over.
    h.clock.advance(LEASE * 2);
    assert_eq!(h.store.claim("alice", &key("k"), &fp("b")).await.unwrap(), Claim::Mismatch);
}

async fn non_definitive_outcome_releases_key(h: Harness) {
    for status in [500, 503, 408, 429] {
        let k = key(&format!("k{status}"));
        let lease = acquired(h.store.claim("alice", &k, &fp("a")).await.unwrap());
        h.store.complete(&lease, &StoredResponse::new(status, "try again")).await.unwrap();
        let again = acquired(h.store.claim("alice", &k, &fp("a")).await.unwrap());
        assert_eq!((again.fencing(), again.is_takeover()), (2, true), "{status}");
        // The first attempt can no longer complete.
        assert!(h.store.complete(&lease, &StoredResponse::new(201, "late")).await.is_err());
    }
    for status in [200, 201, 302, 400, 404, 422] {
        let k = key(&format!("k{status}"));
        let lease = acquired(h.store.claim("alice", &k, &fp("a")).await.unwrap());
        h.store.complete(&lease, &StoredResponse::new(status, "final")).await.unwrap();
        assert!(matches!(h.store.claim("alice", &k, &fp("a")).await.unwrap(), Claim::Replay(r) if r.status == status));
    }
}

async fn release_frees_the_key(h: Harness) {
    let first = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    h.store.release(&first).await.unwrap();
    // Releasing twice is refused: the lease is over.
    assert!(matches!(h.store.release(&first).await, Err(IdempotencyError::LeaseLost { .. })));
    // The key stays bound to its request until the TTL.
    assert_eq!(h.store.claim("alice", &key("k"), &fp("b")).await.unwrap(), Claim::Mismatch);
    let second = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    assert_eq!(second.fencing(), 2);
    // The released holder cannot complete the retry's record (no ABA).
    assert!(h.store.complete(&first, &StoredResponse::new(201, "stale")).await.is_err());
    h.store.complete(&second, &StoredResponse::new(201, "ok")).await.unwrap();
}

async fn after_ttl_the_key_is_new(h: Harness) {
    let lease = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    h.store.complete(&lease, &StoredResponse::new(201, "first")).await.unwrap();
    h.clock.advance(TTL - Duration::from_millis(1));
    assert!(matches!(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap(), Claim::Replay(_)));
    h.clock.advance(Duration::from_millis(1));
    // Past the TTL even another body is a new request, and fencing keeps
    // growing so the first holder stays fenced.
    let again = acquired(h.store.claim("alice", &key("k"), &fp("b")).await.unwrap());
    assert!(!again.is_takeover());
    assert!(again.fencing() > lease.fencing());
    h.store.complete(&again, &StoredResponse::new(201, "second")).await.unwrap();
    assert_eq!(
        h.store.claim("alice", &key("k"), &fp("b")).await.unwrap(),
        Claim::Replay(StoredResponse::new(201, "second"))
    );
}

async fn scopes_are_independent(h: Harness) {
    let a = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    let b = acquired(h.store.claim("bob", &key("k"), &fp("b")).await.unwrap());
    h.store.complete(&a, &StoredResponse::new(201, "alice")).await.unwrap();
    h.store.complete(&b, &StoredResponse::new(201, "bob")).await.unwrap();
    assert_eq!(
        h.store.claim("alice", &key("k"), &fp("a")).await.unwrap(),
        Claim::Replay(StoredResponse::new(201, "alice"))
    );
    assert_eq!(
        h.store.claim("bob", &key("k"), &fp("b")).await.unwrap(),
        Claim::Replay(StoredResponse::new(201, "bob"))
    );
}

async fn gc_deletes_only_expired_and_stats_count(h: Harness) {
    for i in 0..25 {
        let lease = acquired(h.store.claim("alice", &key(&format!("old{i}")), &fp("a")).await.unwrap());
        h.store.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
    }
    h.clock.advance(TTL);
    for i in 0..7 {
        let lease = acquired(h.store.claim("alice", &key(&format!("new{i}")), &fp("a")).await.unwrap());
        if i % 2 == 0 {
            h.store.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
        }
    }
    let stats = h.store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.expired_awaiting_gc, stats.in_flight), (7, 25, 3));
    assert_eq!(stats.oldest_record_age_ms, Some(i64::try_from(TTL.as_millis()).unwrap()));
    assert_eq!(h.store.gc(10).await.unwrap(), 25);
    assert_eq!(h.store.gc(10).await.unwrap(), 0);
    let stats = h.store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.expired_awaiting_gc), (7, 0));
    assert!(matches!(h.store.claim("alice", &key("new0"), &fp("a")).await.unwrap(), Claim::Replay(_)));
}

/// A record taken over shortly before its TTL ends must live as long as the
/// new lease: GC in between would delete a record whose holder is still
/// running, its completion would be refused, and the next retry would run
/// the work again.
async fn takeover_near_the_ttl_keeps_the_record_for_the_lease(h: Harness) {
    let first = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    // The first holder crashed; a retry arrives 10 s before the TTL ends,
    // with less time left on the TTL than one lease.
    h.clock.advance(TTL - Duration::from_secs(10));
    let second = acquired(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap());
    assert!(second.is_takeover());
    assert!(second.fencing() > first.fencing());
    // Past the TTL, within the new lease: GC must leave the record alone.
    h.clock.advance(Duration::from_secs(20));
    assert_eq!(h.store.gc(100).await.unwrap(), 0);
    let stats = h.store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.in_flight, stats.expired_awaiting_gc), (1, 1, 0));
    // A duplicate still hears "in flight", not "acquired".
    assert!(matches!(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap(), Claim::InFlight { .. }));
    // The holder completes, and the outcome is replayed.
    let done = StoredResponse::new(201, "done");
    h.store.complete(&second, &done).await.unwrap();
    assert_eq!(h.store.claim("alice", &key("k"), &fp("a")).await.unwrap(), Claim::Replay(done));
}

/// `gc(0)` is `gc(1)`: it deletes everything expired and returns.
async fn gc_with_batch_size_zero_finishes(h: Harness) {
    for i in 0..3 {
        let lease = acquired(h.store.claim("alice", &key(&format!("k{i}")), &fp("a")).await.unwrap());
        h.store.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
    }
    h.clock.advance(TTL);
    // GC runs on a thread of its own, so that a GC that never returns fails
    // the test (after a generous minute) instead of hanging the run.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (store, runtime) = (h.store.clone(), tokio::runtime::Handle::current());
    std::thread::spawn(move || done_tx.send(runtime.block_on(store.gc(0))));
    let deleted = tokio::time::timeout(Duration::from_secs(60), done_rx).await.expect("gc(0) did not return");
    assert_eq!(deleted.unwrap().unwrap(), 3);
    assert_eq!(h.store.stats().await.unwrap().expired_awaiting_gc, 0);
}
