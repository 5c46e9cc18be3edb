//! Load step: the Redis target named by a JobRetry's connection Secret.
//!
//! Guarantees: error messages name the Secret and key to fix and never quote the URL.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::{bullmq::RedisTarget, crd::Connection};

/// The Secret key of an optional CA certificate (PEM) to trust for rediss:// connections.
pub const CA_KEY: &str = "ca.crt";

/// Why the Secret cannot be used; the message says what to fix.
#[derive(Debug)]
pub enum LoadError {
    /// The Secret or key is missing or unusable: wait for the user. `category` is a fixed
    /// label for metrics: `not_found`, `missing_key`, `not_utf8` or `invalid_url`.
    Invalid {
        category: &'static str,
        message: String,
    },
    /// The API server failed: retry.
    Kube(kube::Error),
}

/// Every category of [`LoadError::category`] (metrics declare each at 0).
pub const CATEGORIES: [&str; 6] = [
    "not_found",
    "missing_key",
    "not_utf8",
    "invalid_url",
    "forbidden",
    "api",
];

impl LoadError {
    /// A short, fixed label for the error kind (metrics).
    pub fn category(&self) -> &'static str {
        match self {
            LoadError::Invalid { category, .. } => category,
            LoadError::Kube(kube::Error::Api(s)) if s.is_forbidden() => "forbidden",
            LoadError::Kube(_) => "api",
        }
    }
}

/// Reads the Redis URL (and the optional `ca.crt`) from the Secret in `namespace` and
/// validates it.
pub async fn redis_target(
    client: &Client,
    namespace: &str,
    conn: &Connection,
) -> Result<RedisTarget, LoadError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let r = &conn.secret_ref;
    let invalid = |category, what: String| LoadError::Invalid {
        category,
        message: format!("Secret {namespace}/{} {what}", r.name),
    };
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(LoadError::Kube)?
        .ok_or_else(|| invalid("not_found", "not found".to_string()))?;
    let bytes = value(&secret, &r.key)
        .ok_or_else(|| invalid("missing_key", format!("has no key {}", r.key)))?;
    let url = String::from_utf8(bytes)
        .map_err(|_| invalid("not_utf8", format!("key {} is not UTF-8 text", r.key)))?;
    RedisTarget::new(&url, conn.mode, conn.sentinel_master_name.clone())
        .map(|t| t.with_ca(value(&secret, CA_KEY)))
        .map_err(|e| invalid("invalid_url", format!("key {}: {e}", r.key)))
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
