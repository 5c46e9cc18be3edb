use std::{sync::Mutex, time::SystemTime};

use axum::http::{Method, Request, Response, StatusCode};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;

use std::time::Instant;

use super::{
    claim::{is_free, stamping},
    gate::SKEW,
    *,
};

const SEC: Duration = Duration::from_secs(1);

/// A Lease held by `holder`, renewed `renewed_secs_ago` before `now`, for `duration` s.
fn lease(holder: Option<&str>, renewed_secs_ago: u64, duration: i32, now: SystemTime) -> Lease {
    let renewed = now - Duration::from_secs(renewed_secs_ago);
    let renewed = k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap();
    Lease {
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                renewed,
            )),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }),
        ..Lease::default()
    }
}

/// The claim of an elected replica whose last accepted Lease write was sent `ago` before `now`.
fn elected(now: Instant, ago: Duration) -> Claim {
    Claim {
        elected: true,
        renewed: Some(now - ago),
        closed: false,
    }
}

#[test]
fn the_holder_may_act_until_the_lease_expires_minus_the_skew_margin() {
    let now = Instant::now();
    let lease = 10 * SEC;
    assert_eq!(remaining(&elected(now, 2 * SEC), now, lease), Some(7 * SEC));
    // Another holder, or none: kube-lease-manager does not report this replica elected.
    let follower = Claim {
        elected: false,
        ..elected(now, Duration::ZERO)
    };
    assert_eq!(remaining(&follower, now, lease), None);
    // Within the margin of expiry, or past it: no longer.
    assert_eq!(remaining(&elected(now, 9 * SEC), now, lease), None);
    assert_eq!(remaining(&elected(now, 30 * SEC), now, lease), None);
    // Elected without an accepted write on record: nothing binds the Lease to it.
    let bare = Claim {
        renewed: None,
        ..elected(now, Duration::ZERO)
    };
    assert_eq!(remaining(&bare, now, lease), None);
}

#[test]
fn the_fence_rule_as_a_table() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    // (last accepted write this long before now, lease duration, may act)
    let rows = [
        (ms(0), 3 * SEC, true),
        (ms(1_999), 3 * SEC, true),
        (ms(2_000), 3 * SEC, false), // exactly lease - margin: closed
        (ms(2_001), 3 * SEC, false),
        (ms(2_500), 5 * SEC, true), // the test's 5 s Lease, renewed every 2 s
        (ms(3_999), 5 * SEC, true),
        (ms(4_000), 5 * SEC, false),
        (ms(7_000), 15 * SEC, true), // the default 15 s Lease, renewed every 7 s
        (ms(13_999), 15 * SEC, true),
        (ms(14_000), 15 * SEC, false),
        (ms(60_000), 15 * SEC, false),
        (ms(0), SEC, false), // a Lease no longer than the margin never opens the fence
        (ms(0), Duration::ZERO, false),
    ];
    for (ago, lease, want) in rows {
        let claim = elected(now, ago);
        assert_eq!(may_act(&claim, now, lease), want, "{ago:?} ago, {lease:?}");
        assert_eq!(
            remaining(&claim, now, lease),
            want.then(|| lease - SKEW - ago),
            "{ago:?} ago, {lease:?}"
        );
    }
    // A write stamped after `now` (read from another thread) counts as fresh, not as more.
    let ahead = Claim {
        renewed: Some(now + 3 * SEC),
        ..elected(now, Duration::ZERO)
    };
    assert_eq!(remaining(&ahead, now, 5 * SEC), Some(4 * SEC));
}

#[test]
fn a_lease_is_free_when_released_or_expired() {
    let now = SystemTime::now();
    assert!(is_free(&Lease::default(), now));
    assert!(is_free(&lease(None, 0, 10, now), now));
    assert!(is_free(&lease(Some(""), 0, 10, now), now));
    assert!(is_free(&lease(Some("b"), 11, 10, now), now));
    assert!(!is_free(&lease(Some("b"), 3, 10, now), now));
}

