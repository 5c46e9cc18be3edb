//! Selector runs: pages of the source state's sorted set, filtered in Redis and retried in
//! the same atomic call (`core.lua` + `select.lua`), with a keyset cursor that the script
//! keeps in the run's record for real runs (so a crash can neither skip nor repeat a job, and
//! nothing a user writes into the object's status can move it).
//!
//! Also here, pure: the reference glob matcher (what the script's matcher must agree with),
//! and the page size that keeps each call short.

use std::time::Duration;

use redis::{Script, Value};

use super::{
    connection::Connection,
    engine::{JobOutcome, decode},
    error::Error,
    keys::QueueKeys,
    scripts::{self, BatchRequest, Cursor, PageArgs, PolicyGuard, RunArgs, UnlockArgs},
};

/// What one page call is asked to do.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// The run's settings (state, release, resets, dry run, ledger, record).
    pub run: BatchRequest,
    /// The run key: the lock holder (none for dry runs).
    pub run_key: String,
    pub lock_ttl: Duration,
    /// finishedOn bounds in ms: lower inclusive, upper exclusive (the frozen snapshot).
    pub lower: Option<i64>,
    pub upper: i64,
    pub max_jobs: u64,
    /// At most this many jobs examined in the call.
    pub budget: u32,
    /// At most this many of them matched (retried, or planned in a dry run) in the call.
    pub retry_budget: u32,
    /// Success rows the reply carries (the status keeps them only while the run is within
    /// its row limit); None: every row. Other rows always come.
    pub success_rows: Option<u64>,
    /// Real runs: whether the reply carries the run's totals from its record (else the
    /// caller adds up [`Page::counts`] of the calls since the last totals).
    pub want_totals: bool,
    /// Dry runs keep their position in status (nothing is written to Redis).
    pub dry_cursor: Option<Cursor>,
    pub dry_matched: u64,
    pub reason_contains: Option<String>,
    /// Globs on the job name (`*`, `?`); any may match; none = any name.
    pub names: Vec<String>,
    /// A policy's run: its per-job cap and counts.
    pub guard: Option<PolicyGuard>,
    /// Real runs: the jobs the run's status says its record had scanned. A record that is
    /// missing or behind it is reported as [`PageOutcome::Lost`].
    pub expected_scanned: u64,
}

/// Matching work units one page call may spend (one per matcher step, one per 16 bytes of
/// failedReason searched). Measured on this project's 2-core test machine (tests/e2e_abuse.rs,
/// Redis 7.0): a matcher step costs up to ~0.3 us and a byte searched up to ~15 ns in the
/// worst case, so a call spends at most ~2.4 ms on matching.
pub const WORK_BUDGET: u64 = 8_000;
/// Bytes of job names and failed reasons one page call may copy out of the job hashes
/// (~2 ms per MiB measured, the copy into Lua included).
pub const BYTES_BUDGET: u64 = 1 << 20;

/// What one page call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub done: bool,
    pub cursor: Option<Cursor>,
    /// Totals of the run so far (from the record; for dry runs, from the request).
    pub scanned: u64,
    pub matched: u64,
    /// Jobs left in the window after the cursor (an estimate: ties at its score excluded).
    pub remaining: u64,
    /// This call's matches, in scan order: every one that is not a success, and success
    /// rows within the request's `success_rows`.
    pub rows: Vec<(String, JobOutcome)>,
    /// This call's matches by name and by failed reason (first 200 bytes); dry runs only
    /// (the preview), empty for real runs.
    pub names: Vec<(String, u64)>,
    pub reasons: Vec<(String, u64)>,
    /// finishedOn of this call's first and last match.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// A real run's results so far by outcome, from its record (exact across crashes);
    /// empty unless the request asked for them.
    pub totals: Vec<(JobOutcome, u64)>,
    /// The upper bound the run really uses (a real run's record keeps the first one).
    pub upper: i64,
    /// Jobs skipped because they could not be examined (key not a hash while a filter must
    /// read it, or name/reason too large to match in one bounded call): a real run's total,
    /// a dry run's count in this call.
    pub unexamined: u64,
    /// Matched jobs the run's policy had retried before (policy runs: the run's total; dry
    /// runs: this call's).
    pub refailed: u64,
    /// What this call examined and matched, and its matches by outcome (every one, rows or
    /// not).
    pub call_scanned: u64,
    pub call_matched: u64,
    pub counts: Vec<(JobOutcome, u64)>,
}

