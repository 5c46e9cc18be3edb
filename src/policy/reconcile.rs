//! One reconcile of one JobRetryPolicy, as a named pipeline:
//!
//! 1. `load` (IO): the policy from a fresh GET, its runs from the watch's cache;
//! 2. `due` (pure) and `count` (IO): the failure trigger's one ZCOUNT, only when a check is due;
//! 3. `decide` (pure): what to create and delete, and the next status;
//! 4. `execute` (IO): the create (the tick's name is the lock) and the deletes;
//! 5. `record` (IO): the gated status write, events and metrics.

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use tracing::{Instrument, Span, info_span};

use super::{
    context::Context,
    decide::{self, Inputs},
    execute::{self, NewRun},
    load::{self, Count},
    record, view,
};
use crate::{controller::error::Error, crd::policy::JobRetryPolicy};

/// Reconciles one policy in its span, timing it.
pub async fn reconcile(obj: Arc<JobRetryPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A follower does nothing; when it starts to lead it reconciles every policy again.
    if !ctx.gate.holds() {
        return Ok(Action::await_change());
    }
    reconcile_once(&obj, &ctx).instrument(span(&obj)).await
}

/// The pipeline, each step marked IO or pure.
async fn reconcile_once(obj: &JobRetryPolicy, ctx: &Context) -> Result<Action, Error> {
    let Some(loaded) = load::load(obj, ctx).await? else {
        return Ok(Action::await_change()); // gone, or being deleted
    }; // IO
    let now = ctx.clock.now();
    let uid = loaded.policy.uid().unwrap_or_default();
    let due = decide::failures_due(&loaded.policy, ctx.last_check(&uid), now); // pure
    let count = match due {
        Some(since) => Some(load::failures_since(&loaded, ctx, since).await?),
        None => None,
    }; // IO
    if count.is_some() {
        ctx.checked(&uid, now);
    }
    let runs = view::runs(&loaded.runs); // pure
    let failures = match &count {
        Some(Count::Read(n)) => Some(*n),
        _ => None,
    };
    let inputs = Inputs {
        policy: &loaded.policy,
        runs: &runs,
        now,
        failures,
    };
    let decision = decide::decide(&inputs); // pure
    let new = decision.create.as_ref().map(|c| NewRun {
        name: &c.name,
        tick: c.tick,
        cause: c.cause,
    });
    let done = execute::execute(&loaded, new, &decision.delete, ctx).await?; // IO
    record::record(&loaded, decision, done, count, ctx).await // IO
}

/// The span of everything logged about a policy.
fn span(obj: &JobRetryPolicy) -> Span {
    let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    info_span!("policy", namespace = %ns, jobretrypolicy = %name)
}
