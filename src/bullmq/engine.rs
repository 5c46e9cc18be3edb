//! The retry engine: runs our Lua script (`core.lua` + `retry.lua`) on a batch of job ids and decodes one
//! [`JobOutcome`] per id; also probes a queue (does it exist, which version wrote it).
//!
//! Guarantees: a batch is one atomic script call; the ledger entries for the jobs it retries
//! are written in that same call, so a crash can never separate a retry from its record.

use redis::Script;

use super::{
    connection::Connection,
    error::Error,
    keys::QueueKeys,
    scripts::{self, BatchRequest, RetryArgs, RunArgs},
};
use crate::crd::SourceState;

/// What happened to one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Moved back to wait / prioritized / paused (BullMQ code 1).
    Retried,
    /// The run's ledger holds this job, written by this same run (its owner tag): the job's
    /// own earlier retry, seen again after a crash.
    RetriedEarlier,
    /// Dry run: would have been retried.
    WouldRetry,
    /// The job hash does not exist (BullMQ code -1).
    NotFound,
    /// The job is not in the source state (BullMQ code -3).
    NotInState,
    /// The run key's ledger holds this job, written by another object with the same run
    /// key; `owner` is that run's tag.
    AlreadyProcessed { owner: String },
    /// Redis refused this job's retry; nothing was changed for it.
    Error(String),
    /// A policy's run: the policy's runs retried the job `maxRetriesPerJob` times already;
    /// not retried, left where it is.
    Parked,
}

/// What a queue looks like from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProbe {
    /// Any of the queue's meta hash or state set exist.
    pub exists: bool,
    /// The raw `meta.version` ("bullmq:6.7.0"), if any.
    pub meta_version: Option<String>,
}

/// Runs retries; cheap to clone, holds the loaded script.
#[derive(Clone)]
pub struct RetryEngine {
    script: Script,
}

impl Default for RetryEngine {
    fn default() -> Self {
        Self {
            script: Script::new(scripts::RETRY_LUA),
        }
    }
}

impl RetryEngine {
    /// Checks whether the queue exists and reads the version it recorded.
    pub async fn probe<C: Connection>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        state: SourceState,
    ) -> Result<QueueProbe, Error> {
        let meta = keys.key("meta");
        let (version, meta_exists, state_exists): (Option<String>, bool, bool) = redis::pipe()
            .hget(&meta, "version")
            .exists(&meta)
            .exists(keys.key(state.as_str()))
            .query_async(conn)
            .await
            .map_err(|e| Error::redis(e, conn.redactor()))?;
        Ok(QueueProbe {
            exists: meta_exists || state_exists,
            meta_version: version,
        })
    }

    /// The position an id run of `owner` recorded with its last batch (0 if none).
    pub async fn recorded_position<C: Connection>(
        &self,
        conn: &mut C,
        record: &str,
        owner: &str,
    ) -> Result<u64, Error> {
        let pos: Option<u64> = redis::cmd("HGET")
            .arg(record)
            .arg(format!("ids:{owner}"))
            .query_async(conn)
            .await
            .map_err(|e| Error::redis(e, conn.redactor()))?;
        Ok(pos.unwrap_or(0))
    }

    /// Retries `ids` in one atomic call and returns one outcome per id, in order; records
    /// `position_after` as the run's position in the same call (see [`BatchRequest::record`]).
    pub async fn retry_batch<C: Connection>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        req: &BatchRequest,
        ids: &[String],
        position_after: u64,
    ) -> Result<Vec<JobOutcome>, Error> {
        let args = RetryArgs {
            run: RunArgs::of(keys, req),
            record: &req.record,
            position_after,
            ids,
        };
        let replies: Vec<String> = (args.call().invocation(&self.script))
            .invoke_async(conn)
            .await
            .map_err(|e| Error::redis(e, conn.redactor()))?;
        if replies.len() != ids.len() {
            return Err(Error::Protocol(format!(
                "{} replies for {} ids",
                replies.len(),
                ids.len()
            )));
        }
        replies
            .iter()
            .map(|r| decode(r, &req.ledger.owner))
            .collect()
    }
}

/// One job's result as the scripts write it; a ledger hit (`L1@<owner>`) is this run's own
/// earlier retry if `own` (the run's owner tag) wrote it.
pub(crate) fn decode(reply: &str, own: &str) -> Result<JobOutcome, Error> {
    let (head, rest) = reply.split_at(reply.len().min(1));
    Ok(match (head, rest) {
        ("1", "") => JobOutcome::Retried,
        ("W", "") => JobOutcome::WouldRetry,
        ("P", "") => JobOutcome::Parked,
        ("-", "1") => JobOutcome::NotFound,
        ("-", "3") => JobOutcome::NotInState,
        ("L", value) => match value.split_once('@').map_or("", |(_, o)| o) {
            owner if owner == own => JobOutcome::RetriedEarlier,
            owner => JobOutcome::AlreadyProcessed {
                owner: owner.to_string(),
            },
        },
        ("E", msg) => JobOutcome::Error(msg.to_string()),
        _ => return Err(Error::Protocol(reply.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_script_reply() {
        let decode = |r| decode(r, "me");
        assert_eq!(decode("1").unwrap(), JobOutcome::Retried);
        assert_eq!(decode("W").unwrap(), JobOutcome::WouldRetry);
        assert_eq!(decode("-1").unwrap(), JobOutcome::NotFound);
        assert_eq!(decode("-3").unwrap(), JobOutcome::NotInState);
        assert_eq!(
            decode("L1@abc").unwrap(),
            JobOutcome::AlreadyProcessed {
                owner: "abc".into()
            }
        );
        assert_eq!(decode("Eboom").unwrap(), JobOutcome::Error("boom".into()));
        assert!(decode("7").is_err());
        assert!(decode("").is_err());
    }

    #[test]
    fn a_ledger_hit_of_this_run_is_its_earlier_retry() {
        assert_eq!(decode("L1@me", "me").unwrap(), JobOutcome::RetriedEarlier);
        assert_eq!(
            decode("L1@me", "them").unwrap(),
            JobOutcome::AlreadyProcessed { owner: "me".into() }
        );
        // An owner that merely starts or ends like ours is another's.
        for other in ["L1@mee", "L1@m", "L1@", "L1"] {
            assert!(
                matches!(
                    decode(other, "me").unwrap(),
                    JobOutcome::AlreadyProcessed { .. }
                ),
                "{other}"
            );
        }
    }
}
