//! Plan step, pure: which job ids a run covers, which slice the next batch takes, the run
//! key, and a selector's snapshot bound and dry-run preview.

use std::collections::HashMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};

use crate::{
    bullmq::{Cursor, Page},
    crd::{JobRetrySpec, Preview, ValueCount},
};

/// The distinct ids of the run, in order of first appearance.
pub fn target_ids(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// The run key: `spec.runKey`, else `<namespace>/<name>`.
pub fn run_key(spec: &JobRetrySpec, namespace: &str, name: &str) -> String {
    spec.run_key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| format!("{namespace}/{name}"))
}

/// Where an id run stands, from the position its record in Redis keeps (written with each
/// batch) and the one its status shows. The status may be behind the record (a crash lost a
/// status write): the run replays from the status, which the ledger makes harmless and which
/// brings back the lost rows. A status ahead of the record is a lost state (`Err`: how many
/// processed jobs the record no longer covers) once the operator had started the run; a
/// status written by hand before that is not believed (the record decides).
pub fn id_position(recorded: u64, in_status: u64, started: bool) -> Result<u64, u64> {
    match recorded < in_status {
        true if started => Err(in_status - recorded),
        _ => Ok(recorded.min(in_status)),
    }
}

/// Why a run whose record in Redis is missing or behind its status stops: what the status
/// says, what Redis has, and how many processed jobs the record no longer covers.
pub fn lost_state(status_says: &str, redis_has: &str, uncovered: u64) -> String {
    format!(
        "the run's state in Redis is lost: its status says {status_says}, but Redis has {redis_has}; the Secret now points at other data, or Redis lost acknowledged writes ({uncovered} processed jobs are not covered by the record). The run stops and will not retry anything again; check the Secret and Redis, then create a new JobRetry"
    )
}

/// Jobs per batch: the configured size, lowered to the rate limit so that one batch never
/// exceeds a second's allowance.
pub fn batch_size(configured: u64, jobs_per_second: u32) -> usize {
    let limit = if jobs_per_second == 0 {
        configured
    } else {
        configured.min(jobs_per_second.into())
    };
    limit.max(1) as usize
}

/// The next batch after `processed` jobs.
pub fn next_batch(ids: &[String], processed: u64, size: usize) -> &[String] {
    let start = (processed as usize).min(ids.len());
    &ids[start..(start + size).min(ids.len())]
}

/// A time bound as finishedOn compares with it: finishedOn is a whole number of ms, so a
/// bound with a finer fraction is rounded up to the next ms, which selects exactly the same
/// jobs (`finishedOn >= t` and `finishedOn < t` both hold for the same integers).
pub fn ms_ceil(t: &Time) -> i64 {
    let ns = t.0.as_nanosecond();
    ns.div_euclid(1_000_000) as i64 + i64::from(ns.rem_euclid(1_000_000) != 0)
}

/// A bound in ms as status shows it (with its milliseconds).
pub fn micro_time(ms: i64) -> Option<MicroTime> {
    Timestamp::from_millisecond(ms).ok().map(MicroTime)
}

/// A selector run's snapshot: only jobs that finished before this (ms) are candidates; the
/// selector's `finishedBefore`, or the time the operator first saw the object if earlier.
/// Once frozen, it stays.
pub fn upper_bound(frozen: Option<i64>, finished_before: Option<i64>, now: i64) -> i64 {
    frozen.unwrap_or_else(|| finished_before.map_or(now, |b| b.min(now)))
}

/// Most distinct names or reasons a dry run counts (beyond, new values are not counted).
pub const PREVIEW_VALUES: usize = 10_000;

/// What a selector dry run has found so far; it lives in the operator's memory (a restart
/// scans again from the start: a dry run writes nothing anywhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DryScan {
    pub cursor: Option<Cursor>,
    pub matched: u64,
    pub scanned: u64,
    pub names: HashMap<String, u64>,
    pub reasons: HashMap<String, u64>,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// Jobs skipped unexamined so far.
    pub unexamined: u64,
}

impl DryScan {
    /// Adds one page's findings.
    pub fn add(&mut self, page: &Page) {
        self.cursor = page.cursor.clone().or(self.cursor.take());
        self.matched = page.matched;
        // A dry page reports what it scanned itself (a real run's record keeps the total).
        self.scanned += page.scanned;
        self.unexamined += page.unexamined;
        for (counts, values) in [
            (&mut self.names, &page.names),
            (&mut self.reasons, &page.reasons),
        ] {
            for (v, n) in values {
                if counts.len() < PREVIEW_VALUES || counts.contains_key(v) {
                    *counts.entry(v.clone()).or_default() += n;
                }
            }
        }
        self.oldest = self.oldest.or(page.oldest);
        self.newest = page.newest.or(self.newest);
    }

    /// The preview in status: counts, bounds and the 10 most frequent names and reasons.
    pub fn preview(&self) -> Preview {
        let time = |ms: i64| Timestamp::from_millisecond(ms).ok().map(Time);
        Preview {
            matched: self.matched,
            oldest: self.oldest.and_then(time),
            newest: self.newest.and_then(time),
            names: top(&self.names),
            reasons: top(&self.reasons),
        }
    }
}

