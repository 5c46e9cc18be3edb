//! Which BullMQ retry behaviour a queue needs: parses `spec.queue.bullmqVersion` (a Node
//! version such as "5.81.5", or the Python client's as "python:3.4.4") or else the queue's
//! `meta.version` ("bullmq:6.7.0") into a [`Behaviour`]: the set of release-bound features
//! of `Job.retry` that our script reproduces.
//!
//! The whole version map lives here, in two tables read from the published packages
//! (`npm pack bullmq@X`, `pip download bullmq==X`): [`NODE_BOUNDARIES`] and
//! [`PYTHON_RELEASES`]. Guarantees: only BullMQ 5.x and 6.x (Python 2.x and 3.x) are
//! supported; anything else, and a queue whose version cannot be known, is refused with a
//! message saying how to fix it, never guessed.

use std::fmt;

use crate::error::quoted;

/// A semantic version `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver(pub u32, pub u32, pub u32);

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Semver {
    /// Parses "6.7.0" (a leading "v" and a "-pre"/"+build" suffix are tolerated).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Semver(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }
}

/// A behaviour of BullMQ's `Job.retry` (the `reprocessJob` script) that changed at a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// The wake-up marker (`ZADD marker 0 "0"` unless paused or maxed), `XADD MAXLEN ~` on the
    /// events stream, and the `opts.maxLenEvents` default written into meta.
    MarkerAndMaxLen,
    /// Global concurrency: a queue with `LLEN active >= meta.concurrency` is "maxed" (no marker).
    GlobalConcurrency,
    /// A retried flow child is put back into its parent's `dependencies`.
    ParentUpdate,
    /// `Job.retry` takes `resetAttemptsMade` / `resetAttemptsStarted`.
    ResetOptions,
    /// The parent's `:failed` record is a hash (`HDEL`); before, `ZREM` on it failed with
    /// WRONGTYPE, half-way. We always follow the fixed form (the one deliberate divergence).
    ParentFailedHashFix,
    /// A paused queue's retried jobs go to `wait`; before, to the `paused` list.
    NoPausedList,
    /// A job whose priority is not 0 goes to `prioritized` (score from the `pc` counter).
    PriorityAware,
}

/// The first Node release of each feature, read from the npm tarballs' `reprocessJob-*.lua`
/// and `Job.retry`. A feature is present in every release from its boundary on.
pub const NODE_BOUNDARIES: [(Feature, Semver); 7] = [
    (Feature::MarkerAndMaxLen, Semver(5, 1, 7)),
    (Feature::GlobalConcurrency, Semver(5, 9, 0)),
    (Feature::ParentUpdate, Semver(5, 58, 2)),
    (Feature::ResetOptions, Semver(5, 66, 0)),
    (Feature::ParentFailedHashFix, Semver(5, 79, 2)),
    (Feature::NoPausedList, Semver(6, 0, 0)),
    (Feature::PriorityAware, Semver(6, 3, 15)),
];

/// The Python client (PyPI `bullmq`) ships the Node scripts of the commit it was released
/// from. Each row: the first Python release whose `reprocessJob` script and `Job.retry`
/// equal those of the Node release beside it (found by comparing the wheels' scripts with the
/// npm tarballs' scripts). A Python version maps to the last row at or below it.
pub const PYTHON_RELEASES: [(Semver, Semver); 8] = [
    (Semver(2, 0, 0), Semver(5, 0, 0)),
    (Semver(2, 2, 2), Semver(5, 1, 7)),
    (Semver(2, 9, 0), Semver(5, 9, 0)),
    (Semver(2, 15, 1), Semver(5, 58, 2)),
    (Semver(2, 17, 0), Semver(5, 66, 0)),
    (Semver(2, 25, 3), Semver(5, 79, 2)),
    (Semver(3, 0, 0), Semver(6, 0, 0)),
    (Semver(3, 3, 4), Semver(6, 3, 15)),
];

/// Why a queue's version cannot be followed. The message says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Neither `spec.queue.bullmqVersion` nor the queue's `meta.version` gives a version.
    #[error(
        "the queue records no BullMQ version (meta.version is written by BullMQ >= 5.20.0 only; never by the Python client or with skipMetasUpdate), and BullMQ versions retry differently; set spec.queue.bullmqVersion to the version your workers run, e.g. \"5.12.0\", or \"python:3.4.4\" for the Python client"
    )]
    Unknown,
    /// A version outside the supported range.
    #[error("{0}")]
    Unsupported(String),
    /// A version that cannot be read.
    #[error("{0}")]
    Unparseable(String),
}

/// The behaviour to follow for one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueVersion {
    /// The version as given or detected ("6.7.0", "python:3.4.4"), shown in status.
    pub label: String,
    /// The Node release whose behaviour is followed.
    pub node: Semver,
}

