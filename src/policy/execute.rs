//! Execute step (IO): creates the run the decision names and deletes the runs it lets go
//! (replaced, or past the history limits). Creating is idempotent by name: the API server
//! refuses a second object of a tick's name, which is how a crash or a second replica never
//! creates a tick twice. A run is deleted in the background; a running one stops between
//! batches, never halfway through a job.

use kube::api::{DeleteParams, PostParams};
use tracing::{info, warn};

use super::{child, context::Context, load::Loaded};
use crate::controller::error::Error;

/// What the execute step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The run created now (None: none due, or it existed already).
    pub created: Option<String>,
    /// Runs deleted now.
    pub deleted: Vec<String>,
}

/// A run to create: its name, tick and cause.
pub struct NewRun<'a> {
    pub name: &'a str,
    pub tick: k8s_openapi::jiff::Timestamp,
    pub cause: crate::crd::policy::RunCause,
}

/// Creates `new` (if any) and deletes `delete`, only while this replica leads.
pub async fn execute(
    loaded: &Loaded,
    new: Option<NewRun<'_>>,
    delete: &[String],
    ctx: &Context,
) -> Result<Done, Error> {
    let mut done = Done::default();
    if !ctx.gate.holds() {
        return Ok(done);
    }
    for name in delete {
        match loaded
            .runs_api
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => done.deleted.push(name.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(new) = new {
        let run = child::run(&loaded.policy, new.name, new.tick, new.cause);
        match loaded.runs_api.create(&PostParams::default(), &run).await {
            Ok(_) => {
                info!(run = new.name, tick = %new.tick, "created run");
                done.created = Some(new.name.to_string());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                warn!(
                    run = new.name,
                    "the tick's run exists already; not created twice"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