/// The 10 most frequent values, most frequent first (ties by value).
fn top(counts: &HashMap<String, u64>) -> Vec<ValueCount> {
    let mut all: Vec<ValueCount> = counts
        .iter()
        .map(|(value, count)| ValueCount {
            value: value.clone(),
            count: *count,
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    all.truncate(10);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> JobRetrySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const IDS: &str =
        "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['1','2','3']\n";

    #[test]
    fn plans_ids_in_batches() {
        let s = spec(IDS);
        let ids = target_ids(s.job_ids.as_deref().unwrap());
        assert_eq!(next_batch(&ids, 0, 2), ["1", "2"]);
        assert_eq!(next_batch(&ids, 2, 2), ["3"]);
        assert!(next_batch(&ids, 3, 2).is_empty());
        assert!(next_batch(&ids, 9, 2).is_empty());
    }

    #[test]
    fn an_id_listed_twice_is_planned_once() {
        let s = spec(
            "queue: {name: q}\nconnection: {secretRef: {name: s}}\njobIds: ['7','3','7','1','3']\n",
        );
        assert_eq!(target_ids(s.job_ids.as_deref().unwrap()), ["7", "3", "1"]);
    }

    #[test]
    fn run_key_defaults_to_namespace_and_name() {
        assert_eq!(
            run_key(&spec(IDS), "payments", "incident"),
            "payments/incident"
        );
        let s = spec(&format!("{IDS}runKey: inc-4711\n"));
        assert_eq!(run_key(&s, "payments", "incident"), "inc-4711");
    }

    #[test]
    fn rate_limit_caps_the_batch() {
        assert_eq!(batch_size(500, 0), 500);
        assert_eq!(batch_size(500, 20), 20);
        assert_eq!(batch_size(500, 2000), 500);
    }

    #[test]
    fn the_snapshot_is_the_earlier_of_finished_before_and_the_start_and_stays() {
        assert_eq!(upper_bound(None, None, 5_000), 5_000);
        assert_eq!(upper_bound(None, Some(3_000), 5_000), 3_000);
        assert_eq!(upper_bound(None, Some(9_000), 5_000), 5_000);
        assert_eq!(upper_bound(Some(4_000), Some(3_000), 9_000), 4_000);
    }

    #[test]
    fn an_id_run_stands_where_its_record_says_and_stops_when_the_record_is_behind() {
        // Status behind the record (a lost status write): replay from the status.
        assert_eq!(id_position(500, 300, true), Ok(300));
        assert_eq!(id_position(300, 300, true), Ok(300));
        // Record behind a status the operator wrote: lost, by this many jobs.
        assert_eq!(id_position(100, 300, true), Err(200));
        assert_eq!(id_position(0, 300, true), Err(300));
        // A status written by hand before the run started: the record decides.
        assert_eq!(id_position(0, 60, false), Ok(0));
        let m = lost_state("300 jobs were processed", "no record of it", 300);
        assert!(
            m.contains("300 processed jobs are not covered") && m.contains("Secret"),
            "{m}"
        );
    }

    #[test]
    fn time_bounds_round_up_to_the_next_whole_millisecond() {
        let t = |s: &str| Time(s.parse().unwrap());
        assert_eq!(ms_ceil(&t("2026-11-28T10:00:00Z")), 1_795_860_000_000);
        assert_eq!(ms_ceil(&t("2026-11-28T10:00:00.123Z")), 1_795_860_000_123);
        assert_eq!(
            ms_ceil(&t("2026-11-28T10:00:00.1230001Z")),
            1_795_860_000_124
        );
        assert_eq!(
            ms_ceil(&t("2026-11-28T10:00:00.999999Z")),
            1_795_860_001_000
        );
        assert_eq!(ms_ceil(&t("1969-12-31T23:59:59.9995Z")), 0);
        let shown = serde_json::to_string(&micro_time(1_795_860_000_123)).unwrap();
        assert!(shown.contains("10:00:00.123"), "{shown}");
    }

    #[test]
    fn a_dry_run_previews_the_ten_most_frequent_values_over_all_pages() {
        let page = |names: &[(&str, u64)], matched, oldest, newest| Page {
            matched,
            names: names.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            reasons: vec![("ECONNRESET".into(), names.iter().map(|(_, c)| c).sum())],
            oldest,
            newest,
            ..Default::default()
        };
        let mut scan = DryScan::default();
        scan.add(&page(
            &[("charge", 5), ("refund", 1)],
            6,
            Some(1_000),
            Some(2_000),
        ));
        scan.add(&page(&[("refund", 6)], 12, Some(3_000), Some(4_000)));
        scan.add(&page(&[], 12, None, None));
        let letters: Vec<(String, u64)> = (b'a'..=b'l')
            .map(|c| ((c as char).to_string(), 1))
            .collect();
        let many: Vec<(&str, u64)> = letters.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        scan.add(&page(&many, 24, Some(5_000), Some(6_000)));
        let p = scan.preview();
        assert_eq!(p.matched, 24);
        assert_eq!(p.names.len(), 10);
        assert_eq!((p.names[0].value.as_str(), p.names[0].count), ("refund", 7));
        assert_eq!((p.names[1].value.as_str(), p.names[1].count), ("charge", 5));
        assert_eq!(p.names[2].value, "a");
        assert_eq!(p.reasons[0].count, 24);
        assert_eq!(p.oldest.unwrap().0.as_millisecond(), 1_000);
        assert_eq!(p.newest.unwrap().0.as_millisecond(), 6_000);
    }
}
