//! The controller's one error model: [`RunError`], why a run cannot go on (it becomes a
//! condition, by the [`Reason`] it shows as and what fixes it), and [`Error`], a reconcile
//! that failed against the Kubernetes API (retried by `error_policy`). Each wraps typed
//! sources; categories and reasons are derived enums, never hand-kept lists.

use crate::{
    bullmq::{self, Category, Verdict, VersionError},
    crd::{Reason, SourceState},
    error::quoted,
};

pub use super::secret::SecretError;
pub use crate::error::{ErrorCategory, SecretCategory};

/// A reconcile that failed and escaped to `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something the API server always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Kube(_) => ErrorCategory::Kube,
            Error::MissingObjectKey(_) => ErrorCategory::Object,
        }
    }

    /// Whether retrying later may succeed without a change to the object.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kube(_))
    }
}

/// A queue whose keys are not in Redis.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "queue {} with prefix {} not found in Redis (neither {meta_key} nor {state_key} exists); check spec.queue.name and spec.queue.prefix",
    quoted(name),
    quoted(prefix)
)]
pub struct QueueNotFound {
    pub name: String,
    pub prefix: String,
    pub meta_key: String,
    pub state_key: String,
}

/// A run whose record in Redis is missing or behind its status: what the status says, what
/// Redis has, and how many processed jobs the record no longer covers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the run's state in Redis is lost: its status says {status_says}, but Redis has {redis_has}; the Secret now points at other data, or Redis lost acknowledged writes ({uncovered} processed jobs are not covered by the record). The run stops and will not retry anything again; check the Secret and Redis, then create a new JobRetry"
)]
pub struct LostState {
    pub status_says: String,
    pub redis_has: String,
    pub uncovered: u64,
}

/// Why a run cannot go on, by what fixes it (see [`RunError::verdict`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec asks for something this version cannot plan.
    #[error("exactly one of spec.jobIds and spec.selector must be set")]
    SelectorUnsupported,
    /// The connection Secret cannot be read or used.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A connection could not be opened; nothing of the queue was touched yet, so whatever
    /// is not transient waits for the Secret, the ACL or the server to be fixed.
    #[error(transparent)]
    Connect(bullmq::Error),
    /// A call on the queue failed (the Redis layer's messages name no secret).
    #[error(transparent)]
    Redis(bullmq::Error),
    /// The queue does not exist.
    #[error(transparent)]
    QueueNotFound(QueueNotFound),
    /// Neither the spec nor the queue gives a supported BullMQ version.
    #[error(transparent)]
    Version(VersionError),
    /// A spec option that the queue's BullMQ release does not have.
    #[error("{0}")]
    IncompatibleOptions(String),
    /// Another selector run holds the queue and state; this one waits for it.
    #[error(
        "another selector run ({holder}) is retrying {} jobs of this queue; this one starts when it ends",
        state.as_str()
    )]
    QueueBusy { holder: String, state: SourceState },
    /// A Sentinel failover since the connection opened: the run reconnects rather than
    /// write to the old master.
    #[error("the Sentinel's master moved from {was} to {now}; reconnecting to the new master")]
    MasterMoved { was: String, now: String },
    /// The run's record in Redis is missing or behind its status: the run stops rather than
    /// retry jobs again or report a success it cannot vouch for.
    #[error(transparent)]
    Lost(LostState),
}

impl RunError {
    /// The condition reason it shows as.
    pub fn reason(&self) -> Reason {
        self.judged().0
    }

    /// What fixes it: time (transient), the user outside the JobRetry (stalled), or nothing
    /// (permanent: the run fails).
    pub fn verdict(&self) -> Verdict {
        self.judged().1
    }

    fn judged(&self) -> (Reason, Verdict) {
        use {Reason as R, Verdict as V};
        match self {
            RunError::SelectorUnsupported => (R::SelectorUnsupported, V::Permanent),
            RunError::Secret(SecretError::Forbidden(_)) => (R::SecretForbidden, V::Stalled),
            RunError::Secret(SecretError::Invalid { .. }) => (R::SecretInvalid, V::Stalled),
            RunError::Connect(e) => match e.verdict() {
                V::Transient => (R::RedisUnavailable, V::Transient),
                _ => (refused(e.category()), V::Stalled),
            },
            RunError::Redis(e) => judge_call(e),
            RunError::QueueNotFound(_) => (R::IncompatibleQueue, V::Permanent),
            RunError::Version(VersionError::Unknown) => (R::VersionUnknown, V::Permanent),
            RunError::Version(_) => (R::IncompatibleQueue, V::Permanent),
            RunError::IncompatibleOptions(_) => (R::IncompatibleOptions, V::Permanent),
            RunError::QueueBusy { .. } => (R::QueueBusy, V::Transient),
            RunError::MasterMoved { .. } => (R::RedisUnavailable, V::Transient),
            RunError::Lost(_) => (R::RunStateLost, V::Permanent),
        }
    }
}

