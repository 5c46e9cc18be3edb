//! What the decision sees of a policy's runs (pure): their tick, phase, completion and the
//! counts the guard and the counters need, read from each JobRetry.

use std::sync::Arc;

use crate::crd::JobRetry;

use super::{child, decide::Run};

/// The runs, as the decision sees them (a run without a readable tick is left out).
pub fn runs(objs: &[Arc<JobRetry>]) -> Vec<Run> {
    objs.iter().filter_map(|o| run(o)).collect()
}

fn run(obj: &JobRetry) -> Option<Run> {
    let st = obj.status.clone().unwrap_or_default();
    let count = |r: &str| st.counts.get(r).copied().unwrap_or(0);
    Some(Run {
        name: obj.metadata.name.clone()?,
        tick: child::tick_of(obj)?,
        phase: child::phase_of(obj),
        completed: st.completion_time.map(|t| t.0),
        matched: st.matched.unwrap_or(0),
        retried: st.retried.unwrap_or(0),
        parked: count("Parked"),
        refailed: st.refailed.unwrap_or(0),
    })
}
