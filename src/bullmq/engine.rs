//! The retry engine: runs our Lua script (`retry.lua`) on a batch of job ids and decodes one
//! [`JobOutcome`] per id; also probes a queue (does it exist, which version wrote it).
//!
//! Guarantees: a batch is one atomic script call; the ledger entries for the jobs it retries
//! are written in that same call, so a crash can never separate a retry from its record.

use std::time::Duration;

use redis::{Script, ScriptInvocation, aio::ConnectionLike};

use super::{QueueKeys, QueueVersion};
use crate::crd::SourceState;

/// What happened to one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Moved back to wait / prioritized / paused (BullMQ code 1).
    Retried,
    /// Dry run: would have been retried.
    WouldRetry,
    /// The job hash does not exist (BullMQ code -1).
    NotFound,
    /// The job is not in the source state (BullMQ code -3).
    NotInState,
    /// The run key's ledger already holds this job; `owner` is the tag of the run that wrote it.
    AlreadyProcessed { owner: String },
    /// Not retried because the queue's BullMQ version is unknown and versions disagree.
    Skipped(String),
    /// Redis refused this job's retry; nothing was changed for it.
    Error(String),
}

/// The parameters of a run that apply to each of its batches.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    pub state: SourceState,
    pub version: QueueVersion,
    pub reset_attempts_made: bool,
    pub reset_attempts_started: bool,
    pub dry_run: bool,
    /// Ledger key and owner tag; `None` disables the ledger.
    pub ledger: Option<(String, String)>,
    pub ledger_ttl: Duration,
}

/// What a queue looks like from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProbe {
    /// Any of the queue's meta hash or state set exist.
    pub exists: bool,
    /// The raw `meta.version` ("bullmq:6.7.0"), if any.
    pub meta_version: Option<String>,
}

/// Errors of a whole batch: nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A queue key has a type BullMQ never gives it.
    #[error("{0}")]
    IncompatibleQueue(String),
    /// Redis could not be reached or answered with an error.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something it never answers.
    #[error("unexpected reply from the retry script: {0}")]
    Protocol(String),
}

/// Runs retries; cheap to clone, holds the loaded script.
#[derive(Clone)]
pub struct RetryEngine {
    script: Script,
}

impl Default for RetryEngine {
    fn default() -> Self {
        Self {
            script: Script::new(include_str!("retry.lua")),
        }
    }
}

impl RetryEngine {
    /// Checks whether the queue exists and reads the version it recorded.
    pub async fn probe<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        state: SourceState,
    ) -> Result<QueueProbe, EngineError> {
        let meta = keys.key("meta");
        let (version, meta_exists, state_exists): (Option<String>, bool, bool) = redis::pipe()
            .hget(&meta, "version")
            .exists(&meta)
            .exists(keys.key(state.as_str()))
            .query_async(conn)
            .await?;
        Ok(QueueProbe {
            exists: meta_exists || state_exists,
            meta_version: version,
        })
    }

    /// Retries `ids` in one atomic call and returns one outcome per id, in order.
    pub async fn retry_batch<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        req: &BatchRequest,
        ids: &[String],
    ) -> Result<Vec<JobOutcome>, EngineError> {
        let inv = invocation(&self.script, keys, req, ids);
        let replies: Vec<String> = match inv.invoke_async(conn).await {
            Ok(r) => r,
            // The script's own refusal: "JOBRETRY <why>" (nothing was written).
            Err(e) if e.code() == Some("JOBRETRY") => {
                let why = e.detail().unwrap_or("a queue key has an unexpected type");
                return Err(EngineError::IncompatibleQueue(why.trim().to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        if replies.len() != ids.len() {
            return Err(EngineError::Protocol(format!(
                "{} replies for {} ids",
                replies.len(),
                ids.len()
            )));
        }
        replies.iter().map(|r| decode(r)).collect()
    }
}

/// The call of a retry script (ours, or a variant under study in `benches/`) with the KEYS
/// and ARGV documented in `retry.lua`'s header.
pub fn invocation<'a>(
    script: &'a Script,
    keys: &QueueKeys,
    req: &BatchRequest,
    ids: &[String],
) -> ScriptInvocation<'a> {
    let flag = |b: bool| if b { "1" } else { "0" };
    let (ledger_key, owner) = req
        .ledger
        .clone()
        .unwrap_or_else(|| (keys.key("jobretry:ledger:-"), String::new()));
    let mut inv = script.prepare_invoke();
    inv.key(keys.base());
    for suffix in [
        "events",
        req.state.as_str(),
        "wait",
        "paused",
        "meta",
        "active",
        "marker",
        "prioritized",
        "pc",
    ] {
        inv.key(keys.key(suffix));
    }
    inv.key(ledger_key)
        .arg(req.state.as_str())
        .arg(req.version.family.as_arg())
        .arg(req.version.features)
        .arg(flag(req.reset_attempts_made))
        .arg(flag(req.reset_attempts_started))
        .arg(flag(req.dry_run))
        .arg(owner)
        .arg(req.ledger_ttl.as_millis().max(1) as u64)
        .arg(ids);
    inv
}

fn decode(reply: &str) -> Result<JobOutcome, EngineError> {
    let (head, rest) = reply.split_at(reply.len().min(1));
    Ok(match (head, rest) {
        ("1", "") => JobOutcome::Retried,
        ("W", "") => JobOutcome::WouldRetry,
        ("-", "1") => JobOutcome::NotFound,
        ("-", "3") => JobOutcome::NotInState,
        ("L", value) => JobOutcome::AlreadyProcessed {
            owner: value
                .split_once('@')
                .map(|(_, o)| o)
                .unwrap_or("")
                .to_string(),
        },
        ("S", msg) => JobOutcome::Skipped(msg.to_string()),
        ("E", msg) => JobOutcome::Error(msg.to_string()),
        _ => return Err(EngineError::Protocol(reply.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_script_reply() {
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
        assert_eq!(decode("Sx y").unwrap(), JobOutcome::Skipped("x y".into()));
        assert_eq!(decode("Eboom").unwrap(), JobOutcome::Error("boom".into()));
        assert!(decode("7").is_err());
        assert!(decode("").is_err());
    }
}
