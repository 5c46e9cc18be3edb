//! GitOps health for Flux: kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, what Flux's
//! kustomize-controller and helm-controller compute health with) reading JobRetry objects the
//! operator really produced, through the real API server and Redis. kstatus has no rules for
//! our kind, so it reads the generic signs we write: `observedGeneration`, and the
//! `Reconciling`, `Stalled` and `Ready` conditions.
//!
//! The kstatus program is `tests/platform/kstatus/main.go`, built and cached by
//! `tests/platform/build-kstatus.sh` (its path in `JOBRETRY_TEST_KSTATUS`, else built here).

mod support;

use serde_json::json;
use support::*;

#[test]
fn kstatus_reads_every_phase_the_operator_writes() {
    let ns = TestNs::new("e2e-flux");
    let queue = ns.name.as_str();
    let ids = failed_ids(&ns, 24);

    // Before the operator has seen it: the schema's default status says generation 0.
    // (`done`, as one_of_each_phase applies it again, unchanged, once the operator runs.)
    assert!(ns.apply_jr(&jobretry("done", queue, &[&ids[0]])).ok);
    let (s, m) = kstatus(&ns.get("done"));
    assert_eq!(s, "InProgress", "a JobRetry nobody has run yet: {m}");
    assert!(m.contains("observed generation is 0"), "{m}");

    let op = Operator::start(&ns, &[]);
    let running = one_of_each_phase(&ns, queue, &ids);
    let cases = [
        ("done", "Succeeded", "Current", "Resource is Ready"),
        (
            "partial",
            "PartiallySucceeded",
            "Current",
            "Resource is Ready",
        ),
        (
            "unknown",
            "Failed",
            "Failed",
            "BullMQ 4.0.0 is not supported",
        ),
        ("nosecret", "Pending", "Failed", "Secret"),
        // Suspended is not done: Ready is False, which kstatus reads as InProgress.
        (
            "paused",
            "Suspended",
            "InProgress",
            "suspended after processed 0 of",
        ),
    ];
    for (name, phase, status, message) in cases {
        let jr = ns.get(name);
        assert_eq!(status_of(&jr).phase_str(), phase, "{name}: {jr}");
        let (s, m) = kstatus(&jr);
        assert_eq!(s, status, "{name}: {m}");
        assert!(m.contains(message), "{name}: {m:?} lacks {message:?}");
    }
    let (s, m) = kstatus(&running);
    assert_eq!(s, "InProgress", "{m}");
    assert!(m.contains("processed"), "{m}");

    // Resumed while the operator is down: the new generation is not observed yet, so
    // kstatus says InProgress, not the Current an old Ready condition would suggest.
    drop(op);
    let patched = ns.kubectl(&[
        "patch",
        "jobretry",
        "paused",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    assert!(patched.ok, "{}", patched.stderr);
    let resumed = ns.get("paused");
    assert_eq!(resumed["metadata"]["generation"], json!(2));
    let (s, m) = kstatus(&resumed);
    assert_eq!(s, "InProgress", "{m}");
    assert!(m.contains("latest observed generation is 1"), "{m}");
}
