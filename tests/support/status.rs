//! A JobRetry's status read into the crate's typed `JobRetryStatus`, and its conditions.

use std::collections::BTreeMap;

use jobretry_operator::crd::JobRetryStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::Value;

use super::TestNs;

/// The status of a JobRetry read as JSON (`kubectl get -o json`); the default status when
/// it has none yet.
pub fn status_of(jr: &Value) -> JobRetryStatus {
    match &jr["status"] {
        Value::Null => JobRetryStatus::default(),
        s => serde_json::from_value(s.clone())
            .unwrap_or_else(|e| panic!("status does not read as JobRetryStatus ({e}): {s}")),
    }
}

/// What the tests ask of a status.
pub trait StatusExt {
    /// The condition of type `t`, if any.
    fn condition(&self, t: &str) -> Option<&Condition>;
    /// The condition's status ("True", "False", "Unknown"), or "" when absent.
    fn condition_status(&self, t: &str) -> &str {
        self.condition(t).map_or("", |c| c.status.as_str())
    }
    /// The condition's reason, or "" when absent.
    fn condition_reason(&self, t: &str) -> &str {
        self.condition(t).map_or("", |c| c.reason.as_str())
    }
    /// The condition's message, or "" when absent.
    fn condition_message(&self, t: &str) -> &str {
        self.condition(t).map_or("", |c| c.message.as_str())
    }
    /// The phase, or "" before the first.
    fn phase_str(&self) -> &str;
}

impl StatusExt for JobRetryStatus {
    fn condition(&self, t: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }
    fn phase_str(&self) -> &str {
        self.phase.as_deref().unwrap_or("")
    }
}

impl TestNs {
    /// The JobRetry's status, typed.
    pub fn status(&self, jr: &str) -> JobRetryStatus {
        status_of(&self.get(jr))
    }
}

/// Exact counts per result, as `status.counts` holds them: `counts([("Retried", 2)])`.
pub fn counts<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect()
}
