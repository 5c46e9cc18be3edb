//! The call contract of our Lua scripts: every KEYS and ARGV entry of every call is pushed
//! here, from typed arguments, in the order and under the names of the scripts' headers
//! (`core.lua`, then `retry.lua` or `select.lua`; `unlock.lua`). A test reads those headers
//! and checks each builder against them, so a header and its builder cannot drift apart.

use std::time::Duration;

use redis::{Script, ScriptInvocation};

use super::{keys::QueueKeys, version::QueueVersion};
use crate::crd::SourceState;

/// The parameters of a run that apply to each of its batches (and selector pages).
#[derive(Clone, Debug)]
pub struct BatchRequest {
    pub state: SourceState,
    pub version: QueueVersion,
    pub reset_attempts_made: bool,
    pub reset_attempts_started: bool,
    pub dry_run: bool,
    /// The run key's ledger and this run's owner tag.
    pub ledger: Ledger,
    /// The run record's key: an id run keeps its position there (per owner), written in
    /// the same call as each batch; a selector run its cursor and counters.
    pub record: String,
    /// Of the ledger and the record.
    pub ledger_ttl: Duration,
    /// `spec.audit.jobLog`: the run's part of the audit line each retried job gets in its
    /// BullMQ log ([`audit_line`]); `None`: no line.
    pub audit: Option<String>,
}

/// Who asked for a run and why: the run's part of the audit line (`spec.audit.jobLog`) each
/// job it retries gets in its BullMQ log. `core.lua` appends what the retry erased; the whole
/// line reads
///
/// ```text
/// jobretry: retried from failed by run="payments/incident-4711" runKey="payments/incident-4711" requester="alice" reason="db failover"; erased failedReason="read ECONNRESET" finishedOn="1764950000000" attemptsMade="3"
/// ```
///
/// Values are JSON strings; `requester` and `reason` are `null` when there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRun<'a> {
    pub state: SourceState,
    /// `namespace/name` of the JobRetry.
    pub run: &'a str,
    pub run_key: &'a str,
    pub requester: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl AuditRun<'_> {
    /// The run's part of the line.
    pub fn line(&self) -> String {
        let json = |s: Option<&str>| {
            s.map_or_else(
                || "null".to_string(),
                |s| serde_json::Value::from(s).to_string(),
            )
        };
        format!(
            "jobretry: retried from {} by run={} runKey={} requester={} reason={}",
            self.state.as_str(),
            json(Some(self.run)),
            json(Some(self.run_key)),
            json(self.requester),
            json(self.reason.filter(|r| !r.is_empty())),
        )
    }
}

/// A keyset position: the score (finishedOn, as Redis writes it) and id of the last job
/// examined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub score: String,
    pub id: String,
}

/// The retry script: the shared core, then the id batch.
pub const RETRY_LUA: &str = concat!(include_str!("core.lua"), include_str!("retry.lua"));
/// The selector script: the shared core, then one page.
pub const SELECT_LUA: &str = concat!(include_str!("core.lua"), include_str!("select.lua"));
/// The lock release of a selector run.
pub const UNLOCK_LUA: &str = include_str!("unlock.lua");

/// A run's exactly-once ledger: its key and the owner tag its entries carry (`1@<owner>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    pub key: String,
    pub owner: String,
}

