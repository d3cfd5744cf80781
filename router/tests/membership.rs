//! Membership against the real Redis (127.0.0.1:6379, or TANDEM_TEST_REDIS_URL): leases, the agreed
//! ring version, lease expiry, draining, release.

use std::time::Duration;

use proto::ShardId;
use router::membership::{Lease, MemberInfo, Membership};

fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into())
}

fn info(id: &str, weight: &str) -> MemberInfo {
    MemberInfo {
        id: ShardId::parse(id).expect("valid id"),
        link: "127.0.0.1:1".into(),
        admin: "127.0.0.1:2".into(),
        weight: weight.into(),
        started_ms: 0,
        lease_ms: 400,
    }
}

#[tokio::test]
async fn processes_agree_on_a_versioned_ring_and_expired_leases_leave_it() {
    let cluster = format!("test-{}", uuid::Uuid::now_v7());
    let a = Membership::connect(&redis_url(), &cluster)
        .await
        .expect("Redis must run on 127.0.0.1:6379 (or set TANDEM_TEST_REDIS_URL)");
    let b = Membership::connect(&redis_url(), &cluster)
        .await
        .expect("redis");
    let lease = Duration::from_millis(400);
    let long = Duration::from_secs(30);

    // First registration: no lease was held.
    assert_eq!(
        a.renew(&info("s1", "1"), "t1", long).await.expect("renew"),
        Lease::Taken
    );
    assert_eq!(
        a.renew(&info("s2", "2"), "t2", long).await.expect("renew"),
        Lease::Taken
    );
    assert_eq!(
        a.renew(&info("s3", "1"), "t3", lease).await.expect("renew"),
        Lease::Taken
    );
    // Renewing with the same token: still held.
    assert_eq!(
        a.renew(&info("s1", "1"), "t1", long).await.expect("renew"),
        Lease::Held
    );
    // A second process with the same id cannot take a live lease.
    assert_eq!(
        b.renew(&info("s1", "1"), "other", long)
            .await
            .expect("renew"),
        Lease::Conflict
    );

    let va = a.sync().await.expect("sync");
    let vb = b.sync().await.expect("sync");
    assert_eq!(va.ring, vb.ring, "two processes compute the same ring");
    assert_eq!(va.ring.members().len(), 3);
    assert_eq!(va.ring.members()[1].weight, 2.0);
    // Nothing changed: same version.
    assert_eq!(
        b.sync().await.expect("sync").ring.version(),
        va.ring.version()
    );

    // s3 stops renewing: after its lease it leaves the ring, under a newer version.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = a.sync().await.expect("sync");
    assert_eq!(v.ring.members().len(), 2);
    assert!(v.ring.version() > va.ring.version());
    assert!(v.info(&ShardId::parse("s3").expect("id")).is_none());
    // A process whose lease lapsed learns it on its next renewal.
    assert_eq!(
        a.renew(&info("s3", "1"), "t3", long).await.expect("renew"),
        Lease::Taken
    );

    // Draining keeps the member registered but out of the ring.
    let s2 = ShardId::parse("s2").expect("id");
    a.set_draining(&s2, true).await.expect("drain");
    let v2 = b.sync().await.expect("sync");
    assert!(!v2.ring.contains(&s2));
    assert!(v2.info(&s2).is_some());
    assert_eq!(v2.draining, vec![s2.clone()]);

    // Release (a clean exit) removes the member and its drain mark; a wrong token cannot.
    assert!(!a.release(&s2, "not-the-token").await.expect("release"));
    assert!(a.release(&s2, "t2").await.expect("release"));
    let v3 = a.sync().await.expect("sync");
    assert!(v3.info(&s2).is_none());
    assert!(v3.draining.is_empty());
    // s2 was already out of the ring (draining): the ring, and its version, stay.
    assert_eq!(v3.ring, v2.ring);
    assert!(a.lease_ttl_ms(&s2).await.expect("ttl").is_none());
}
