//! Why a run cannot go on, typed, each with a static category (logs, metrics), the condition
//! reason it shows as, and what fixes it.

use crate::{bullmq::Verdict, crd::reason};

/// Why a run cannot go on, by what fixes it (see [`RunError::verdict`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The spec asks for something this version cannot plan.
    #[error("{0}")]
    SelectorUnsupported(String),
    /// The connection Secret or its key is missing or unusable.
    #[error("{0}")]
    SecretInvalid(String),
    /// The API server forbids the operator to read the connection Secret (RBAC).
    #[error("{0}")]
    SecretForbidden(String),
    /// Redis cannot be reached or is busy now.
    #[error("{0}")]
    RedisUnavailable(String),
    /// Redis refused the credentials or an ACL permission.
    #[error("{0}")]
    RedisAccessDenied(String),
    /// Redis refused the connection otherwise; nothing of the queue was touched yet, so the
    /// run waits for the Secret or the server to be fixed.
    #[error("{0}")]
    RedisConnectionRefused(String),
    /// Redis refused the queue's work in a way that cannot succeed as it is.
    #[error("{0}")]
    RedisRefused(String),
    /// A value of the queue that the retry must parse is invalid.
    #[error("{0}")]
    QueueDataInvalid(String),
    /// The queue does not exist or its keys are not BullMQ's.
    #[error("{0}")]
    IncompatibleQueue(String),
    /// Neither the spec nor the queue gives a supported BullMQ version.
    #[error("{0}")]
    VersionUnknown(String),
    /// A spec option that the queue's BullMQ release does not have.
    #[error("{0}")]
    IncompatibleOptions(String),
    /// Another selector run holds the queue and state; this one waits for it.
    #[error("{0}")]
    QueueBusy(String),
    /// The run's record in Redis is missing or behind its status: the run stops rather than
    /// retry jobs again or report a success it cannot vouch for.
    #[error("{0}")]
    RunStateLost(String),
}

impl RunError {
    /// A short, fixed label for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            RunError::SelectorUnsupported(_) => "selector_unsupported",
            RunError::SecretInvalid(_) => "secret_invalid",
            RunError::SecretForbidden(_) => "secret_forbidden",
            RunError::RedisUnavailable(_) => "redis_unavailable",
            RunError::RedisAccessDenied(_) => "redis_access_denied",
            RunError::RedisConnectionRefused(_) | RunError::RedisRefused(_) => "redis_refused",
            RunError::QueueDataInvalid(_) => "queue_data_invalid",
            RunError::IncompatibleQueue(_) => "incompatible_queue",
            RunError::VersionUnknown(_) => "version_unknown",
            RunError::IncompatibleOptions(_) => "incompatible_options",
            RunError::QueueBusy(_) => "queue_busy",
            RunError::RunStateLost(_) => "run_state_lost",
        }
    }

    /// The condition reason it shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            RunError::SelectorUnsupported(_) => reason::SELECTOR_UNSUPPORTED,
            RunError::SecretInvalid(_) => reason::SECRET_INVALID,
            RunError::SecretForbidden(_) => reason::SECRET_FORBIDDEN,
            RunError::RedisUnavailable(_) => reason::REDIS_UNAVAILABLE,
            RunError::RedisAccessDenied(_) => reason::REDIS_ACCESS_DENIED,
            RunError::RedisConnectionRefused(_) | RunError::RedisRefused(_) => {
                reason::REDIS_REFUSED
            }
            RunError::QueueDataInvalid(_) => reason::QUEUE_DATA_INVALID,
            RunError::IncompatibleQueue(_) => reason::INCOMPATIBLE_QUEUE,
            RunError::VersionUnknown(_) => reason::VERSION_UNKNOWN,
            RunError::IncompatibleOptions(_) => reason::INCOMPATIBLE_OPTIONS,
            RunError::QueueBusy(_) => reason::QUEUE_BUSY,
            RunError::RunStateLost(_) => reason::RUN_STATE_LOST,
        }
    }

    /// What fixes it: time (transient), the user outside the JobRetry (stalled), or nothing
    /// (permanent: the run fails).
    pub fn verdict(&self) -> Verdict {
        match self {
            RunError::RedisUnavailable(_) | RunError::QueueBusy(_) => Verdict::Transient,
            RunError::SecretInvalid(_)
            | RunError::SecretForbidden(_)
            | RunError::RedisAccessDenied(_)
            | RunError::RedisConnectionRefused(_)
            | RunError::QueueDataInvalid(_) => Verdict::Stalled,
            RunError::SelectorUnsupported(_)
            | RunError::RedisRefused(_)
            | RunError::IncompatibleQueue(_)
            | RunError::VersionUnknown(_)
            | RunError::IncompatibleOptions(_)
            | RunError::RunStateLost(_) => Verdict::Permanent,
        }
    }
}
