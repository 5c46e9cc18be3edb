//! The one error type of the Redis layer, its category (a fixed label for metrics, logs and
//! conditions) and its verdict (what fixes it).
//!
//! Guarantees: the `Display` of every [`Error`] is free of the Redis URL's secret: an error of
//! a Redis call keeps the text it was given by [`Error::redis`] or [`Error::connect`], which
//! scrub it with the connection's [`Redactor`] when they are made; the script's own refusals,
//! TLS failures and protocol errors carry no text from the URL in the first place.

use std::time::Duration;

use strum::{AsRefStr, EnumIter, IntoStaticStr};

use super::{redact::Redactor, tls::TlsFailure};
use crate::error::quoted;

/// An error of the Redis layer: nothing of the call it came from was written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or answered a command with an error.
    #[error("Redis error: {shown}")]
    Redis {
        #[source]
        source: redis::RedisError,
        /// The error's text, scrubbed of the URL's secret.
        shown: String,
    },
    /// A connection could not be opened.
    #[error("cannot connect to Redis: {shown}")]
    Connect {
        #[source]
        source: redis::RedisError,
        shown: String,
    },
    /// A connection could not be opened in time.
    #[error("cannot connect to Redis: no answer within {}s", .0.as_secs())]
    ConnectTimeout(Duration),
    /// The TLS handshake of a rediss:// connection failed.
    #[error("{shown}")]
    Tls {
        failure: TlsFailure,
        #[source]
        source: redis::RedisError,
        /// The failure's message (what to change), scrubbed of the URL's secret.
        shown: String,
    },
    /// The script's refusal `JOBRETRY`: a queue key has a type BullMQ never gives it (or the
    /// ledger key holds a job).
    #[error("{0}")]
    IncompatibleQueue(String),
    /// The script's refusal `JOBRETRY_DATA`: a queue value the retry must parse is invalid
    /// (`pc`, `meta.concurrency`, `meta.opts.maxLenEvents`); the user can fix it in place.
    #[error("{0}")]
    QueueData(String),
    /// A script answered something it never answers.
    #[error("unexpected reply from the retry script: {0}")]
    Protocol(String),
    /// The Redis URL (from the connection Secret) is unusable.
    #[error(transparent)]
    InvalidUrl(#[from] UrlError),
}

/// Why a Redis URL is refused; the message never quotes the URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the Redis URL is not a valid URL ({0})")]
    Parse(#[from] url::ParseError),
    #[error("the Redis URL has scheme {}; expected redis:// or rediss://", quoted(.0))]
    Scheme(String),
    #[error("the Redis URL has no host")]
    NoHost,
}

/// What fixes an error: time (transient), the user without touching the JobRetry (stalled:
/// a password, an ACL, a corrupt value in Redis), or nothing (permanent: the run fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Transient,
    Stalled,
    Permanent,
}

/// A short, fixed label of an [`Error`] (`as_str`: "connection", "cross_slot", ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, IntoStaticStr, AsRefStr)]
#[strum(serialize_all = "snake_case")]
pub enum Category {
    Connection,
    Tls,
    Auth,
    Permission,
    Unavailable,
    CrossSlot,
    Refused,
    Client,
    IncompatibleQueue,
    QueueData,
    Protocol,
    InvalidUrl,
}

impl Category {
    /// The label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether errors of this category come from Redis or the way to it (the categories of
    /// the Redis-errors metric), rather than from our script's checks or the URL.
    pub fn is_redis(self) -> bool {
        !matches!(
            self,
            Category::IncompatibleQueue
                | Category::QueueData
                | Category::Protocol
                | Category::InvalidUrl
        )
    }
}

impl Error {
    /// An error of a Redis call over a connection that scrubs with `redactor`; the script's
    /// own refusals (`JOBRETRY`, `JOBRETRY_DATA`) become their variants.
    pub fn redis(e: redis::RedisError, redactor: &Redactor) -> Self {
        let why = |fallback: &str| e.detail().unwrap_or(fallback).trim().to_string();
        match e.code() {
            Some("JOBRETRY") => Error::IncompatibleQueue(why("a queue key has an unexpected type")),
            Some("JOBRETRY_DATA") => Error::QueueData(why("a queue value is invalid")),
            _ => Error::Redis {
                shown: redactor.redact(&e.to_string()),
                source: e,
            },
        }
    }