/// The reason of a refusal that waits for the user: credentials and ACLs, or the rest.
fn refused(category: Category) -> Reason {
    match category {
        Category::Auth | Category::Permission => Reason::RedisAccessDenied,
        _ => Reason::RedisRefused,
    }
}

/// What a failed call on the queue means, by what fixes it.
fn judge_call(e: &bullmq::Error) -> (Reason, Verdict) {
    use {Reason as R, Verdict as V};
    match (e, e.verdict()) {
        (_, V::Transient) => (R::RedisUnavailable, V::Transient),
        (bullmq::Error::IncompatibleQueue(_), _) => (R::IncompatibleQueue, V::Permanent),
        (bullmq::Error::QueueData(_), _) => (R::QueueDataInvalid, V::Stalled),
        (_, V::Stalled) if e.is_redis() => (refused(e.category()), V::Stalled),
        _ => (R::RedisRefused, V::Permanent),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bullmq::Redactor;

    /// A reply as Redis sends it, parsed by the client as any server error is.
    pub(crate) fn server(code: &str, detail: &str) -> redis::RedisError {
        let wire = format!("-{code} {detail}\r\n");
        match redis::parse_redis_value(wire.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    /// A connection that failed with `e`.
    pub(crate) fn connect(e: redis::RedisError) -> RunError {
        RunError::Connect(bullmq::Error::connect(e, &Redactor::default()))
    }

    /// A connection Redis refused (transient).
    pub(crate) fn refused_io() -> redis::RedisError {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into()
    }

    #[test]
    fn each_error_shows_its_reason_and_verdict() {
        use {Reason as R, Verdict as V};
        let call = RunError::Redis;
        let untrusted: redis::RedisError = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )
        .into();
        let lost = LostState {
            status_says: "a".into(),
            redis_has: "b".into(),
            uncovered: 3,
        };
        let table = [
            (
                RunError::SelectorUnsupported,
                R::SelectorUnsupported,
                V::Permanent,
            ),
            (
                SecretError::Forbidden("f".into()).into(),
                R::SecretForbidden,
                V::Stalled,
            ),
            (connect(refused_io()), R::RedisUnavailable, V::Transient),
            (
                connect(server("WRONGPASS", "invalid username-password pair")),
                R::RedisAccessDenied,
                V::Stalled,
            ),
            (
                connect(server("NOPERM", "this user has no permissions")),
                R::RedisAccessDenied,
                V::Stalled,
            ),
            (connect(untrusted), R::RedisRefused, V::Stalled),
            (
                call(bullmq::Error::QueueData("pc".into())),
                R::QueueDataInvalid,
                V::Stalled,
            ),
            (
                call(bullmq::Error::IncompatibleQueue("wait".into())),
                R::IncompatibleQueue,
                V::Permanent,
            ),
            (
                call(bullmq::Error::Protocol("?".into())),
                R::RedisRefused,
                V::Permanent,
            ),
            (
                RunError::Version(VersionError::Unknown),
                R::VersionUnknown,
                V::Permanent,
            ),
            (
                RunError::QueueBusy {
                    holder: "ns/a".into(),
                    state: SourceState::Failed,
                },
                R::QueueBusy,
                V::Transient,
            ),
            (RunError::Lost(lost), R::RunStateLost, V::Permanent),
        ];
        for (e, reason, verdict) in table {
            assert_eq!((e.reason(), e.verdict()), (reason, verdict), "{e}");
        }
    }

    #[test]
    fn a_lost_state_says_what_differs_and_what_to_do() {
        let m = RunError::Lost(LostState {
            status_says: "300 jobs were processed".into(),
            redis_has: "no record of it".into(),
            uncovered: 300,
        })
        .to_string();
        assert!(
            m.contains("300 processed jobs are not covered") && m.contains("Secret"),
            "{m}"
        );
    }
}
