//! The Redis target named by a JobRetry's connection Secret, read through a short cache
//! (the load step's Secret read).
//!
//! Guarantees: error messages name the Secret and key to fix and never quote the URL; a
//! Secret the operator may not read is a condition for the user (what to grant), not an API
//! failure to retry; a Secret is read at most once per [`SecretCache::TTL`] (many JobRetries
//! name the same one), so a changed Secret is seen within that time, except by a run that has
//! not started, which reads it afresh: its first call never goes to a target the Secret no
//! longer names (from then on, the run's record in Redis pins it to its data).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::{bullmq::RedisTarget, client::SecretLabel, crd::Connection, error::SecretCategory};

/// The Secret key of an optional CA certificate (PEM) to trust for rediss:// connections.
pub const CA_KEY: &str = "ca.crt";

/// Why the Secret cannot be used; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret or key is missing or unusable: wait for the user.
    #[error("{message}")]
    Invalid {
        category: SecretCategory,
        message: String,
    },
    /// The API server forbids the operator to read the Secret (403): wait for the user to
    /// grant it; the message says how.
    #[error("{0}")]
    Forbidden(String),
}

/// What reading the Secret failed on: the Secret (the user fixes it) or the API server.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The API server failed: retry.
    #[error("cannot read the connection Secret: {0}")]
    Kube(#[source] kube::Error),
}

impl LoadError {
    /// The error's metrics label.
    pub fn category(&self) -> SecretCategory {
        match self {
            LoadError::Secret(SecretError::Invalid { category, .. }) => *category,
            LoadError::Secret(SecretError::Forbidden(_)) => SecretCategory::Forbidden,
            LoadError::Kube(_) => SecretCategory::Api,
        }
    }
}

/// A Secret's namespace and name.
type SecretKey = (String, String);
/// When a Secret was read, and what was found.
type SecretRead = (Instant, Option<Arc<Secret>>);

/// Secrets (or their absence) read in the last [`SecretCache::TTL`], by namespace and name.
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<SecretKey, SecretRead>>,
}

impl SecretCache {
    pub const TTL: Duration = Duration::from_secs(3);

    /// What was read of Secret `key` less than TTL before `now`: `Some(None)` if it was
    /// missing, `None` if nothing recent is known.
    fn recent(&self, key: &SecretKey, now: Instant) -> Option<Option<Arc<Secret>>> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < Self::TTL)
            .map(|(_, s)| s.clone())
    }

    /// Keeps what was read of Secret `key` at `now`, dropping expired entries.
    fn keep(&self, key: SecretKey, secret: Option<Arc<Secret>>, now: Instant) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (at, _)| now.saturating_duration_since(*at) < Self::TTL);
        map.insert(key, (now, secret));
    }

    /// Secret `name` in `namespace`: a recent read (unless `fresh`), or a GET.
    async fn get(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(known) = self.recent(&key, Instant::now()).filter(|_| !fresh) {
            return Ok(known);
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api.get_opt(name).await?.map(Arc::new);
        self.keep(key, secret.clone(), Instant::now());
        Ok(secret)
    }
}

/// Reads the Redis URL (and the optional `ca.crt`) from the Secret in `namespace` and
/// validates it; with `required_label`, a Secret without that label is refused. `fresh`:
/// not from the cache (a run that has not started).
pub async fn redis_target(
    secrets: &SecretCache,
    client: &Client,
    namespace: &str,
    conn: &Connection,
    required_label: Option<&SecretLabel>,
    fresh: bool,
) -> Result<RedisTarget, LoadError> {
    let r = &conn.secret_ref;
    let secret = match secrets.get(client, namespace, &r.name, fresh).await {
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            let why = forbidden(namespace, &r.name, &s.message);
            return Err(SecretError::Forbidden(why).into());
        }
        read => read.map_err(LoadError::Kube)?,
    };
    Ok(target_from_secret(
        secret.as_deref(),
        namespace,
        conn,
        required_label,
    )?)
}

/// The Redis target a Secret (`None`: not found) gives, pure: the URL under the reference's
/// key, checked, with the optional CA. Messages name the Secret and key, never the value.
fn target_from_secret(
    secret: Option<&Secret>,
    namespace: &str,
    conn: &Connection,
    required_label: Option<&SecretLabel>,
) -> Result<RedisTarget, SecretError> {
    let r = &conn.secret_ref;
    let invalid = |category, what: String| SecretError::Invalid {
        category,
        message: format!("Secret {namespace}/{} {what}", r.name),
    };
    let secret =
        secret.ok_or_else(|| invalid(SecretCategory::NotFound, "not found".to_string()))?;
    if let Some(label) = required_label.filter(|l| !l.is_on(secret.metadata.labels.as_ref())) {
        return Err(invalid(
            SecretCategory::Unlabelled,
            format!(
                "lacks the label {label} that this operator requires of connection Secrets (--secret-label); label the Secret if JobRetries may use it"
            ),
        ));
    }
    let bytes = value(secret, &r.key)
        .ok_or_else(|| invalid(SecretCategory::MissingKey, format!("has no key {}", r.key)))?;
    let url = String::from_utf8(bytes).map_err(|_| {
        invalid(
            SecretCategory::NotUtf8,
            format!("key {} is not UTF-8 text", r.key),
        )
    })?;
    RedisTarget::new(&url, conn.mode, conn.sentinel_master_name.clone())
        .map(|t| t.with_ca(value(secret, CA_KEY)))
        .map_err(|e| invalid(SecretCategory::InvalidUrl, format!("key {}: {e}", r.key)))
}

