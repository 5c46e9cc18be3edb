//! What `kubectl jobretry` prints, from a JobRetry as the API server returns it (pure): the
//! preview, the status table, progress and the closing summary.

use crate::crd::{JobRetry, JobRetryStatus, Phase, ValueCount, policy::JobRetryPolicy};

/// Columns separated by three spaces, each as wide as its widest cell (as `kubectl get`).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i < last {
                s.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn name_of(jr: &JobRetry) -> &str {
    jr.metadata.name.as_deref().unwrap_or_default()
}

fn time_of(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.as_ref().map_or("-".into(), |t| t.0.to_string())
}

/// Top values with counts, one per row; a value cut to 80 characters, on one line.
fn counted(header: &str, values: &[ValueCount]) -> String {
    let rows: Vec<Vec<String>> = values
        .iter()
        .map(|v| {
            let one_line = v.value.replace(['\n', '\r'], " ");
            let short: String = one_line.chars().take(80).collect();
            vec![v.count.to_string(), short]
        })
        .collect();
    table(&["COUNT", header], &rows)
}

/// A dry run's preview: what the real run would retry.
pub fn preview(jr: &JobRetry) -> String {
    let st = jr.status.clone().unwrap_or_default();
    let p = st.preview.clone().unwrap_or_default();
    let scanned = st.selection.as_ref().map_or(0, |s| s.scanned);
    let queue = &jr.spec.queue.name;
    let mut out = format!(
        "Preview of {} (dry run: nothing was changed)\n\
         Matched:  {} {} jobs of queue {queue} (of {scanned} scanned)\n\
         Oldest:   {}\n\
         Newest:   {}\n",
        name_of(jr),
        p.matched,
        jr.spec.state.as_str(),
        time_of(&p.oldest),
        time_of(&p.newest),
    );
    if !p.names.is_empty() {
        out.push('\n');
        out.push_str(&counted("NAME", &p.names));
    }
    if !p.reasons.is_empty() {
        out.push('\n');
        out.push_str(&counted("FAILED REASON", &p.reasons));
    }
    out
}

/// Phase, counts and one row per job, as `kubectl jobretry status` prints them.
pub fn status(jr: &JobRetry) -> String {
    let st = jr.status.clone().unwrap_or_default();
    let mut out = format!(
        "Name:     {}\nQueue:    {} ({})\nPhase:    {}\n{}\n",
        name_of(jr),
        jr.spec.queue.name,
        jr.spec.state.as_str(),
        st.phase.as_deref().unwrap_or("Pending"),
        counts(&st),
    );
    if let Some(sel) = &st.selection {
        out.push_str(&format!(
            "Scanned:  {} (about {} left)\n",
            sel.scanned, sel.remaining
        ));
    }
    if let Some(who) = &st.requester {
        out.push_str(&format!("Asked by: {who}\n"));
    }
    if let Some(why) = jr.spec.reason.as_deref().filter(|r| !r.is_empty()) {
        out.push_str(&format!("Why:      {why}\n"));
    }
    if let Some(why) = held(&st) {
        out.push_str(&format!("Reason:   {why}\n"));
    }
    if st.jobs.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = st
        .jobs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.result.clone(),
                r.code.map_or(String::new(), |c| c.to_string()),
                r.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["ID", "RESULT", "CODE", "MESSAGE"], &rows));
    if st.jobs_truncated {
        out.push_str(&format!(
            "(rows truncated: {} of {} shown, only jobs not retried; the counts are exact)\n",
            st.jobs.len(),
            st.processed.unwrap_or(0)
        ));
    }
    out
}

/// `Matched: 3  Retried: 2  Skipped: 1  Errors: 0`.
fn counts(st: &JobRetryStatus) -> String {
    format!(
        "Matched:  {}  Retried: {}  Skipped: {}  Errors: {}",
        st.matched.unwrap_or(0),
        st.retried.unwrap_or(0),
        st.skipped.unwrap_or(0),
        st.errors.unwrap_or(0)
    )
}

