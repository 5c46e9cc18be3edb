//! The JobRetryPolicy controller, the second controller of the operator, in the shape of the
//! first: `run()` wires the watches, `reconcile` drives one policy a step as a named
//! pipeline (load → decide → execute → record), and the decision is a pure function of the
//! policy, its runs, the clock and the failure count (`decide.rs`, with the cron evaluator
//! `crd::cron`). Its runs are JobRetry objects (`child.rs`) that the JobRetry controller runs.

pub mod child;
mod context;
pub mod decide;
mod execute;
mod load;
mod reconcile;
mod record;
pub mod view;

use std::sync::Arc;

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        reflector, watcher,
    },
};
use tracing::{info, warn};

use self::context::Context;
use crate::{
    config::Config,
    controller::error::Error,
    crd::{
        JobRetry,
        policy::{JobRetryPolicy, POLICY_LABEL},
    },
    http::Health,
    leader::Gate,
};

/// Retries a failed reconcile of a policy after a pause (the API server failed); the next
/// tick does not wait on it.
fn error_policy(_: Arc<JobRetryPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %err, "policy reconcile failed");
    ctx.metrics.reconcile_failed(err.category());
    Action::requeue(std::time::Duration::from_secs(5))
}

/// Runs the policy controller until `shutdown` resolves. Every replica watches; only the one
/// `gate` lets through creates, deletes and status writes, and each time it starts to lead it
/// reconciles every policy.
pub async fn run(
    client: Client,
    config: Config,
    health: Arc<Health>,
    gate: Arc<Gate>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (policies, runs_api): (Api<JobRetryPolicy>, Api<JobRetry>) = match &config.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // The runs of policies only (by their label), slimmed like the JobRetry controller's cache.
    let (runs, writer) = reflector::store();
    let runs_config = watcher::Config::default()
        .labels(POLICY_LABEL)
        .any_semantic();
    let watch = watcher(runs_api, runs_config).modify(crate::controller::cache::slim);
    let run_events = reflector(writer, watch).touched_objects();
    let controller = Controller::new(policies, watcher::Config::default().any_semantic())
        .owns_stream(run_events);
    let store = controller.store();
    health.metrics.observe_policies(move || {
        let tripped = store
            .state()
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.guard.is_some()))
            .count();
        tripped as i64
    });
    let acquired = gate.acquired();
    let ctx = Arc::new(Context::new(
        client,
        config,
        health.metrics.clone(),
        runs,
        gate,
    ));
    info!("starting the JobRetryPolicy controller");
    controller
        .reconcile_all_on(acquired)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(controller::Error::QueueError(e)) = res {
                warn!(error = %e, "watching JobRetryPolicy objects failed (is its CRD installed?)");
            }
        })
        .await;
    info!("policy controller stopped");
}