/// Why the operator may not read Secret `namespace/name` and what grants it, with what the
/// API server said (it names the operator's account).
fn forbidden(namespace: &str, name: &str, refusal: &str) -> String {
    format!(
        "the operator may not read Secret {namespace}/{name}: add namespace {namespace} to the chart's rbac.secretNamespaces, or grant the operator's ServiceAccount get on Secrets there (the API server said: {refusal})"
    )
}

/// The value of `key` in the Secret's data (or stringData, as written by some tools).
fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone());
    data.or_else(|| {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.clone().into_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_secret_says_what_to_grant_and_who_was_refused() {
        let refusal = r#"secrets "redis" is forbidden: User "system:serviceaccount:ops:jr" cannot get resource "secrets" in API group "" in the namespace "payments""#;
        let m = forbidden("payments", "redis", refusal);
        assert!(
            m.starts_with("the operator may not read Secret payments/redis: add namespace payments to the chart's rbac.secretNamespaces, or grant"),
            "{m}"
        );
        assert!(m.contains("system:serviceaccount:ops:jr"), "{m}");
        let e = LoadError::Secret(SecretError::Forbidden(m.clone()));
        assert_eq!(
            (e.category(), e.to_string()),
            (SecretCategory::Forbidden, m)
        );
        assert_eq!(<&str>::from(e.category()), "forbidden");
    }

    proptest::proptest! {
        /// Whatever bytes the Secret's key holds, reading it never panics, and a refusal
        /// names the Secret and key, never the value (it may be a URL with a password).
        #[test]
        fn any_secret_value_is_read_or_refused_without_quoting_it(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let conn: Connection =
                serde_json::from_value(serde_json::json!({"secretRef": {"name": "redis"}})).unwrap();
            let mut data = std::collections::BTreeMap::new();
            data.insert("url".to_string(), k8s_openapi::ByteString(bytes.clone()));
            let secret = Secret { data: Some(data), ..Default::default() };
            match target_from_secret(Some(&secret), "ns", &conn, None) {
                Ok(_) => proptest::prop_assert!(std::str::from_utf8(&bytes).is_ok()),
                Err(SecretError::Invalid { category, message }) => {
                    proptest::prop_assert!(message.starts_with("Secret ns/redis "), "{}", message);
                    let text = String::from_utf8_lossy(&bytes);
                    let text = text.trim();
                    proptest::prop_assert!(text.len() < 8 || !message.contains(text), "{}", message);
                    let label: &str = category.into();
                    proptest::prop_assert!(!label.is_empty());
                }
                Err(other) => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let conn: Connection =
            serde_json::from_value(serde_json::json!({"secretRef": {"name": "redis"}})).unwrap();
        let e = target_from_secret(None, "ns", &conn, None).unwrap_err();
        assert_eq!(e.to_string(), "Secret ns/redis not found");
        let e = LoadError::from(
            target_from_secret(Some(&Secret::default()), "ns", &conn, None).unwrap_err(),
        );
        assert_eq!(
            (<&str>::from(e.category()), e.to_string()),
            ("missing_key", "Secret ns/redis has no key url".to_string())
        );
    }

    #[test]
    fn a_secret_read_is_reused_only_within_the_ttl() {
        let cache = SecretCache::default();
        let t0 = Instant::now();
        let key = ("ns".to_string(), "redis".to_string());
        assert!(cache.recent(&key, t0).is_none());
        cache.keep(key.clone(), Some(Arc::new(Secret::default())), t0);
        assert!(matches!(
            cache.recent(&key, t0 + Duration::from_secs(1)),
            Some(Some(_))
        ));
        assert!(cache.recent(&key, t0 + SecretCache::TTL).is_none());
        // A missing Secret is remembered as missing; expired entries are dropped.
        let gone = ("ns".to_string(), "gone".to_string());
        cache.keep(gone.clone(), None, t0 + SecretCache::TTL);
        assert!(matches!(
            cache.recent(&gone, t0 + SecretCache::TTL),
            Some(None)
        ));
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }
}
