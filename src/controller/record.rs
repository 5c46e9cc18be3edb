//! Record step (IO): writes the transition's status (only while this replica leads, and only
//! to the object it was computed for, never to one re-created under its name), keeps its
//! memory, counts it in the metrics and publishes its events.

use kube::{
    Resource,
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use tracing::{info, warn};

use super::{
    context::Context,
    error::Error,
    execute,
    load::{self, Loaded, Queue},
    machine::{Milestone, Requeue, Transition},
};
use crate::{crd::Phase, status};

/// Records transition `t` of `loaded`'s run; when to look again.
pub async fn record(loaded: &Loaded, t: Transition, ctx: &Context) -> Result<Action, Error> {
    if !ctx.gate.holds() {
        // Another replica may lead by now: its status wins; this slice's rows are in the
        // Redis record, from which the leader's next slice brings them back.
        warn!("lost the leader Lease: status not written");
        return Ok(Action::await_change());
    }
    let written = status::write(&loaded.api, &loaded.obj, &t.status).await?;
    if written == status::Written::Gone {
        info!("object deleted or replaced during the slice; its status is not written");
        ctx.memory.forget(&loaded.uid);
        give_back_lock(loaded, ctx).await;
        return Ok(Action::await_change());
    }
    ctx.memory.remember(&loaded.uid, t.memory.clone());
    let old = Phase::of(loaded.obj.status.as_ref());
    let new = Phase::of(Some(&t.status));
    if let Some(p) = new.filter(|p| p.is_terminal() && old != new) {
        ctx.metrics.run_finished(p);
    }
    for m in &t.events {
        publish(ctx, loaded, m, new).await;
    }
    Ok(match t.requeue {
        Requeue::AwaitChange => Action::await_change(),
        Requeue::After(d) | Requeue::Pause(d) => Action::requeue(d),
    })
}

/// Gives back the queue's lock of an object that was deleted during its slice, if its run
/// holds it: the watch gave it back when it saw the delete, but a page of the slice may have
/// taken it again since (it would otherwise hold the queue until it expires).
async fn give_back_lock(loaded: &Loaded, ctx: &Context) {
    if let Ok(Some((gone, Queue::Open(mut q)))) = load::deleted(loaded.obj.clone(), ctx).await {
        let state = gone.obj.spec.state;
        execute::release_lock(ctx, &mut q, state, &gone.run_key).await;
    }
}

/// Logs and publishes event `m` of the run, now in `phase`.
async fn publish(ctx: &Context, loaded: &Loaded, m: &Milestone, phase: Option<Phase>) {
    let phase = phase.map_or("", Phase::as_str);
    let type_ = if m.warning {
        warn!(phase, reason = %m.reason, "{}", m.note);
        EventType::Warning
    } else {
        info!(phase, reason = %m.reason, "{}", m.note);
        EventType::Normal
    };
    let event = Event {
        type_,
        reason: m.reason.to_string(),
        note: Some(m.note.clone()),
        action: "Retry".into(),
        secondary: None,
    };
    let reference = loaded.obj.object_ref(&());
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, "cannot publish event");
    }
}
