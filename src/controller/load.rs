//! Load step: the Redis target named by a JobRetry's connection Secret.
//!
//! Guarantees: error messages name the Secret and key to fix and never quote the URL.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::{bullmq::RedisTarget, client::SecretLabel, crd::Connection};

/// The Secret key of an optional CA certificate (PEM) to trust for rediss:// connections.
pub const CA_KEY: &str = "ca.crt";

/// Why the Secret cannot be used; the message says what to fix.
#[derive(Debug)]
pub enum LoadError {
    /// The Secret or key is missing or unusable: wait for the user.
    Invalid(String),
    /// The API server failed: retry.
    Kube(kube::Error),
}

/// Reads the Redis URL (and the optional `ca.crt`) from the Secret in `namespace` and
/// validates it; with `required_label`, a Secret without that label is refused.
pub async fn redis_target(
    client: &Client,
    namespace: &str,
    conn: &Connection,
    required_label: Option<&SecretLabel>,
) -> Result<RedisTarget, LoadError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let r = &conn.secret_ref;
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(LoadError::Kube)?
        .ok_or_else(|| LoadError::Invalid(format!("Secret {namespace}/{} not found", r.name)))?;
    let invalid =
        |what: String| LoadError::Invalid(format!("Secret {namespace}/{} {what}", r.name));
    if let Some(label) = required_label.filter(|l| !l.is_on(secret.metadata.labels.as_ref())) {
        return Err(invalid(format!(
            "lacks the label {label} that this operator requires of connection Secrets (--secret-label); label the Secret if JobRetries may use it"
        )));
    }
    let bytes = value(&secret, &r.key).ok_or_else(|| invalid(format!("has no key {}", r.key)))?;
    let url = String::from_utf8(bytes)
        .map_err(|_| invalid(format!("key {} is not UTF-8 text", r.key)))?;
    RedisTarget::new(&url, conn.mode, conn.sentinel_master_name.clone())
        .map(|t| t.with_ca(value(&secret, CA_KEY)))
        .map_err(|e| invalid(format!("key {}: {e}", r.key)))
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
