//! The census of JobRetry objects for the metrics: how many are in each phase, and how many
//! wait stalled for a user; pure, from the controller's cache.

use std::sync::Arc;

use crate::{
    crd::{JobRetry, condition, phase},
    metrics::RunCounts,
};

/// Every phase, so each series exists even at 0.
const PHASES: [&str; 6] = [
    phase::PENDING,
    phase::RUNNING,
    phase::SUSPENDED,
    phase::SUCCEEDED,
    phase::PARTIALLY_SUCCEEDED,
    phase::FAILED,
];

/// Counts `objects` by phase (no status yet: Pending) and the unfinished stalled ones.
pub fn count_runs(objects: &[Arc<JobRetry>]) -> RunCounts {
    let mut counts = RunCounts {
        by_phase: PHASES.iter().map(|p| (*p, 0)).collect(),
        stalled: 0,
    };
    for o in objects {
        let status = o.status.as_ref();
        let current = status.and_then(|s| s.phase.as_deref());
        let known = PHASES
            .iter()
            .find(|p| Some(**p) == current)
            .unwrap_or(&phase::PENDING);
        *counts.by_phase.entry(known).or_default() += 1;
        let stalled = status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == condition::STALLED && c.status == "True")
        });
        if stalled && !phase::is_terminal(known) {
            counts.stalled += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(status: serde_json::Value) -> Arc<JobRetry> {
        let mut o = json!({
            "apiVersion": "jobretry.io/v1alpha1", "kind": "JobRetry",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"queue": {"name": "q"}, "connection": {"secretRef": {"name": "s"}}, "jobIds": ["1"]}
        });
        if !status.is_null() {
            o["status"] = status;
        }
        Arc::new(serde_json::from_value(o).unwrap())
    }

    fn stalled(phase: &str) -> serde_json::Value {
        json!({"phase": phase, "conditions": [{"type": "Stalled", "status": "True",
            "reason": "SecretInvalid", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    }

    #[test]
    fn counts_by_phase_and_unfinished_stalled_runs() {
        let c = count_runs(&[
            object(serde_json::Value::Null),
            object(json!({"phase": "Running"})),
            object(json!({"phase": "Running"})),
            object(stalled("Pending")),
            object(stalled("Failed")),
        ]);
        assert_eq!(c.by_phase["Pending"], 2, "no status yet counts as Pending");
        assert_eq!(c.by_phase["Running"], 2);
        assert_eq!(c.by_phase["Failed"], 1);
        assert_eq!(c.by_phase["Succeeded"], 0, "every phase is listed");
        assert_eq!(c.by_phase.len(), 6);
        assert_eq!(c.stalled, 1, "a failed run is over, not stalled");
    }
}
