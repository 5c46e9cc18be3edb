//! The process's view of the Kubernetes API: a kube client (inferred config: in-cluster or
//! KUBECONFIG) whose requests pass a client-side rate limit, and the label a Secret must carry
//! to be used for a connection.
//!
//! Guarantees: the process never sends more than `burst` requests in any window of
//! `burst / qps` seconds (tower's fixed-window limiter; kube 5 has no QPS setting of its own),
//! so a thousand JobRetries applied at once reach a shared API server at a bounded rate.

use std::{collections::BTreeMap, time::Duration};

use kube::{Client, client::ClientBuilder, config::InferConfigError};
use tower::limit::RateLimitLayer;

/// Why the Kubernetes client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Kubernetes configuration found: {0}")]
    Config(#[from] InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// A kube client that sends `qps` requests per second on average, `burst` at most at once.
pub async fn kube_client(qps: u32, burst: u32) -> Result<Client, ClientError> {
    let kube_config = kube::Config::infer().await?;
    let (requests, window) = rate_window(qps, burst);
    let layer = RateLimitLayer::new(requests, window);
    Ok(ClientBuilder::try_from(kube_config)?
        .with_layer(&layer)
        .build())
}

/// The fixed window that allows `burst` requests at once and `qps` per second on average.
pub fn rate_window(qps: u32, burst: u32) -> (u64, Duration) {
    let (qps, burst) = (qps.max(1), burst.max(1));
    (
        u64::from(burst),
        Duration::from_secs_f64(f64::from(burst) / f64::from(qps)),
    )
}

/// A label a connection Secret must carry: a key, and optionally the value it must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretLabel {
    pub key: String,
    pub value: Option<String>,
}

impl SecretLabel {
    /// Parses `KEY` or `KEY=VALUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
            None => (text.trim(), None),
        };
        if key.is_empty() {
            return Err("expected KEY or KEY=VALUE, with a non-empty KEY".to_string());
        }
        Ok(Self {
            key: key.to_string(),
            value,
        })
    }

    /// Whether a Secret with `labels` carries this label.
    pub fn is_on(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let found = labels.and_then(|l| l.get(&self.key));
        match (&self.value, found) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(have)) => want == have,
        }
    }
}

impl std::fmt::Display for SecretLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_allows_the_burst_at_the_average_rate() {
        assert_eq!(rate_window(100, 200), (200, Duration::from_secs(2)));
        assert_eq!(rate_window(50, 10), (10, Duration::from_millis(200)));
        assert_eq!(rate_window(0, 0), (1, Duration::from_secs(1)));
    }

    #[test]
    fn a_secret_label_is_matched_by_key_or_by_key_and_value() {
        let labels = BTreeMap::from([("jobretry.io/redis".to_string(), "true".to_string())]);
        let key = SecretLabel::parse("jobretry.io/redis").unwrap();
        let pair = SecretLabel::parse("jobretry.io/redis=true").unwrap();
        let other = SecretLabel::parse("jobretry.io/redis=false").unwrap();
        assert!(key.is_on(Some(&labels)) && pair.is_on(Some(&labels)));
        assert!(!other.is_on(Some(&labels)));
        assert!(!key.is_on(None) && !key.is_on(Some(&BTreeMap::new())));
        assert_eq!(pair.to_string(), "jobretry.io/redis=true");
        assert!(SecretLabel::parse("=x").is_err());
    }
}
