//! Which BullMQ retry behaviour a queue needs: parses `spec.queue.bullmqVersion` or the
//! queue's `meta.version` ("bullmq:6.7.0") into a behaviour [`Family`] plus feature letters
//! for the retry script.
//!
//! Guarantees: only BullMQ 5.x and 6.x are supported; anything else is refused with a
//! message, never guessed. An absent version yields [`Family::Agree`], under which the script
//! retries only jobs that every supported family treats the same.

use std::fmt;

/// A retry behaviour family (see the design notes on BullMQ retry semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BullMQ 5.x: a paused queue's retried jobs go to the `paused` list; priority ignored.
    V5,
    /// BullMQ 6.0.0 – 6.3.15: always `wait`; priority ignored.
    V6,
    /// BullMQ >= 6.3.16: jobs with a priority go to `prioritized`.
    V6Prioritized,
    /// Version unknown: retry only where all families agree.
    Agree,
}

impl Family {
    /// The script's ARGV value for this family.
    pub fn as_arg(self) -> &'static str {
        match self {
            Family::V5 => "5",
            Family::V6 => "6",
            Family::V6Prioritized => "6p",
            Family::Agree => "agree",
        }
    }
}

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

/// The behaviour to follow for one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueVersion {
    /// The version followed, if known.
    pub version: Option<Semver>,
    pub family: Family,
    /// Feature letters for the script: m(arker), x (events MAXLEN), c(oncurrency), p(arent).
    pub features: &'static str,
}

impl QueueVersion {
    /// The behaviour of BullMQ `v`, or an explanation of why it is not supported.
    pub fn for_version(v: Semver) -> Result<Self, String> {
        let (family, features) = match v {
            Semver(6, ..) if v >= Semver(6, 3, 16) => (Family::V6Prioritized, "mxcp"),
            Semver(6, ..) => (Family::V6, "mxcp"),
            Semver(5, ..) if v >= Semver(5, 58, 2) => (Family::V5, "mxcp"),
            Semver(5, ..) if v >= Semver(5, 9, 0) => (Family::V5, "mxc"),
            Semver(5, ..) if v >= Semver(5, 1, 7) => (Family::V5, "mx"),
            Semver(5, ..) => (Family::V5, ""),
            _ => {
                return Err(format!(
                    "BullMQ {v} is not supported: jobretry-operator retries queues of BullMQ 5.x and 6.x"
                ));
            }
        };
        Ok(Self {
            version: Some(v),
            family,
            features,
        })
    }

    /// The behaviour when no version is known: only jobs all families treat alike.
    pub fn unknown() -> Self {
        Self {
            version: None,
            family: Family::Agree,
            features: "mxcp",
        }
    }

    /// Resolves the version from the spec override, else from the queue's `meta.version`.
    pub fn resolve(spec_version: Option<&str>, meta_version: Option<&str>) -> Result<Self, String> {
        if let Some(text) = spec_version.map(str::trim).filter(|t| !t.is_empty()) {
            let v = Semver::parse(text).ok_or_else(|| {
                format!("spec.queue.bullmqVersion {text:?} is not a version like \"6.7.0\"")
            })?;
            return Self::for_version(v);
        }
        let Some(meta) = meta_version.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Self::unknown());
        };
        match meta.split_once(':') {
            Some(("bullmq", text)) => match Semver::parse(text) {
                Some(v) => Self::for_version(v),
                None => Err(format!(
                    "the queue's meta.version {meta:?} cannot be parsed; set spec.queue.bullmqVersion"
                )),
            },
            _ => Err(format!(
                "the queue's meta.version is {meta:?}, not an open-source BullMQ version; set spec.queue.bullmqVersion to the BullMQ version your workers run"
            )),
        }
    }

    /// The version as reported in status ("6.7.0", or "unknown").
    pub fn describe(&self) -> String {
        self.version
            .map_or_else(|| "unknown".to_string(), |v| v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(spec: Option<&str>, meta: Option<&str>) -> Result<Family, String> {
        QueueVersion::resolve(spec, meta).map(|v| v.family)
    }

    #[test]
    fn maps_versions_to_families() {
        assert_eq!(
            family(None, Some("bullmq:6.7.0")),
            Ok(Family::V6Prioritized)
        );
        assert_eq!(
            family(None, Some("bullmq:6.3.16")),
            Ok(Family::V6Prioritized)
        );
        assert_eq!(family(None, Some("bullmq:6.3.15")), Ok(Family::V6));
        assert_eq!(family(None, Some("bullmq:6.0.0")), Ok(Family::V6));
        assert_eq!(family(None, Some("bullmq:5.81.5")), Ok(Family::V5));
        assert_eq!(family(None, None), Ok(Family::Agree));
        assert_eq!(family(Some(""), Some("")), Ok(Family::Agree));
    }

    #[test]
    fn spec_overrides_meta() {
        assert_eq!(family(Some("5.81.5"), Some("bullmq:6.7.0")), Ok(Family::V5));
        assert_eq!(
            family(Some("6.2.0"), Some("bullmq-pro:7.1.0")),
            Ok(Family::V6)
        );
    }

    #[test]
    fn v5_features_follow_the_release_history() {
        let f = |v: &str| QueueVersion::resolve(Some(v), None).unwrap().features;
        assert_eq!(f("5.0.0"), "");
        assert_eq!(f("5.1.7"), "mx");
        assert_eq!(f("5.9.0"), "mxc");
        assert_eq!(f("5.58.2"), "mxcp");
    }

    #[test]
    fn refuses_unsupported_versions_with_a_reason() {
        let err = family(None, Some("bullmq:4.17.0")).unwrap_err();
        assert!(
            err.contains("4.17.0") && err.contains("5.x and 6.x"),
            "{err}"
        );
        assert!(family(None, Some("bullmq:7.0.0")).is_err());
        assert!(
            family(None, Some("bullmq-pro:7.1.0"))
                .unwrap_err()
                .contains("bullmqVersion")
        );
        assert!(
            family(Some("six"), None)
                .unwrap_err()
                .contains("not a version")
        );
    }
}
