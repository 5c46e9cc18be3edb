//! GitOps health: the chart's Argo CD health check (`charts/jobretry-operator/argocd-health.lua`)
//! run by Debian's `lua5.4` on statuses the operator really produced, one object per phase,
//! through the real API server and Redis.

mod support;

use serde_json::json;
use support::*;

#[test]
fn the_argocd_health_check_reads_every_phase_the_operator_writes() {
    let ns = TestNs::new("e2e-gitops");
    let queue = ns.name.as_str();
    let ids = failed_ids(&ns, 24);
    let _op = Operator::start(&ns, &[]);
    let running = one_of_each_phase(&ns, queue, &ids);
    let cases = [
        (
            "done",
            "Healthy",
            "1 retried, 0 skipped, 0 errors of 1 matched",
        ),
        (
            "partial",
            "Healthy",
            "partially succeeded: 1 retried, 1 skipped",
        ),
        (
            "unknown",
            "Degraded",
            "IncompatibleQueue: BullMQ 4.0.0 is not supported",
        ),
        ("paused", "Suspended", "suspended after 0 of"),
        ("nosecret", "Degraded", "SecretInvalid: Secret"),
    ];
    for (name, status, message) in cases {
        let (s, m) = argocd_health(ns.dir.path(), "argocd-health.lua", &ns.get(name));
        assert_eq!(s, status, "{name}: {m}");
        assert!(m.contains(message), "{name}: {m:?} lacks {message:?}");
    }
    let (s, m) = argocd_health(ns.dir.path(), "argocd-health.lua", &running);
    assert_eq!(s, "Progressing", "{m}");
    assert!(m.contains("processed"), "{m}");
    let fresh = json!({"apiVersion": "jobretry.io/v1alpha1", "kind": "JobRetry", "metadata": {"name": "x"}});
    assert_eq!(
        argocd_health(ns.dir.path(), "argocd-health.lua", &fresh).0,
        "Progressing"
    );
}