#[test]
fn the_fence_opens_only_for_an_elected_unexpired_open_holder() {
    let now = Instant::now();
    let lease = 6 * SEC;
    let later = now + 5 * SEC;
    let open = elected(now, Duration::ZERO);
    assert!(may_act(&open, now, lease));
    assert!(!may_act(&open, later, lease), "expired at lease - margin");
    let closed = Claim {
        closed: true,
        ..open
    };
    assert!(!may_act(&closed, now, lease));
    let unelected = Claim {
        elected: false,
        ..open
    };
    assert!(!may_act(&unelected, now, lease));
    let unrenewed = Claim {
        renewed: None,
        ..open
    };
    assert!(!may_act(&unrenewed, now, lease));
}

#[test]
fn renewal_and_polling_fit_inside_the_lease() {
    for d in [3, 4, 5, 15, 60, 300] {
        let s = LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "i".into(),
            duration_seconds: d,
        };
        let renew_every = Duration::from_secs(d - s.grace_seconds());
        // The holder renews, with time to spare for the request, before its fence closes.
        assert!(
            renew_every + s.poll() * 2 < Duration::from_secs(d) - SKEW,
            "duration {d}"
        );
    }
}

#[tokio::test]
async fn a_closed_gate_stays_closed_and_tells_slices_to_pause() {
    let gate = Gate::always_open(Arc::new(Metrics::default()));
    assert!(gate.holds() && !gate.should_pause());
    gate.start_draining();
    assert!(gate.holds() && gate.should_pause());
    gate.close();
    assert!(!gate.holds());
    gate.update(|c| c.elected = true);
    assert!(!gate.holds(), "closing is for good");
}

#[tokio::test]
async fn the_gauge_and_acquired_follow_the_claim() {
    let metrics = Arc::new(Metrics::default());
    let gate = Gate::new(metrics.clone(), 5 * SEC, Claim::default());
    let mut acquired = Box::pin(gate.acquired());
    let leader_gauge = |v: u8| metrics.render().contains(&format!("jobretry_leader {v}"));
    assert!(!gate.holds() && leader_gauge(0));
    // Elected with no accepted write yet: still closed.
    gate.update(|c| c.elected = true);
    assert!(!gate.holds() && leader_gauge(0));
    let nothing = timeout(Duration::from_millis(50), acquired.next()).await;
    assert!(nothing.is_err(), "no lead yet");
    gate.renewed(Instant::now());
    assert!(gate.holds() && leader_gauge(1));
    assert_eq!(acquired.next().await, Some(()));
    // A renewal while leading is no new lead; an older stamp does not move the claim back.
    gate.renewed(Instant::now() - 10 * SEC);
    assert!(gate.holds());
    let again = timeout(Duration::from_millis(50), acquired.next()).await;
    assert!(again.is_err(), "still the same lead");
    gate.close();
    assert!(!gate.holds() && leader_gauge(0));
}

/// A kube client whose API server answers every request with `status` and records nothing.
fn answering(status: StatusCode) -> Client {
    let service = tower::service_fn(move |_: Request<Body>| async move {
        let response = Response::builder()
            .status(status)
            .body(Body::from(Vec::new()));
        Ok::<_, std::convert::Infallible>(response.unwrap())
    });
    Client::new(service, "default")
}

#[tokio::test]
async fn only_patches_the_api_server_accepted_are_stamped() {
    let request = |method: Method| {
        Request::builder()
            .method(method)
            .uri("/apis/coordination.k8s.io/v1/namespaces/n/leases/l")
            .body(Body::from(Vec::new()))
            .unwrap()
    };
    for (status, method, stamped) in [
        (StatusCode::OK, Method::PATCH, true),
        (StatusCode::CREATED, Method::PATCH, true),
        (StatusCode::CONFLICT, Method::PATCH, false),
        (StatusCode::INTERNAL_SERVER_ERROR, Method::PATCH, false),
        (StatusCode::OK, Method::GET, false),
        (StatusCode::OK, Method::POST, false),
    ] {
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let record = stamps.clone();
        let client = stamping(answering(status), move |at| record.lock().unwrap().push(at));
        let before = Instant::now();
        let answer = client.send(request(method.clone())).await.unwrap();
        assert_eq!(answer.status(), status);
        let stamps = stamps.lock().unwrap().clone();
        assert_eq!(stamps.len(), usize::from(stamped), "{method} {status}");
        assert!(
            stamps
                .iter()
                .all(|&at| before <= at && at <= Instant::now())
        );
    }
}