/// The KEYS and ARGV of one script call, each under its header name.
#[derive(Clone, Debug, Default)]
pub struct Call {
    keys: Vec<(&'static str, String)>,
    args: Vec<(&'static str, String)>,
}

impl Call {
    fn key(&mut self, name: &'static str, key: impl Into<String>) -> &mut Self {
        self.keys.push((name, key.into()));
        self
    }

    fn arg(&mut self, name: &'static str, value: impl ToString) -> &mut Self {
        self.args.push((name, value.to_string()));
        self
    }

    /// The call of `script` with these KEYS and ARGV.
    pub fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for (_, k) in &self.keys {
            inv.key(k.as_str());
        }
        for (_, a) in &self.args {
            inv.arg(a.as_str());
        }
        inv
    }

    #[cfg(test)]
    fn names(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let names = |v: &[(&'static str, String)]| v.iter().map(|(n, _)| *n).collect();
        (names(&self.keys), names(&self.args))
    }
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// The queue's keys, KEYS 1-10 of `core.lua` (the ledger, 11, is the run's).
pub struct QueueKeysArgs<'a> {
    pub keys: &'a QueueKeys,
    pub state: SourceState,
}

impl QueueKeysArgs<'_> {
    fn push(&self, call: &mut Call) {
        let k = self.keys;
        call.key("base", k.base())
            .key("events", k.key("events"))
            .key("state", k.key(self.state.as_str()))
            .key("wait", k.key("wait"))
            .key("paused", k.key("paused"))
            .key("meta", k.key("meta"))
            .key("active", k.key("active"))
            .key("marker", k.key("marker"))
            .key("prioritized", k.key("prioritized"))
            .key("pc", k.key("pc"));
    }
}

/// A run's settings: KEYS 1-11 and ARGV 1-8 of `core.lua`.
pub struct RunArgs<'a> {
    pub queue: QueueKeysArgs<'a>,
    /// The release flags (`QueueVersion::script_flags`).
    pub flags: String,
    pub reset_attempts_made: bool,
    pub reset_attempts_started: bool,
    pub dry_run: bool,
    pub ledger: &'a Ledger,
    /// Of the ledger and the run record.
    pub ttl: Duration,
    /// The run's part of each retried job's audit line; `None`: no line.
    pub audit: Option<&'a str>,
}

impl<'a> RunArgs<'a> {
    /// The settings of `req` on the queue of `keys`.
    pub fn of(keys: &'a QueueKeys, req: &'a BatchRequest) -> Self {
        Self {
            queue: QueueKeysArgs {
                keys,
                state: req.state,
            },
            flags: req.version.script_flags(),
            reset_attempts_made: req.reset_attempts_made,
            reset_attempts_started: req.reset_attempts_started,
            dry_run: req.dry_run,
            ledger: &req.ledger,
            ttl: req.ledger_ttl,
            audit: req.audit.as_deref(),
        }
    }

    fn push(&self, call: &mut Call) {
        self.queue.push(call);
        call.key("ledger", self.ledger.key.as_str())
            .arg("state", self.queue.state.as_str())
            .arg("flags", &self.flags)
            .arg("resetAttemptsMade", flag(self.reset_attempts_made))
            .arg("resetAttemptsStarted", flag(self.reset_attempts_started))
            .arg("dryRun", flag(self.dry_run))
            .arg("owner", &self.ledger.owner)
            .arg("ttl", millis(self.ttl))
            .arg("audit", self.audit.unwrap_or_default());
    }
}

/// A batch of ids: `core.lua` + `retry.lua`.
pub struct RetryArgs<'a> {
    pub run: RunArgs<'a>,
    /// The run record, where the run's position is kept (per owner).
    pub record: &'a str,
    /// The run's position after this batch.
    pub position_after: u64,
    pub ids: &'a [String],
}

impl RetryArgs<'_> {
    pub fn call(&self) -> Call {
        let mut call = Call::default();
        self.run.push(&mut call);
        call.key("record", self.record)
            .arg("position", self.position_after);
        for id in self.ids {
            call.arg("ids", id);
        }
        call
    }
}

/// The call of a retry script (ours, or a variant under study in `benches/`) on `ids` of the
/// queue of `keys` with the settings of `req`, recording `position_after`.
pub fn retry_invocation<'a>(
    script: &'a Script,
    keys: &QueueKeys,
    req: &BatchRequest,
    ids: &[String],
    position_after: u64,
) -> ScriptInvocation<'a> {
    let args = RetryArgs {
        run: RunArgs::of(keys, req),
        record: &req.record,
        position_after,
        ids,
    };
    args.call().invocation(script)
}

