//! BullMQ key names of one queue (`<prefix>:<queue>:<suffix>`) and of our run ledger.
//!
//! Guarantees: every key built here shares the queue's hash slot when the prefix or the
//! queue name carries a `{hash tag}`, as BullMQ requires on Redis Cluster.

/// The key names of one BullMQ queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    base: String,
}

impl QueueKeys {
    /// Keys of queue `name` under `prefix` (BullMQ's default prefix is `bull`).
    pub fn new(prefix: &str, name: &str) -> Self {
        Self {
            base: format!("{prefix}:{name}:"),
        }
    }

    /// `P:Q:` — the base that job keys are built from.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `P:Q:<suffix>`, e.g. `wait`, `meta`, `failed`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    /// The job hash `P:Q:<id>`.
    pub fn job(&self, id: &str) -> String {
        self.key(id)
    }

    /// The exactly-once ledger of `run_key`: `P:Q:jobretry:ledger:run:<runKey>`. It lives
    /// under the queue's base so it shares the queue's hash slot and the ACL key pattern a
    /// user grants for the queue (`~P:Q:*`). Its id part has at least four ':'-separated
    /// parts, which BullMQ's custom-id rule refuses (`Job.validateOptions`: an id containing
    /// ':' must split into exactly three parts, the shape of scheduler job ids), so no job
    /// added by a current client has this key. Releases before that rule accepted any
    /// non-integer id: for those, the retry script also refuses a ledger key that holds a job.
    pub fn ledger(&self, run_key: &str) -> String {
        self.key(&format!("jobretry:ledger:run:{run_key}"))
    }

    /// The record of a selector run of `run_key` (its cursor and counters, written by the
    /// same script call as its retries): `P:Q:jobretry:record:run:<runKey>`.
    pub fn record(&self, run_key: &str) -> String {
        self.key(&format!("jobretry:record:run:{run_key}"))
    }

    /// A policy's per-job retry counts of one period (`period`: a number the caller counts
    /// periods by): `P:Q:jobretry:policy:<policy uid>:retries:<period>`, in the queue's hash
    /// slot like the ledger.
    pub fn policy_retries(&self, policy: &str, period: i64) -> String {
        self.key(&format!("jobretry:policy:{policy}:retries:{period}"))
    }

    /// The lock that lets one selector run at a time work on the queue's `state`:
    /// `P:Q:jobretry:lock:state:<state>`.
    pub fn lock(&self, state: &str) -> String {
        self.key(&format!("jobretry:lock:state:{state}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_bullmq_key_names() {
        let k = QueueKeys::new("bull", "payments");
        assert_eq!(k.base(), "bull:payments:");
        assert_eq!(k.key("wait"), "bull:payments:wait");
        assert_eq!(k.job("1042"), "bull:payments:1042");
        assert_eq!(k.ledger("ns/a"), "bull:payments:jobretry:ledger:run:ns/a");
    }

    #[test]
    fn no_job_id_a_current_bullmq_accepts_names_a_ledger() {
        // BullMQ's rule: a custom id with ':' must have exactly three parts.
        let k = QueueKeys::new("bull", "q");
        for run_key in ["ns/name", "x", "a:b", ":"] {
            let id = k
                .ledger(run_key)
                .strip_prefix(k.base())
                .unwrap()
                .to_string();
            assert!(id.split(':').count() >= 4, "{id}");
        }
    }

    #[test]
    fn hash_tagged_prefix_keeps_every_key_in_the_tag() {
        let k = QueueKeys::new("{bull}", "q");
        for key in [k.key("meta"), k.job("7"), k.ledger("x/y")] {
            assert!(key.starts_with("{bull}:q:"), "{key}");
        }
    }
}