/// The answer of a page call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageOutcome {
    Page(Box<Page>),
    /// Another run (named) holds the queue-and-state lock; nothing was written.
    Busy(String),
    /// The run's record is missing (`scanned` None) or behind what its status says: the
    /// connection now reaches other data, or Redis lost writes. Nothing was written.
    Lost {
        scanned: Option<u64>,
        matched: u64,
    },
}

/// Runs selector pages; cheap to clone, holds the loaded script.
#[derive(Clone)]
pub struct Selector {
    script: Script,
    unlock: Script,
}

impl Default for Selector {
    fn default() -> Self {
        Self {
            script: Script::new(scripts::SELECT_LUA),
            unlock: Script::new(scripts::UNLOCK_LUA),
        }
    }
}

impl Selector {
    /// Runs one page.
    pub async fn page<C: Connection>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        req: &PageRequest,
    ) -> Result<PageOutcome, Error> {
        let dry = req.run.dry_run;
        let start = Cursor::default();
        let args = PageArgs {
            run: RunArgs::of(keys, &req.run),
            record: &req.run.record,
            lock: keys.lock(req.run.state.as_str()),
            holder: if dry { "" } else { req.run_key.as_str() },
            lock_ttl: req.lock_ttl,
            lower: req.lower,
            upper: req.upper,
            max_jobs: req.max_jobs,
            budget: req.budget,
            retry_budget: req.retry_budget,
            success_rows: req.success_rows,
            want_totals: req.want_totals,
            cursor: req.dry_cursor.as_ref().unwrap_or(&start),
            matched: req.dry_matched,
            reason_contains: req.reason_contains.as_deref().unwrap_or(""),
            expected_scanned: if dry { 0 } else { req.expected_scanned },
            work_budget: WORK_BUDGET,
            bytes_budget: BYTES_BUDGET,
            guard: req.guard.as_ref(),
            names: &req.names,
        };
        let reply: Vec<Value> = (args.call().invocation(&self.script))
            .invoke_async(conn)
            .await
            .map_err(|e| Error::redis(e, conn.redactor()))?;
        decode_page(reply, &req.run.ledger.owner)
    }

    /// Releases the queue-and-state lock of `state` if `run_key` holds it (a run that stops:
    /// suspended, deleted), so that the next run need not wait for it to expire.
    pub async fn unlock<C: Connection>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        state: &str,
        run_key: &str,
    ) -> Result<bool, Error> {
        let args = UnlockArgs {
            lock: keys.lock(state),
            holder: run_key,
        };
        let released: i64 = (args.call().invocation(&self.unlock))
            .invoke_async(conn)
            .await
            .map_err(|e| Error::redis(e, conn.redactor()))?;
        Ok(released == 1)
    }
}

/// A reply element as text; bytes that are not UTF-8 (job names and ids are whatever the
/// producer wrote) become U+FFFD rather than failing the page.
fn text(v: &Value) -> Result<String, Error> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        v => {
            redis::from_redis_value_ref(v).map_err(|e| Error::Protocol(format!("page reply: {e}")))
        }
    }
}

fn number(v: &Value) -> Result<u64, Error> {
    redis::from_redis_value_ref(v).map_err(|e| Error::Protocol(format!("page reply: {e}")))
}

fn number_i64(v: &Value) -> Result<i64, Error> {
    let t = text(v)?;
    t.parse::<f64>()
        .map(|f| f as i64)
        .map_err(|_| Error::Protocol(format!("page reply: bound {t}")))
}

fn pairs(v: &Value) -> Result<Vec<(String, String)>, Error> {
    let items: Vec<Value> =
        redis::from_redis_value_ref(v).map_err(|e| Error::Protocol(format!("page reply: {e}")))?;
    items
        .chunks(2)
        .map(|p| match p {
            [a, b] => Ok((text(a)?, text(b)?)),
            _ => Err(Error::Protocol("page reply: odd list".into())),
        })
        .collect()
}

