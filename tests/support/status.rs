//! A JobRetry's status read into the crate's typed `JobRetryStatus`, and its conditions.

use std::collections::BTreeMap;

use jobretry_operator::crd::{JobRetryStatus, policy::JobRetryPolicyStatus};
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

impl StatusExt for JobRetryPolicyStatus {
    fn condition(&self, t: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }
    fn phase_str(&self) -> &str {
        ""
    }
}

impl TestNs {
    /// The JobRetry's status, typed.
    pub fn status(&self, jr: &str) -> JobRetryStatus {
        status_of(&self.get(jr))
    }

    /// The JobRetryPolicy's status, typed (the default before the operator wrote one).
    pub fn policy_status(&self, name: &str) -> JobRetryPolicyStatus {
        let out = self.kubectl(&["get", "jobretrypolicy", name, "-o", "json"]);
        assert!(out.ok, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        match &v["status"] {
            Value::Null => JobRetryPolicyStatus::default(),
            s => serde_json::from_value(s.clone()).unwrap_or_else(|e| {
                panic!("status does not read as JobRetryPolicyStatus ({e}): {s}")
            }),
        }
    }

    /// The names of the JobRetries a policy created (by its label), sorted.
    pub fn runs_of(&self, policy: &str) -> Vec<String> {
        let label = format!("jobretry.io/policy={policy}");
        let out = self.kubectl(&["get", "jobretries", "-l", &label, "-o", "name"]);
        assert!(out.ok, "{}", out.stderr);
        let mut names: Vec<String> = (out.stdout.lines())
            .map(|l| l.trim_start_matches("jobretry.jobretry.io/").to_string())
            .collect();
        names.sort();
        names
    }
}

/// Exact counts per result, as `status.counts` holds them: `counts([("Retried", 2)])`.
pub fn counts<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect()
}
