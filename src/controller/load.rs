//! Load step: the Redis target named by a JobRetry's connection Secret.
//!
//! Guarantees: error messages name the Secret and key to fix and never quote the URL.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::{bullmq::RedisTarget, crd::Connection};

/// Why the Secret cannot be used; the message says what to fix.
#[derive(Debug)]
pub enum LoadError {
    /// The Secret or key is missing or unusable: wait for the user.
    Invalid(String),
    /// The API server failed: retry.
    Kube(kube::Error),
}

/// Reads the Redis URL from the Secret in `namespace` and validates it.
pub async fn redis_target(
    client: &Client,
    namespace: &str,
    conn: &Connection,
) -> Result<RedisTarget, LoadError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let r = &conn.secret_ref;
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(LoadError::Kube)?
        .ok_or_else(|| LoadError::Invalid(format!("Secret {namespace}/{} not found", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| {
            LoadError::Invalid(format!(
                "Secret {namespace}/{} has no key {}",
                r.name, r.key
            ))
        })?;
    let url = String::from_utf8(bytes).map_err(|_| {
        LoadError::Invalid(format!(
            "Secret {namespace}/{} key {} is not UTF-8 text",
            r.name, r.key
        ))
    })?;
    RedisTarget::new(&url, conn.mode, conn.sentinel_master_name.clone()).map_err(|e| {
        LoadError::Invalid(format!("Secret {namespace}/{} key {}: {e}", r.name, r.key))
    })
}
