//! The census of JobRetry objects for the metrics: how many are in each phase, and how many
//! wait stalled for a user; pure, from the controller's cache.

use std::sync::Arc;

use strum::IntoEnumIterator;

use crate::{
    crd::{JobRetry, JobRetryStatus, Phase, Reason, condition},
    metrics::RunCounts,
};

/// Counts `objects` by phase (no status yet: Pending), the unfinished stalled ones, and the
/// unfinished ones held by an error, by reason.
pub fn count_runs(objects: &[Arc<JobRetry>]) -> RunCounts {
    let mut counts = RunCounts {
        by_phase: Phase::iter().map(|p| (p.as_str(), 0)).collect(),
        stalled: 0,
        held: Reason::iter()
            .filter(|r| r.holds())
            .map(|r| (r, 0))
            .collect(),
    };
    for o in objects {
        let status = o.status.as_ref();
        let phase = Phase::of(status).unwrap_or(Phase::Pending);
        *counts.by_phase.entry(phase.as_str()).or_default() += 1;
        let (Some(status), false) = (status, phase.is_terminal()) else {
            continue;
        };
        if is_true(status, condition::STALLED).is_some() {
            counts.stalled += 1;
        }
        let held = is_true(status, condition::STALLED)
            .or_else(|| is_true(status, condition::RECONCILING))
            .and_then(|reason| reason.parse::<Reason>().ok())
            .filter(|r| r.holds());
        if let Some(reason) = held {
            *counts.held.entry(reason).or_default() += 1;
        }
    }
    counts
}

/// The reason of condition `type_` if it is True.
fn is_true<'a>(status: &'a JobRetryStatus, type_: &str) -> Option<&'a str> {
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    (c.status == "True").then_some(c.reason.as_str())
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
        assert_eq!(c.held[&Reason::SecretInvalid], 1, "held runs by reason");
        assert_eq!(c.held[&Reason::QueueBusy], 0, "every reason is listed");
    }
}