/// The reason and message of a run that is held up (Stalled or Failed), if it is.
pub fn held(st: &JobRetryStatus) -> Option<String> {
    use crate::crd::condition;
    st.conditions
        .iter()
        .find(|c| {
            (c.type_ == condition::STALLED || c.type_ == condition::FAILED) && c.status == "True"
        })
        .map(|c| format!("{}: {}", c.reason, c.message))
}

/// Where a run stands, for a progress display: `position` of `length` (scanned jobs of the
/// estimate for a selector run, processed jobs of the matched ones for ids) and the counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub position: u64,
    pub length: u64,
    pub message: String,
}

/// The progress of a run from its status.
pub fn progress(jr: &JobRetry) -> Progress {
    let st = jr.status.clone().unwrap_or_default();
    let (position, length, unit) = match (&st.selection, jr.spec.selector.is_some()) {
        (Some(sel), true) => (sel.scanned, sel.scanned + sel.remaining, "scanned"),
        (None, true) => (0, 0, "scanned"),
        _ => (
            st.processed.unwrap_or(0),
            st.matched.unwrap_or(0),
            "processed",
        ),
    };
    let message = format!(
        "{}: {unit} {position}/{length}, matched {}, retried {}, skipped {}, errors {}",
        st.phase.as_deref().unwrap_or(Phase::Pending.as_str()),
        st.matched.unwrap_or(0),
        st.retried.unwrap_or(0),
        st.skipped.unwrap_or(0),
        st.errors.unwrap_or(0)
    );
    Progress {
        position,
        length,
        message,
    }
}

/// The line printed when a run ends.
pub fn summary(jr: &JobRetry) -> String {
    let st = jr.status.clone().unwrap_or_default();
    let mut out = format!(
        "jobretry/{} {}: matched {}, retried {}, skipped {}, errors {}",
        name_of(jr),
        st.phase.as_deref().unwrap_or(Phase::Pending.as_str()),
        st.matched.unwrap_or(0),
        st.retried.unwrap_or(0),
        st.skipped.unwrap_or(0),
        st.errors.unwrap_or(0)
    );
    if let Some(why) = held(&st) {
        out.push_str(&format!(" ({why})"));
    }
    out + "\n"
}

/// Whether the run has ended (a terminal phase).
pub fn is_done(jr: &JobRetry) -> bool {
    jr.status
        .as_ref()
        .and_then(|s| s.phase.as_deref()?.parse::<Phase>().ok())
        .is_some_and(Phase::is_terminal)
}

/// A policy's state and its runs, newest first, as `kubectl jobretry status --policy` prints.
pub fn policy(p: &JobRetryPolicy, runs: &[JobRetry]) -> String {
    let st = p.status.clone().unwrap_or_default();
    let suspend = st
        .suspend
        .as_deref()
        .unwrap_or(if p.spec.suspend { "true" } else { "false" });
    let mut out = format!(
        "Name:      {}\nQueue:     {} ({})\nSchedule:  {}\nSuspend:   {suspend}\nLast run:  {}\nRuns:      {} created, {} jobs retried, {} parked\n",
        p.metadata.name.as_deref().unwrap_or_default(),
        p.spec.job_retry_template.spec.queue.name,
        p.spec.job_retry_template.spec.state.as_str(),
        p.spec.schedule.as_deref().unwrap_or("-"),
        time_of(&st.last_schedule_time),
        st.runs_created,
        st.jobs_retried,
        st.jobs_parked,
    );
    if let Some(g) = &st.guard {
        out.push_str(&format!(
            "Guard:     tripped at {} ({}% of a run's jobs had been retried before); `kubectl jobretry resume {}` or change the spec\n",
            g.tripped_at.0,
            g.refailed_percent,
            p.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    let mut runs: Vec<&JobRetry> = runs.iter().collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.metadata.creation_timestamp.clone().map(|t| t.0)));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            let parked = s.counts.get("Parked").copied().unwrap_or(0);
            vec![
                name_of(r).to_string(),
                s.phase.unwrap_or_else(|| "Pending".into()),
                s.matched.unwrap_or(0).to_string(),
                s.retried.unwrap_or(0).to_string(),
                parked.to_string(),
                time_of(&s.start_time),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["RUN", "PHASE", "MATCHED", "RETRIED", "PARKED", "STARTED"],
        &rows,
    ));
    out
}
