//! Record step (IO): writes the decision's status (only while this replica leads), publishes
//! its events and counts it in the metrics. A failure count that could not be read shows as
//! a `Stalled` condition with the reason the JobRetry controller would give it.

use kube::{
    Resource,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    context::Context,
    decide::{Decision, Note},
    execute::Done,
    load::{Count, Loaded},
};
use crate::{
    controller::error::Error,
    crd::{condition::STALLED, policy::PolicyEventReason},
    status::{FIELD_MANAGER, set_condition},
};

/// Records `d` for `loaded`'s policy; when to look again.
pub async fn record(
    loaded: &Loaded,
    mut d: Decision,
    done: Done,
    count: Option<Count>,
    ctx: &Context,
) -> Result<Action, Error> {
    if !ctx.gate.holds() {
        warn!("lost the leader Lease: policy status not written");
        return Ok(Action::await_change());
    }
    if d.create.is_some() && done.created.is_none() {
        // The tick's run existed already (another replica, or a crash after the create).
        d.notes
            .retain(|n| n.reason != PolicyEventReason::RunCreated);
    }
    if let Some(Count::Failed(e)) = &count {
        let generation = loaded.policy.metadata.generation;
        let now = ctx.clock.now();
        let c = &mut d.status.conditions;
        set_condition(
            c,
            STALLED,
            true,
            e.reason().as_str(),
            &e.to_string(),
            generation,
            now,
        );
    }
    if loaded.policy.status.as_ref() != Some(&d.status) {
        let name = loaded.policy.metadata.name.as_deref().unwrap_or_default();
        let body = json!({
            "apiVersion": "jobretry.io/v1alpha1",
            "kind": "JobRetryPolicy",
            "status": d.status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        loaded
            .api
            .patch_status(name, &params, &Patch::Apply(&body))
            .await?;
    }
    if let Some(c) = &d.create
        && done.created.is_some()
    {
        ctx.metrics.policy_run_created(c.cause);
    }
    if d.tripped {
        ctx.metrics.guard_tripped();
    }
    for n in &d.notes {
        publish(ctx, loaded, n).await;
    }
    Ok(Action::requeue(d.requeue))
}

/// Logs and publishes note `n` on the policy.
async fn publish(ctx: &Context, loaded: &Loaded, n: &Note) {
    let reason: &str = n.reason.into();
    let type_ = if n.warning {
        warn!(reason, "{}", n.text);
        EventType::Warning
    } else {
        info!(reason, "{}", n.text);
        EventType::Normal
    };
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(n.text.chars().take(1024).collect()),
        action: reason.to_string(),
        secondary: None,
    };
    let reference = loaded.policy.object_ref(&());
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, "cannot publish event");
    }
}