impl QueueVersion {
    /// The behaviour of BullMQ (Node) `v`, or why it is not supported.
    pub fn for_node(v: Semver) -> Result<Self, VersionError> {
        if !(Semver(5, 0, 0)..Semver(7, 0, 0)).contains(&v) {
            return Err(VersionError::Unsupported(format!(
                "BullMQ {v} is not supported: jobretry-operator retries queues of BullMQ 5.x and 6.x (Python client 2.x and 3.x)"
            )));
        }
        Ok(Self {
            label: v.to_string(),
            node: v,
        })
    }

    /// The behaviour of the Python client release `v`: that of the Node release it ships.
    pub fn for_python(v: Semver) -> Result<Self, VersionError> {
        let node = PYTHON_RELEASES
            .iter()
            .rev()
            .find(|(py, _)| *py <= v)
            .filter(|_| v.0 <= 3)
            .map(|(_, node)| *node)
            .ok_or_else(|| {
                VersionError::Unsupported(format!(
                    "Python bullmq {v} is not supported: jobretry-operator retries queues of the Python client 2.x and 3.x (BullMQ 5.x and 6.x)"
                ))
            })?;
        Ok(Self {
            label: format!("python:{v}"),
            node,
        })
    }

    /// Resolves the version from the spec override, else from the queue's `meta.version`.
    pub fn resolve(spec: Option<&str>, meta: Option<&str>) -> Result<Self, VersionError> {
        if let Some(text) = spec.map(str::trim).filter(|t| !t.is_empty()) {
            return Self::parse_spec(text);
        }
        let Some(meta) = meta.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(VersionError::Unknown);
        };
        match meta.split_once(':') {
            Some(("bullmq", text)) => match Semver::parse(text) {
                Some(v) => Self::for_node(v),
                None => Err(VersionError::Unparseable(format!(
                    "the queue's meta.version {} cannot be parsed; set spec.queue.bullmqVersion",
                    quoted(meta)
                ))),
            },
            _ => Err(VersionError::Unsupported(format!(
                "the queue's meta.version is {}, not an open-source BullMQ version; set spec.queue.bullmqVersion to the BullMQ version your workers run",
                quoted(meta)
            ))),
        }
    }

    fn parse_spec(text: &str) -> Result<Self, VersionError> {
        let (python, number) = match text.strip_prefix("python:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let v = Semver::parse(number).ok_or_else(|| {
            VersionError::Unparseable(format!(
                "spec.queue.bullmqVersion {} is not a version like \"6.7.0\" or \"python:3.4.4\"",
                quoted(text)
            ))
        })?;
        if python {
            Self::for_python(v)
        } else {
            Self::for_node(v)
        }
    }

    /// Whether the followed release has `feature`.
    pub fn has(&self, feature: Feature) -> bool {
        NODE_BOUNDARIES
            .iter()
            .find(|(f, _)| *f == feature)
            .is_some_and(|(_, first)| self.node >= *first)
    }

    /// The first release (in this version's client family) that has `feature`, for messages.
    pub fn first_with(&self, feature: Feature) -> String {
        let node = NODE_BOUNDARIES
            .iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, v)| *v)
            .unwrap_or(Semver(0, 0, 0));
        if self.label.starts_with("python:")
            && let Some((py, _)) = PYTHON_RELEASES.iter().find(|(_, n)| *n >= node)
        {
            return format!("python:{py}");
        }
        node.to_string()
    }

    /// The script's feature letters (see the header of `retry.lua`).
    pub fn script_flags(&self) -> String {
        [
            (Feature::MarkerAndMaxLen, 'm'),
            (Feature::GlobalConcurrency, 'c'),
            (Feature::ParentUpdate, 'p'),
            (Feature::NoPausedList, 'w'),
            (Feature::PriorityAware, 'r'),
        ]
        .iter()
        .filter(|(f, _)| self.has(*f))
        .map(|(_, c)| *c)
        .collect()
    }

    /// Checks the run's reset options against what this release's `Job.retry` accepts.
    pub fn check_options(
        &self,
        reset_attempts_made: bool,
        reset_attempts_started: bool,
    ) -> Result<(), String> {
        let asked = match (reset_attempts_made, reset_attempts_started) {
            (false, false) => return Ok(()),
            (true, false) => "resetAttemptsMade",
            (false, true) => "resetAttemptsStarted",
            (true, true) => "resetAttemptsMade and resetAttemptsStarted",
        };
        if self.has(Feature::ResetOptions) {
            return Ok(());
        }
        Err(format!(
            "{asked}: BullMQ's Job.retry has no such option before {} and the queue runs {}; remove the flag, or set spec.queue.bullmqVersion if the workers run a newer release",
            self.first_with(Feature::ResetOptions),
            self.label
        ))
    }
}

#[cfg(test)]
mod tests;
