//! Plan step, pure: which job ids a run covers, which slice the next batch takes, and the
//! run key.

use crate::crd::JobRetrySpec;

/// The distinct ids of the run, in order of first appearance, or why the spec cannot be
/// planned yet.
pub fn target_ids(spec: &JobRetrySpec) -> Result<Vec<String>, String> {
    match (&spec.job_ids, &spec.selector) {
        (Some(ids), None) => {
            let mut seen = std::collections::HashSet::new();
            Ok(ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .cloned()
                .collect())
        }
        (None, Some(_)) => Err(
            "spec.selector is not supported yet by this operator version; list spec.jobIds instead"
                .into(),
        ),
        _ => Err("exactly one of spec.jobIds and spec.selector must be set".into()),
    }
}

/// The run key: `spec.runKey`, else `<namespace>/<name>`.
pub fn run_key(spec: &JobRetrySpec, namespace: &str, name: &str) -> String {
    spec.run_key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| format!("{namespace}/{name}"))
}

/// Jobs per batch: the configured size, lowered to the rate limit so that one batch never
/// exceeds a second's allowance.
pub fn batch_size(configured: u64, jobs_per_second: u32) -> usize {
    let limit = if jobs_per_second == 0 {
        configured
    } else {
        configured.min(jobs_per_second.into())
    };
    limit.max(1) as usize
}

/// The next batch after `processed` jobs.
pub fn next_batch(ids: &[String], processed: u64, size: usize) -> &[String] {
    let start = (processed as usize).min(ids.len());
    &ids[start..(start + size).min(ids.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> JobRetrySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const IDS: &str =
        "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['1','2','3']\n";

    #[test]
    fn plans_ids_in_batches() {
        let s = spec(IDS);
        let ids = target_ids(&s).unwrap();
        assert_eq!(next_batch(&ids, 0, 2), ["1", "2"]);
        assert_eq!(next_batch(&ids, 2, 2), ["3"]);
        assert!(next_batch(&ids, 3, 2).is_empty());
        assert!(next_batch(&ids, 9, 2).is_empty());
    }

    #[test]
    fn an_id_listed_twice_is_planned_once() {
        let s = spec(
            "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['7','3','7','1','3']\n",
        );
        assert_eq!(target_ids(&s).unwrap(), ["7", "3", "1"]);
    }

    #[test]
    fn selector_is_reported_unsupported() {
        let s = spec(
            "queue: {name: q}\nconnection: {secretRef: {name: s}}\nselector: {names: ['a*']}\n",
        );
        assert!(target_ids(&s).unwrap_err().contains("not supported yet"));
    }

    #[test]
    fn run_key_defaults_to_namespace_and_name() {
        assert_eq!(
            run_key(&spec(IDS), "payments", "incident"),
            "payments/incident"
        );
        let s = spec(&format!("{IDS}runKey: inc-4711\n"));
        assert_eq!(run_key(&s, "payments", "incident"), "inc-4711");
    }

    #[test]
    fn rate_limit_caps_the_batch() {
        assert_eq!(batch_size(500, 0), 500);
        assert_eq!(batch_size(500, 20), 20);
        assert_eq!(batch_size(500, 2000), 500);
    }
}
