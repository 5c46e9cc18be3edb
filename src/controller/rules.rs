//! The run's rules, pure and table-tested: where an id run stands, whether a dry run starts
//! over, how long the rate limit pauses, how many jobs the next selector page examines, and
//! how long to back off after failed tries. `plan` and `execute` ask them; `machine::step`
//! applies them to the next status and memory.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The first backoff after a failed try, and the longest.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Each page call should keep Redis busy about this long at most.
pub const PAGE_TARGET: Duration = Duration::from_millis(2);
/// Jobs examined per page: at first, and the bounds the adaptation keeps to. The first page
/// starts small: its speed is unknown (500 jobs at the 15 us/job measured on a 1M-job queue are
/// already 7.5 ms of script, before cold memory); the budget grows by half per fast page.
pub const PAGE_FIRST: u32 = 50;
pub const PAGE_MIN: u32 = 20;
pub const PAGE_MAX: u32 = 2_000;

/// Where an id run stands, from the position its record in Redis keeps (written with each
/// batch) and the one its status shows. The status may be behind the record (a crash lost a
/// status write): the run replays from the status, which the ledger makes harmless and which
/// brings back the lost rows. A status ahead of the record is a lost state (`Err`: how many
/// processed jobs the record no longer covers) once the operator had started the run; a
/// status written by hand before that is not believed (the record decides).
pub fn position(recorded: u64, in_status: u64, started: bool) -> Result<u64, u64> {
    match recorded < in_status {
        true if started => Err(in_status - recorded),
        _ => Ok(recorded.min(in_status)),
    }
}

/// Whether a selector dry run starts over: its scan lives in the operator's memory only, so
/// a run whose memory is gone (a restart, another replica) scans again from the start, and
/// says so if its status shows it had begun.
pub fn restart(dry_run: bool, remembered: bool, scanned_in_status: u64) -> bool {
    dry_run && !remembered && scanned_in_status > 0
}

/// The rate limit's pause after a batch of `last_batch` jobs at `jobs_per_second` (0:
/// unlimited, no pause).
pub fn pause(last_batch: usize, jobs_per_second: u32) -> Option<Duration> {
    (jobs_per_second > 0)
        .then(|| Duration::from_secs_f64(last_batch as f64 / f64::from(jobs_per_second)))
}

/// Jobs the next selector page may examine: the page budget (`PAGE_FIRST` before the first
/// page), never more than a second's allowance of the rate limit.
pub fn page_size(budget: u32, jobs_per_second: u32) -> u32 {
    let budget = if budget == 0 { PAGE_FIRST } else { budget };
    match jobs_per_second {
        0 => budget,
        rate => budget.min(rate),
    }
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

/// The budget after a page of the current `budget` (0: the first) that took `took`.
pub fn budget_after(budget: u32, took: Duration) -> u32 {
    let current = if budget == 0 { PAGE_FIRST } else { budget };
    next_budget(current, took, PAGE_TARGET, PAGE_MIN, PAGE_MAX)
}

/// The backoff after `failures` consecutive failed tries: 1 s doubling up to 60 s, each with
/// up to as much again of jitter (never past 60 s), so that runs failing together do not
/// retry together. The jitter is drawn from `seed` (per object), which keeps this pure;
/// without a seed there is none.
pub fn backoff(failures: u32, seed: Option<u64>) -> Duration {
    let nth = failures.max(1) as usize - 1;
    let exponential = ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .without_max_times();
    match seed {
        Some(seed) => exponential.with_jitter().with_jitter_seed(seed),
        None => exponential,
    }
    .build()
    .nth(nth)
    .unwrap_or(MAX_BACKOFF)
    .min(MAX_BACKOFF)
}

/// The seed of an object's backoff jitter, from its uid.
pub fn jitter_seed(uid: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn position_table() {
        // (recorded, in status, started) -> position or jobs uncovered
        let table = [
            // Status behind the record (a lost status write): replay from the status.
            ((500, 300, true), Ok(300)),
            ((300, 300, true), Ok(300)),
            // Record behind a status the operator wrote: lost, by this many jobs.
            ((100, 300, true), Err(200)),
            ((0, 300, true), Err(300)),
            // A status written by hand before the run started: the record decides.
            ((0, 60, false), Ok(0)),
            ((40, 60, false), Ok(40)),
            ((0, 0, false), Ok(0)),
        ];
        for ((recorded, in_status, started), want) in table {
            assert_eq!(
                position(recorded, in_status, started),
                want,
                "{recorded} {in_status} {started}"
            );
        }
    }

    #[test]
    fn restart_table() {
        // (dry run, scan remembered, scanned in status) -> starts over
        let table = [
            ((true, false, 10), true),
            ((true, false, 0), false),
            ((true, true, 10), false),
            ((false, false, 10), false),
        ];
        for ((dry, remembered, scanned), want) in table {
            assert_eq!(restart(dry, remembered, scanned), want);
        }
    }

    #[test]
    fn rate_pause_table() {
        let table = [
            ((10, 0), None),
            ((10, 20), Some(ms(500))),
            ((20, 20), Some(ms(1000))),
            ((0, 20), Some(ms(0))),
            ((3, 2), Some(ms(1500))),
        ];
        for ((last_batch, rate), want) in table {
            assert_eq!(pause(last_batch, rate), want, "{last_batch} at {rate}/s");
        }
    }

    #[test]
    fn page_budget_table() {
        // next_budget(current, took, target, min, max)
        let table = [
            ((500, 1, 4, 50, 5000), 750),
            ((500, 3, 4, 50, 5000), 500),
            ((500, 9, 4, 50, 5000), 250),
            ((60, 20, 4, 50, 5000), 50),
            ((4000, 0, 4, 50, 5000), 5000),
            ((1, 0, 4, 1, 5000), 2),
        ];
        for ((current, took, target, min, max), want) in table {
            assert_eq!(next_budget(current, ms(took), ms(target), min, max), want);
        }
        // The first page, and the rate limit's cap.
        assert_eq!(page_size(0, 0), PAGE_FIRST);
        assert_eq!(page_size(0, 20), 20);
        assert_eq!(page_size(900, 0), 900);
        assert_eq!(page_size(900, 100), 100);
        assert_eq!(budget_after(0, ms(0)), 75);
        assert_eq!(budget_after(0, ms(50)), 25);
        assert_eq!(budget_after(PAGE_MAX, ms(0)), PAGE_MAX);
        assert_eq!(budget_after(PAGE_MIN, ms(50)), PAGE_MIN);
    }

    #[test]
    fn backoff_doubles_from_1s_to_60s_with_jitter() {
        for seed in [0, 1, 42, u64::MAX] {
            let mut base = MIN_BACKOFF;
            for failures in 1..=12 {
                let d = backoff(failures, Some(seed));
                let top = (base * 2).min(MAX_BACKOFF);
                assert!(d >= base.min(MAX_BACKOFF) && d <= top, "{failures}: {d:?}");
                let again = backoff(failures, Some(seed));
                assert_eq!(d, again, "the same seed, the same delay");
                assert_eq!(backoff(failures, None), base, "no seed, no jitter");
                base = (base * 2).min(MAX_BACKOFF);
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|s| backoff(3, Some(s))).collect();
        assert!(spread.len() > 10, "jitter spreads objects: {spread:?}");
    }
}
