//! How many jobs entered a state since a time: one `ZCOUNT` on the state's set, whose scores
//! are the jobs' finishedOn (milliseconds). O(log n) in Redis whatever the set's size: a
//! policy's failure trigger reads it every few seconds inside someone else's production Redis.

use super::{Connection, Error, QueueKeys};

/// Jobs of `state` (`failed` or `completed`) that finished at or after `since_ms`.
pub async fn finished_since<C: Connection>(
    conn: &mut C,
    keys: &QueueKeys,
    state: &str,
    since_ms: i64,
) -> Result<u64, Error> {
    let redactor = conn.redactor().clone();
    redis::cmd("ZCOUNT")
        .arg(keys.key(state))
        .arg(since_ms)
        .arg("+inf")
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(e, &redactor))
}