    /// An error of opening a connection (a TLS failure becomes [`Error::Tls`]).
    pub fn connect(e: redis::RedisError, redactor: &Redactor) -> Self {
        match TlsFailure::of(&e) {
            Some(failure) => Error::Tls {
                shown: redactor.redact(&failure.message()),
                failure,
                source: e,
            },
            None => Error::Connect {
                shown: redactor.redact(&e.to_string()),
                source: e,
            },
        }
    }

    /// The error's label.
    pub fn category(&self) -> Category {
        self.classified().0
    }

    /// What fixes it.
    pub fn verdict(&self) -> Verdict {
        self.classified().1
    }

    /// Whether Redis (or the way to it) failed, rather than our checks of what it holds.
    pub fn is_redis(&self) -> bool {
        self.category().is_redis()
    }

    fn classified(&self) -> (Category, Verdict) {
        match self {
            Error::Redis { source, .. } | Error::Connect { source, .. } => classify(source),
            Error::ConnectTimeout(_) => (Category::Connection, Verdict::Transient),
            Error::Tls { .. } => (Category::Tls, Verdict::Stalled),
            Error::IncompatibleQueue(_) => (Category::IncompatibleQueue, Verdict::Permanent),
            Error::QueueData(_) => (Category::QueueData, Verdict::Stalled),
            Error::Protocol(_) => (Category::Protocol, Verdict::Permanent),
            Error::InvalidUrl(_) => (Category::InvalidUrl, Verdict::Stalled),
        }
    }
}

/// Sorts a Redis error by what fixes it. Only trouble that passes by itself (connections,
/// timeouts, a busy, loading or failing-over server, memory pressure) is transient; a TLS
/// handshake that fails (an untrusted certificate, a port without TLS), refused credentials
/// or ACL permissions wait for the user; anything else Redis refuses (a script error, an
/// unknown command, keys in different slots) can never succeed as it is.
pub fn classify(e: &redis::RedisError) -> (Category, Verdict) {
    use Category as C;
    use redis::{ErrorKind as K, ServerErrorKind as S};
    // Before the I/O check: a failed handshake reaches us as an I/O error.
    if TlsFailure::of(e).is_some() {
        return (C::Tls, Verdict::Stalled);
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return (C::Connection, Verdict::Transient);
    }
    let code = e.code().unwrap_or("");
    let detail_has = |phrase: &str| e.detail().is_some_and(|d| d.contains(phrase));
    match (e.kind(), code) {
        (K::AuthenticationFailed, _) | (_, "WRONGPASS" | "NOAUTH") => (C::Auth, Verdict::Stalled),
        (K::Server(S::NoPerm), _) | (_, "NOPERM") => (C::Permission, Verdict::Stalled),
        (
            K::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly)
            | K::ClusterConnectionNotFound
            | K::MasterNameNotFoundBySentinel
            | K::NoValidReplicasFoundBySentinel,
            _,
        )
        | (_, "BUSY" | "OOM" | "MISCONF" | "NOREPLICAS" | "LOADING") => {
            (C::Unavailable, Verdict::Transient)
        }
        (K::Server(S::CrossSlot), _) => (C::CrossSlot, Verdict::Permanent),
        _ if detail_has("max number of clients") => (C::Unavailable, Verdict::Transient),
        (K::Server(S::ResponseError), _)
            if detail_has("invalid password") || detail_has("without any password configured") =>
        {
            (C::Auth, Verdict::Stalled)
        }
        (K::Server(_) | K::Extension, _) => (C::Refused, Verdict::Permanent),
        _ => (C::Client, Verdict::Permanent),
    }
}

#[cfg(test)]
mod tests;
