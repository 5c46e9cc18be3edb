//! Load step (IO): every read a policy reconcile makes before it decides anything: the policy
//! from a fresh GET, its runs from the watch's cache, and, when the failure trigger is due,
//! the one bounded count of jobs that entered the template's state within its window. A count
//! that cannot be read is a typed [`RunError`] (a condition), never a failed reconcile.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{child, context::Context};
use crate::{
    bullmq::{self, QueueKeys},
    controller::{
        error::{Error, RunError},
        secret::{self, LoadError},
    },
    crd::{
        JobRetry,
        policy::{JobRetryPolicy, POLICY_LABEL},
    },
};

/// What a policy reconcile read.
pub struct Loaded {
    /// The policy, fresh from the API server.
    pub policy: JobRetryPolicy,
    pub api: Api<JobRetryPolicy>,
    pub runs_api: Api<JobRetry>,
    /// Its runs: JobRetries it controls, as the watch last saw them.
    pub runs: Vec<Arc<JobRetry>>,
}

/// Reads the policy afresh and its runs; `None` when it is gone or being deleted (the garbage
/// collector deletes its runs).
pub async fn load(cached: &JobRetryPolicy, ctx: &Context) -> Result<Option<Loaded>, Error> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<JobRetryPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let fresh = api.get_opt(&cached.name_any()).await?;
    let Some(policy) = fresh.filter(|p| p.metadata.deletion_timestamp.is_none()) else {
        return Ok(None);
    };
    let name = policy.name_any();
    let runs = ctx
        .runs
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| r.labels().get(POLICY_LABEL) == Some(&name))
        .filter(|r| child::owned_by(r, &policy))
        .collect();
    Ok(Some(Loaded {
        policy,
        api,
        runs_api: Api::namespaced(ctx.client.clone(), &ns),
        runs,
    }))
}

/// The failure trigger's count, as far as it could be read.
pub enum Count {
    /// Jobs that entered the state within the window.
    Read(u64),
    /// The Secret, the connection or Redis failed: a condition on the policy.
    Failed(RunError),
}

/// How many jobs entered the template's state at or after `since`: one ZCOUNT.
pub async fn failures_since(
    loaded: &Loaded,
    ctx: &Context,
    since: Timestamp,
) -> Result<Count, Error> {
    let spec = &loaded.policy.spec.job_retry_template.spec;
    let ns = loaded.policy.namespace().unwrap_or_default();
    let label = ctx.config.secret_label.as_ref();
    let read = secret::redis_target(
        &ctx.secrets,
        &ctx.client,
        &ns,
        &spec.connection,
        label,
        false,
    );
    let target = match read.await {
        Ok(t) => t,
        Err(LoadError::Secret(e)) => return Ok(Count::Failed(e.into())),
        Err(LoadError::Kube(e)) => return Err(e.into()),
    };
    let mut conn = match ctx.connections.get(&target).await {
        Ok(c) => c,
        Err(e) => return Ok(Count::Failed(RunError::Connect(e))),
    };
    let keys = QueueKeys::new(&spec.queue.prefix, &spec.queue.name);
    let state = spec.state.as_str();
    let count = bullmq::count::finished_since(&mut conn, &keys, state, since.as_millisecond());
    Ok(match count.await {
        Ok(n) => Count::Read(n),
        Err(e) => {
            ctx.connections.forget(&target);
            Count::Failed(RunError::Redis(e))
        }
    })
}
