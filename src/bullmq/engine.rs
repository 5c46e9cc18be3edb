//! The retry engine: runs our Lua script (`core.lua` + `retry.lua`) on a batch of job ids and decodes one
//! [`JobOutcome`] per id; also probes a queue (does it exist, which version wrote it).
//!
//! Guarantees: a batch is one atomic script call; the ledger entries for the jobs it retries
//! are written in that same call, so a crash can never separate a retry from its record.

use std::time::Duration;

use redis::{Script, ScriptInvocation, aio::ConnectionLike};

use super::{QueueKeys, QueueVersion, tls::TlsFailure};
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
    /// The run record's key, where an id run keeps its position (per owner), written in the
    /// same call as each batch; `None`: the position is not recorded.
    pub record: Option<String>,
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
    /// A queue key has a type BullMQ never gives it (or the ledger key holds a job).
    #[error("{0}")]
    IncompatibleQueue(String),
    /// A queue value the retry must parse is invalid (`pc`, `meta.concurrency`,
    /// `meta.opts.maxLenEvents`); the user can fix it in place.
    #[error("{0}")]
    QueueData(String),
    /// Redis could not be reached or answered with an error.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something it never answers.
    #[error("unexpected reply from the retry script: {0}")]
    Protocol(String),
}

/// What fixes an error: time (transient), the user without touching the JobRetry (stalled:
/// a password, an ACL, a corrupt value in Redis), or nothing (permanent: the run fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Transient,
    Stalled,
    Permanent,
}

impl EngineError {
    /// A short, fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            EngineError::IncompatibleQueue(_) => "incompatible_queue",
            EngineError::QueueData(_) => "queue_data",
            EngineError::Redis(e) => classify(e).0,
            EngineError::Protocol(_) => "protocol",
        }
    }

    /// What fixes it.
    pub fn verdict(&self) -> Verdict {
        match self {
            EngineError::IncompatibleQueue(_) | EngineError::Protocol(_) => Verdict::Permanent,
            EngineError::QueueData(_) => Verdict::Stalled,
            EngineError::Redis(e) => classify(e).1,
        }
    }
}

/// Every category [`classify`] gives (metrics declare each at 0).
pub const REDIS_CATEGORIES: [&str; 8] = [
    "connection",
    "tls",
    "auth",
    "permission",
    "unavailable",
    "cross_slot",
    "refused",
    "client",
];

/// Sorts a Redis error by what fixes it. Only trouble that passes by itself (connections,
/// timeouts, a busy, loading or failing-over server, memory pressure) is transient; a TLS
/// handshake that fails (an untrusted certificate, a port without TLS), refused credentials
/// or ACL permissions wait for the user; anything else Redis refuses (a script error, an
/// unknown command, keys in different slots) can never succeed as it is.
pub fn classify(e: &redis::RedisError) -> (&'static str, Verdict) {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    // Before the I/O check: a failed handshake reaches us as an I/O error.
    if TlsFailure::of(e).is_some() {
        return ("tls", Verdict::Stalled);
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return ("connection", Verdict::Transient);
    }
    let code = e.code().unwrap_or("");
    match (e.kind(), code) {
        (K::AuthenticationFailed, _) | (_, "WRONGPASS" | "NOAUTH") => ("auth", Verdict::Stalled),
        (K::Server(S::NoPerm), _) | (_, "NOPERM") => ("permission", Verdict::Stalled),
        (
            K::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly)
            | K::ClusterConnectionNotFound
            | K::MasterNameNotFoundBySentinel
            | K::NoValidReplicasFoundBySentinel,
            _,
        )
        | (_, "BUSY" | "OOM" | "MISCONF" | "NOREPLICAS" | "LOADING") => {
            ("unavailable", Verdict::Transient)
        }
        (K::Server(S::CrossSlot), _) => ("cross_slot", Verdict::Permanent),
        _ if e
            .detail()
            .is_some_and(|d| d.contains("max number of clients")) =>
        {
            ("unavailable", Verdict::Transient)
        }
        (K::Server(S::ResponseError), _)
            if e.detail().is_some_and(|d| {
                d.contains("invalid password") || d.contains("without any password configured")
            }) =>
        {
            ("auth", Verdict::Stalled)
        }
        (K::Server(_) | K::Extension, _) => ("refused", Verdict::Permanent),
        _ => ("client", Verdict::Permanent),
    }
}

/// Runs retries; cheap to clone, holds the loaded script.
#[derive(Clone)]
pub struct RetryEngine {
    script: Script,
}