fn decode_page(reply: Vec<Value>, own: &str) -> Result<PageOutcome, Error> {
    let status = reply.first().map(text).transpose()?;
    match (status.as_deref(), reply.as_slice()) {
        (Some("busy"), [_, holder]) => Ok(PageOutcome::Busy(text(holder)?)),
        (Some("lost"), [_, scanned, matched]) => Ok(PageOutcome::Lost {
            scanned: text(scanned)?.parse().ok(),
            matched: number(matched)?,
        }),
        (Some(s @ ("more" | "done")), [_, fields @ ..]) if fields.len() == 17 => {
            decode_fields(s == "done", fields, own).map(|p| PageOutcome::Page(Box::new(p)))
        }
        _ => Err(Error::Protocol(format!(
            "page reply with status {} and {} elements",
            status.as_deref().unwrap_or("(none)"),
            reply.len()
        ))),
    }
}

/// `{ name, count, ... }` of a page reply.
fn counted(v: &Value) -> Result<Vec<(String, u64)>, Error> {
    pairs(v)?
        .into_iter()
        .map(|(k, n)| Ok((k, n.parse().map_err(|_| Error::Protocol(n))?)))
        .collect()
}

/// `{ code, count, ... }` of a page reply by outcome (code "E": every error).
fn by_outcome(v: &Value, own: &str) -> Result<Vec<(JobOutcome, u64)>, Error> {
    let total = |(code, n): (String, u64)| -> Result<(JobOutcome, u64), Error> {
        let outcome = match code.as_str() {
            "E" => JobOutcome::Error(String::new()),
            c => decode(c, own)?,
        };
        Ok((outcome, n))
    };
    counted(v)?.into_iter().map(total).collect()
}

/// The 17 elements after the status of a "more" or "done" reply (see `select.lua`).
fn decode_fields(done: bool, fields: &[Value], own: &str) -> Result<Page, Error> {
    let [
        cs,
        cid,
        scanned,
        matched,
        remaining,
        rows,
        names,
        reasons,
        oldest,
        newest,
        totals,
        upper,
        unexamined,
        refailed,
        call_scanned,
        call_matched,
        counts,
    ] = fields
    else {
        return Err(Error::Protocol(format!(
            "page reply of {} fields",
            fields.len()
        )));
    };
    let (score, id) = (text(cs)?, text(cid)?);
    let when = |v: &Value| text(v).map(|t| t.parse::<f64>().ok().map(|f| f as i64));
    Ok(Page {
        done,
        cursor: (!score.is_empty()).then_some(Cursor { score, id }),
        scanned: number(scanned)?,
        matched: number(matched)?,
        remaining: number(remaining)?,
        rows: pairs(rows)?
            .into_iter()
            .map(|(id, r)| Ok((id, decode(&r, own)?)))
            .collect::<Result<_, Error>>()?,
        names: counted(names)?,
        reasons: counted(reasons)?,
        oldest: when(oldest)?,
        newest: when(newest)?,
        totals: by_outcome(totals, own)?,
        counts: by_outcome(counts, own)?,
        call_scanned: number(call_scanned)?,
        call_matched: number(call_matched)?,
        upper: number_i64(upper)?,
        unexamined: number(unexamined)?,
        refailed: number(refailed)?,
    })
}

/// Whether `glob` matches all of `name`: the reference for the script's matcher (which must
/// agree with it on every input). `*` matches any run of characters, `?` one character,
/// where a character is a byte and the continuation bytes (0x80-0xBF) after it (one UTF-8
/// character when the name is valid UTF-8); every other character stands for itself.
/// Dynamic programming over (glob, name) positions: linear space, #glob * #name time.
pub fn glob_matches(glob: &str, name: &[u8]) -> bool {
    let chars = split_chars(name);
    let mut row: Vec<bool> = vec![false; chars.len() + 1];
    row[0] = true;
    for token in glob.chars() {
        let mut next = vec![false; chars.len() + 1];
        match token {
            '*' => {
                let mut any = false;
                for (k, cell) in next.iter_mut().enumerate() {
                    any |= row[k];
                    *cell = any;
                }
            }
            c => {
                let mut buf = [0; 4];
                let lit = c.encode_utf8(&mut buf).as_bytes();
                for (k, ch) in chars.iter().enumerate() {
                    next[k + 1] = row[k] && (c == '?' || *ch == lit);
                }
            }
        }
        row = next;
    }
    row[chars.len()]
}

/// The characters of `name` as the script counts them.
fn split_chars(name: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=name.len() {
        if i == name.len() || !(0x80..=0xBF).contains(&name[i]) {
            out.push(&name[start..i]);
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests;
