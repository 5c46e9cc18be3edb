//! The run's rules, pure and table-tested: where an id run stands, whether a dry run starts
//! over, how long the rate limit pauses, how many jobs the next selector page examines, and
//! how long to back off after failed tries. `plan` and `execute` ask them; `machine::step`
//! applies them to the next status and memory.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The first backoff after a failed try, and the longest.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Each page call should keep Redis busy about this long.
pub const PAGE_TARGET: Duration = Duration::from_millis(2);
/// Jobs examined and matched in the first page, before anything is known of their cost (500
/// jobs at the 15 us/job once measured on a 1M-job queue would be 7.5 ms of script already).
pub const PAGE_FIRST: u32 = 50;
/// The bounds the sizing keeps to: jobs examined per call, and of them matched per call.
pub const PAGE_MIN: u32 = 20;
pub const PAGE_MAX: u32 = 10_000;
pub const RETRY_MAX: u32 = 2_000;
/// A page's budgets grow at most this many times per page.
pub const PAGE_GROWTH: u32 = 2;
/// How many recent pages the cost estimate looks at.
pub const COST_WINDOW: usize = 8;

/// One page as the sizing saw it: what it examined and matched, and its round trip in us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSample {
    pub examined: u64,
    pub matched: u64,
    pub micros: u64,
}

/// What the next selector page may do, learned from what the recent pages cost: pages are
/// sized by the work they ask of Redis, not by one round trip.
///
/// A page's round trip is Redis's own time for the call plus what the network and the
/// schedulers of both ends add, and the additions are never negative: so the low end of the
/// time per job over the recent pages (their lower quartile: not the least, which one page
/// that met a warm cache would set) is a close estimate of what a job costs Redis (a script
/// cannot time itself: Redis freezes `TIME` for a whole script from 7.2). Two costs are kept
/// apart: a job examined (a filter that rejects it), and a job matched (retried). The next
/// page may examine `PAGE_TARGET` worth of jobs at the first cost and match `PAGE_TARGET`
/// worth at the second, so a page that suddenly matches everything it examines still costs
/// at most about twice the target; before any page matched most of what it examined, the
/// matches are held to the first page's size. Budgets at most double per page, within
/// `[PAGE_MIN, PAGE_MAX]` examined and `[PAGE_MIN, RETRY_MAX]` matched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageCost {
    recent: std::collections::VecDeque<PageSample>,
    examine: u32,
    retry: u32,
}

impl PageCost {
    /// The budgets of the next page (jobs examined, jobs matched), never more than a
    /// second's allowance of the rate limit (`jobs_per_second`, 0: none).
    pub fn budgets(&self, jobs_per_second: u32) -> (u32, u32) {
        let (examine, retry) = match self.examine {
            0 => (PAGE_FIRST, PAGE_FIRST),
            e => (e, self.retry),
        };
        match jobs_per_second {
            0 => (examine, retry),
            rate => (examine.min(rate), retry.min(rate)),
        }
    }

    /// Learns from a page that examined `examined` jobs and matched `matched` of them in
    /// `took`, and sizes the next one.
    pub fn observe(&mut self, examined: u64, matched: u64, took: Duration) {
        let (examine, retry) = self.budgets(0);
        if self.recent.len() == COST_WINDOW {
            self.recent.pop_front();
        }
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.recent.push_back(PageSample {
            examined,
            matched,
            micros,
        });
        let least = |per: &dyn Fn(&PageSample) -> Option<u64>| {
            let cost = |s: &PageSample| Some(s.micros as f64 / per(s)?.max(1) as f64);
            let mut costs: Vec<f64> = self.recent.iter().filter_map(cost).collect();
            costs.sort_by(f64::total_cmp);
            costs.get(costs.len() / 4).copied()
        };
        let target = PAGE_TARGET.as_micros() as f64;
        let size = |cost: Option<f64>, current: u32, max: u32| -> u32 {
            let fit = cost.map_or(f64::from(current), |c| target / c.max(0.01));
            let grown = current.saturating_mul(PAGE_GROWTH);
            (fit.min(f64::from(u32::MAX)) as u32)
                .min(grown)
                .clamp(PAGE_MIN, max)
        };
        let per_examined = least(&|s| (s.examined > 0).then_some(s.examined));
        // Only pages that matched most of what they examined say what a match costs.
        let per_match =
            least(&|s| (s.matched > 0 && 2 * s.matched >= s.examined).then_some(s.matched));
        self.examine = size(per_examined, examine, PAGE_MAX);
        self.retry = size(per_match, retry, RETRY_MAX);
    }
}

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
    fn page_cost_sizes_pages_by_the_low_end_of_the_cost_per_job() {
        let us = Duration::from_micros;
        let mut c = PageCost::default();
        assert_eq!(c.budgets(0), (PAGE_FIRST, PAGE_FIRST));
        assert_eq!(c.budgets(20), (20, 20));
        // 50 jobs, all matched, in 500 us: 10 us/job; 200 fit 2 ms, growth caps at 100.
        c.observe(50, 50, us(500));
        assert_eq!(c.budgets(0), (100, 100));
        c.observe(100, 100, us(1_000));
        assert_eq!(c.budgets(0), (200, 200));
        c.observe(200, 200, us(2_000));
        assert_eq!(c.budgets(0), (200, 200));
        // A round trip the scheduler stretched does not shrink the page: the low end wins.
        c.observe(200, 200, us(30_000));
        assert_eq!(c.budgets(0), (200, 200));
        // Cheaper jobs: bigger pages, doubling at most, to the bounds.
        c.observe(200, 200, us(2));
        c.observe(200, 200, us(2));
        assert_eq!(c.budgets(0), (400, 400));
        for _ in 0..20 {
            c.observe(300, 300, us(3));
        }
        assert_eq!(c.budgets(0), (PAGE_MAX, RETRY_MAX));
        assert_eq!(c.budgets(500), (500, 500));
        // Dearer jobs, once the cheap pages have left the window: smaller pages.
        for _ in 0..COST_WINDOW {
            c.observe(1_000, 1_000, us(200_000));
        }
        assert_eq!(c.budgets(0), (PAGE_MIN, PAGE_MIN));
    }

    #[test]
    fn page_cost_holds_matches_to_what_matching_pages_cost() {
        let us = Duration::from_micros;
        let mut c = PageCost::default();
        // A filter rejects nearly everything, at 2 us per job examined.
        for _ in 0..10 {
            let (examine, _) = c.budgets(0);
            c.observe(u64::from(examine), 1, us(2 * u64::from(examine)));
        }
        // Examined: 1,000 fit 2 ms. Matched: no page has said what a match costs, so
        // matches stay at the first page's size.
        assert_eq!(c.budgets(0), (1_000, PAGE_FIRST));
        // The worst next page, everything it examines matched at 12 us a job: within the
        // target for the matches, and twice it in all.
        let (e, m) = c.budgets(0);
        assert!(u64::from(e) * 2 + u64::from(m) * 12 <= 2 * 2_000);
        // Pages that match all they examine, at 12 us per job: 166 fit 2 ms, for matches
        // and (now that most recent pages are such) for jobs examined.
        for _ in 0..6 {
            let (_, retry) = c.budgets(0);
            c.observe(
                u64::from(retry),
                u64::from(retry),
                us(12 * u64::from(retry)),
            );
        }
        assert_eq!(c.budgets(0), (166, 166));
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