impl Default for RetryEngine {
    fn default() -> Self {
        Self {
            script: Script::new(concat!(include_str!("core.lua"), include_str!("retry.lua"))),
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

    /// The position an id run of `owner` recorded with its last batch (0 if none).
    pub async fn recorded_position<C: ConnectionLike>(
        &self,
        conn: &mut C,
        record: &str,
        owner: &str,
    ) -> Result<u64, EngineError> {
        let pos: Option<u64> = redis::cmd("HGET")
            .arg(record)
            .arg(format!("ids:{owner}"))
            .query_async(conn)
            .await?;
        Ok(pos.unwrap_or(0))
    }

    /// Retries `ids` in one atomic call and returns one outcome per id, in order; records
    /// `position_after` as the run's position in the same call (see [`BatchRequest::record`]).
    pub async fn retry_batch<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        req: &BatchRequest,
        ids: &[String],
        position_after: u64,
    ) -> Result<Vec<JobOutcome>, EngineError> {
        let inv = invocation(&self.script, keys, req, ids, position_after);
        let replies: Vec<String> = inv.invoke_async(conn).await.map_err(script_error)?;
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

/// An error of one of our scripts: its own refusals (nothing was written) or Redis's.
pub(crate) fn script_error(e: redis::RedisError) -> EngineError {
    let why = |fallback: &str| e.detail().unwrap_or(fallback).trim().to_string();
    match e.code() {
        Some("JOBRETRY") => {
            EngineError::IncompatibleQueue(why("a queue key has an unexpected type"))
        }
        Some("JOBRETRY_DATA") => EngineError::QueueData(why("a queue value is invalid")),
        _ => EngineError::Redis(e),
    }
}

/// A call of one of our scripts with the queue's KEYS 1-11 and the run's ARGV 1-7, as
/// documented in `core.lua`'s header.
pub(crate) fn queue_invocation<'a>(
    script: &'a Script,
    keys: &QueueKeys,
    req: &BatchRequest,
) -> ScriptInvocation<'a> {
    let flag = |b: bool| if b { "1" } else { "0" };
    let (ledger_key, owner) = req
        .ledger
        .clone()
        .unwrap_or_else(|| (keys.ledger("-"), String::new()));
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
        .arg(req.version.script_flags())
        .arg(flag(req.reset_attempts_made))
        .arg(flag(req.reset_attempts_started))
        .arg(flag(req.dry_run))
        .arg(owner)
        .arg(req.ledger_ttl.as_millis().max(1) as u64);
    inv
}

/// The call of a retry script (ours, or a variant under study in `benches/`) with the KEYS
/// and ARGV documented in `retry.lua`'s header.
pub fn invocation<'a>(
    script: &'a Script,
    keys: &QueueKeys,
    req: &BatchRequest,
    ids: &[String],
    position_after: u64,
) -> ScriptInvocation<'a> {
    let mut inv = queue_invocation(script, keys, req);
    match &req.record {
        Some(record) => inv.key(record).arg(position_after),
        None => inv.key(keys.record("-")).arg(""),
    };
    inv.arg(ids);
    inv
}

pub(crate) fn decode(reply: &str) -> Result<JobOutcome, EngineError> {
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
        assert_eq!(decode("Eboom").unwrap(), JobOutcome::Error("boom".into()));
        assert!(decode("7").is_err());
        assert!(decode("").is_err());
    }

    fn server(code: &str, detail: &str) -> redis::RedisError {
        // A reply as Redis sends it, parsed by the client as any server error is.
        let wire = format!("-{code} {detail}\r\n");
        match redis::parse_redis_value(wire.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn only_passing_trouble_is_transient() {
        use Verdict::*;
        let io: redis::RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        // A rediss:// handshake with a certificate no trusted CA signed, as redis returns it.
        let untrusted: redis::RedisError = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )
        .into();
        let cases = [
            (io, "connection", Transient),
            (untrusted, "tls", Stalled),
            (
                server("LOADING", "Redis is loading"),
                "unavailable",
                Transient,
            ),
            (
                server("BUSY", "Redis is busy running a script"),
                "unavailable",
                Transient,
            ),
            (
                server("OOM", "command not allowed"),
                "unavailable",
                Transient,
            ),
            (
                server("READONLY", "You can't write against a read only replica."),
                "unavailable",
                Transient,
            ),
            (
                server("ERR", "max number of clients reached"),
                "unavailable",
                Transient,
            ),
            (
                server("WRONGPASS", "invalid username-password pair"),
                "auth",
                Stalled,
            ),
            (
                server("NOAUTH", "Authentication required."),
                "auth",
                Stalled,
            ),
            (
                server("NOPERM", "this user has no permissions"),
                "permission",
                Stalled,
            ),
            (
                server(
                    "ERR",
                    "AUTH <password> called without any password configured",
                ),
                "auth",
                Stalled,
            ),
            (
                server("ERR", "Error running script (call to f_1): @user_script:9"),
                "refused",
                Permanent,
            ),
            (
                server("ERR", "unknown command 'ZMSCORE'"),
                "refused",
                Permanent,
            ),
            (
                server("CROSSSLOT", "Keys in request don't hash to the same slot"),
                "cross_slot",
                Permanent,
            ),
        ];
        for (err, category, verdict) in cases {
            assert_eq!(classify(&err), (category, verdict), "{err}");
            assert!(
                REDIS_CATEGORIES.contains(&category),
                "{category} not declared"
            );
        }
    }

    #[test]
    fn the_scripts_own_refusals_have_their_verdicts() {
        let data = EngineError::QueueData("pc is abc".into());
        assert_eq!(
            (data.category(), data.verdict()),
            ("queue_data", Verdict::Stalled)
        );
        let types = EngineError::IncompatibleQueue("wait is a string".into());
        assert_eq!(types.verdict(), Verdict::Permanent);
    }
}