/// One selector page: `core.lua` + `select.lua`.
pub struct PageArgs<'a> {
    pub run: RunArgs<'a>,
    pub record: &'a str,
    pub lock: String,
    /// The lock holder (the run key); "" takes no lock (dry runs).
    pub holder: &'a str,
    pub lock_ttl: Duration,
    /// finishedOn bounds in ms: lower inclusive (none: `-inf`), upper exclusive.
    pub lower: Option<i64>,
    pub upper: i64,
    pub max_jobs: u64,
    pub budget: u32,
    pub retry_budget: u32,
    /// Success rows to reply with (None: all).
    pub success_rows: Option<u64>,
    pub want_totals: bool,
    /// A dry run's position and matches so far (real runs keep theirs in the record).
    pub cursor: &'a Cursor,
    pub matched: u64,
    pub reason_contains: &'a str,
    pub expected_scanned: u64,
    pub work_budget: u64,
    pub bytes_budget: u64,
    /// A policy run's per-job cap and counts (None: not a policy run).
    pub guard: Option<&'a PolicyGuard>,
    pub names: &'a [String],
}

/// What a policy's run passes to its pages: its policy's per-job cap and where the counts
/// of the current and the previous period are kept (keys of [`QueueKeys::policy_retries`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyGuard {
    /// `maxRetriesPerJob`; 0: counted, no cap.
    pub max_per_job: u32,
    pub retries_now: String,
    pub retries_before: String,
    /// Of `retries_now`, set with each increment (two periods: a count lives one to two
    /// periods after the job's last automated retry).
    pub ttl: Duration,
}

impl PolicyGuard {
    /// The guard of policy `policy` (its uid) on the queue of `keys`, with the cap `max`, in
    /// periods of `period` at the time `now_ms` (milliseconds since the epoch).
    pub fn new(keys: &QueueKeys, policy: &str, max: u32, period: Duration, now_ms: i64) -> Self {
        let p = (period.as_millis().max(1)) as i64;
        let n = now_ms.div_euclid(p);
        Self {
            max_per_job: max,
            retries_now: keys.policy_retries(policy, n),
            retries_before: keys.policy_retries(policy, n - 1),
            ttl: period * 2,
        }
    }
}

impl PageArgs<'_> {
    pub fn call(&self) -> Call {
        let mut call = Call::default();
        self.run.push(&mut call);
        let lower = self
            .lower
            .map_or_else(|| "-inf".to_string(), |l| l.to_string());
        // Not a policy run: keys of no policy, never touched.
        let unused = self.run.queue.keys.policy_retries("", 0);
        let (now, before) = match self.guard {
            Some(g) => (g.retries_now.as_str(), g.retries_before.as_str()),
            None => (unused.as_str(), unused.as_str()),
        };
        call.key("record", self.record)
            .key("lock", self.lock.as_str())
            .key("retriesNow", now)
            .key("retriesBefore", before)
            .arg("holder", self.holder)
            .arg("lockTtl", millis(self.lock_ttl))
            .arg("lower", lower)
            .arg("upper", self.upper)
            .arg("maxJobs", self.max_jobs)
            .arg("budget", self.budget.max(1))
            .arg("cursorScore", &self.cursor.score)
            .arg("cursorId", &self.cursor.id)
            .arg("matched", self.matched)
            .arg("reason", self.reason_contains)
            .arg("scanned", self.expected_scanned)
            .arg("workBudget", self.work_budget)
            .arg("bytesBudget", self.bytes_budget)
            .arg(
                "guardMax",
                self.guard
                    .map_or(String::new(), |g| g.max_per_job.to_string()),
            )
            .arg("guardTtl", self.guard.map_or(1, |g| millis(g.ttl)))
            .arg("retryBudget", self.retry_budget.max(1))
            .arg(
                "rowsLeft",
                self.success_rows
                    .map_or(-1, |n| n.min(i64::MAX as u64) as i64),
            )
            .arg("wantTotals", if self.want_totals { "1" } else { "0" });
        for glob in self.names {
            call.arg("names", glob);
        }
        call
    }
}

/// The release of a selector run's lock: `unlock.lua`.
pub struct UnlockArgs<'a> {
    pub lock: String,
    pub holder: &'a str,
}

impl UnlockArgs<'_> {
    pub fn call(&self) -> Call {
        let mut call = Call::default();
        call.key("lock", self.lock.as_str())
            .arg("holder", self.holder);
        call
    }
}

#[cfg(test)]
mod tests;
