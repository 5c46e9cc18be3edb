//! Selector runs: pages of the source state's sorted set, filtered in Redis and retried in
//! the same atomic call (`core.lua` + `select.lua`), with a keyset cursor that the script
//! keeps in the run's record for real runs (so a crash can neither skip nor repeat a job, and
//! nothing a user writes into the object's status can move it).
//!
//! Also here, pure: name globs as Lua patterns, and the page size that keeps each call short.

use std::time::Duration;

use redis::{Script, Value, aio::ConnectionLike};

use super::{
    BatchRequest, EngineError, JobOutcome, QueueKeys,
    engine::{decode, queue_invocation, script_error},
};

/// A keyset position: the score (finishedOn, as Redis writes it) and id of the last job
/// examined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub score: String,
    pub id: String,
}

/// What one page call is asked to do.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// The run's settings (state, release, resets, dry run, ledger).
    pub run: BatchRequest,
    /// The run key: the lock holder (none for dry runs) and the record's name.
    pub run_key: String,
    pub lock_ttl: Duration,
    /// finishedOn bounds in ms: lower inclusive, upper exclusive (the frozen snapshot).
    pub lower: Option<i64>,
    pub upper: i64,
    pub max_jobs: u64,
    /// At most this many jobs examined in the call.
    pub budget: u32,
    /// Dry runs keep their position in status (nothing is written to Redis).
    pub dry_cursor: Option<Cursor>,
    pub dry_matched: u64,
    pub reason_contains: Option<String>,
    /// Globs on the job name (`*`, `?`); any may match; none = any name.
    pub names: Vec<String>,
}

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
    /// This call's matches, in scan order.
    pub rows: Vec<(String, JobOutcome)>,
    /// This call's matches by name and by failed reason (first 200 bytes); dry runs only
    /// (the preview), empty for real runs.
    pub names: Vec<(String, u64)>,
    pub reasons: Vec<(String, u64)>,
    /// finishedOn of this call's first and last match.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// A real run's results so far by outcome, from its record (exact across crashes).
    pub totals: Vec<(JobOutcome, u64)>,
}

/// The answer of a page call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageOutcome {
    Page(Page),
    /// Another run (named) holds the queue-and-state lock; nothing was written.
    Busy(String),
}

/// Runs selector pages; cheap to clone, holds the loaded script.
#[derive(Clone)]
pub struct Selector {
    script: Script,
}

impl Default for Selector {
    fn default() -> Self {
        Self {
            script: Script::new(concat!(
                include_str!("core.lua"),
                include_str!("select.lua")
            )),
        }
    }
}

impl Selector {
    /// Runs one page.
    pub async fn page<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
        req: &PageRequest,
    ) -> Result<PageOutcome, EngineError> {
        let mut inv = queue_invocation(&self.script, keys, &req.run);
        let dry = req.run.dry_run;
        let cursor = req.dry_cursor.clone().unwrap_or_default();
        inv.key(keys.record(&req.run_key))
            .key(keys.lock(req.run.state.as_str()))
            .arg(if dry { "" } else { req.run_key.as_str() })
            .arg(req.lock_ttl.as_millis().max(1) as u64)
            .arg(
                req.lower
                    .map_or_else(|| "-inf".to_string(), |l| l.to_string()),
            )
            .arg(req.upper)
            .arg(req.max_jobs)
            .arg(req.budget.max(1))
            .arg(cursor.score)
            .arg(cursor.id)
            .arg(req.dry_matched)
            .arg(req.reason_contains.as_deref().unwrap_or(""));
        for glob in &req.names {
            inv.arg(glob_pattern(glob));
        }
        let reply: Vec<Value> = inv.invoke_async(conn).await.map_err(script_error)?;
        decode_page(reply)
    }
}

fn text(v: &Value) -> Result<String, EngineError> {
    redis::from_redis_value_ref(v).map_err(|e| EngineError::Protocol(format!("page reply: {e}")))
}

fn number(v: &Value) -> Result<u64, EngineError> {
    redis::from_redis_value_ref(v).map_err(|e| EngineError::Protocol(format!("page reply: {e}")))
}

fn pairs(v: &Value) -> Result<Vec<(String, String)>, EngineError> {
    let items: Vec<Value> = redis::from_redis_value_ref(v)
        .map_err(|e| EngineError::Protocol(format!("page reply: {e}")))?;
    items
        .chunks(2)
        .map(|p| match p {
            [a, b] => Ok((text(a)?, text(b)?)),
            _ => Err(EngineError::Protocol("page reply: odd list".into())),
        })
        .collect()
}

fn decode_page(reply: Vec<Value>) -> Result<PageOutcome, EngineError> {
    let status = reply.first().map(text).transpose()?;
    match (status.as_deref(), reply.as_slice()) {
        (Some("busy"), [_, holder]) => Ok(PageOutcome::Busy(text(holder)?)),
        (
            Some(s @ ("more" | "done")),
            [
                _,
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
            ],
        ) => {
            let (score, id) = (text(cs)?, text(cid)?);
            let counted = |v: &Value| -> Result<Vec<(String, u64)>, EngineError> {
                pairs(v)?
                    .into_iter()
                    .map(|(k, n)| Ok((k, n.parse().map_err(|_| EngineError::Protocol(n))?)))
                    .collect()
            };
            let when = |v: &Value| text(v).map(|t| t.parse::<f64>().ok().map(|f| f as i64));
            Ok(PageOutcome::Page(Page {
                done: s == "done",
                cursor: (!score.is_empty()).then_some(Cursor { score, id }),
                scanned: number(scanned)?,
                matched: number(matched)?,
                remaining: number(remaining)?,
                rows: pairs(rows)?
                    .into_iter()
                    .map(|(id, r)| Ok((id, decode(&r)?)))
                    .collect::<Result<_, EngineError>>()?,
                names: counted(names)?,
                reasons: counted(reasons)?,
                oldest: when(oldest)?,
                newest: when(newest)?,
                totals: counted(totals)?
                    .into_iter()
                    .map(|(code, n)| {
                        let outcome = match code.as_str() {
                            "E" => JobOutcome::Error(String::new()),
                            c => decode(c)?,
                        };
                        Ok((outcome, n))
                    })
                    .collect::<Result<_, EngineError>>()?,
            }))
        }
        _ => Err(EngineError::Protocol(format!(
            "page reply with status {} and {} elements",
            status.as_deref().unwrap_or("(none)"),
            reply.len()
        ))),
    }
}

/// A name glob (`*` any run, `?` one character) as an anchored Lua pattern matching the
/// whole name; every other character stands for itself.
pub fn glob_pattern(glob: &str) -> Vec<u8> {
    // One UTF-8 character: a lead byte (ASCII, or 0xC2-0xF4) and its continuation bytes.
    const ONE_CHAR: &[u8] = b"[%z\x01-\x7f\xc2-\xf4][\x80-\xbf]*";
    let mut out = vec![b'^'];
    for c in glob.chars() {
        match c {
            '*' => out.extend_from_slice(b".*"),
            '?' => out.extend_from_slice(ONE_CHAR),
            '^' | '$' | '(' | ')' | '%' | '.' | '[' | ']' | '+' | '-' => {
                out.push(b'%');
                out.push(c as u8);
            }
            '\0' => out.extend_from_slice(b"%z"),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'$');
    out
}

/// The budget of the next page: grows while calls stay well under `target`, halves when one
/// takes longer, within `[min, max]` jobs examined per call.
pub fn next_budget(current: u32, took: Duration, target: Duration, min: u32, max: u32) -> u32 {
    let next = if took > target {
        current / 2
    } else if took < target / 2 {
        current.saturating_add(current / 2).max(current + 1)
    } else {
        current
    };
    next.clamp(min, max)
}

#[cfg(test)]
mod tests;
