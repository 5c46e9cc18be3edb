//! What the controller keeps in memory per JobRetry (keyed by uid) between reconciles besides
//! its status: backoff, the rate limit's pause, a selector's page budget and what a selector
//! dry run found so far. Only `machine::step` makes a new [`Memory`]; `record` keeps it.
//!
//! Guarantees: an object's entry is dropped when its run finishes, when a reconcile finds
//! it deleted, and by [`ObjectMemory::retain`] once it has left the controller's cache, so
//! the map holds at most the objects that exist (a long-running operator does not grow with
//! every JobRetry it ever saw).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::reflector::Store};

use super::rules;
use crate::{
    bullmq::{Cursor, Page},
    crd::{JobRetry, Preview, ValueCount},
};

/// What a run keeps in memory between reconciles besides its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Consecutive failed tries, for backoff.
    pub failures: u32,
    /// The earliest start of its next batch (rate limit).
    pub not_before: Option<Instant>,
    /// What a run's recent calls (selector pages, id batches) cost, which sizes the next.
    pub pages: rules::PageCost,
    /// What a selector dry run found so far.
    pub dry: Option<DryScan>,
}

/// Per-object memory of all runs.
#[derive(Default)]
pub struct ObjectMemory {
    memory: Mutex<HashMap<String, Memory>>,
}

impl ObjectMemory {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the run of object `uid` keeps between reconciles.
    pub fn memory(&self, uid: &str) -> Memory {
        self.map().get(uid).cloned().unwrap_or_default()
    }

    /// Keeps `memory` for object `uid` (forgets it when it is empty).
    pub fn remember(&self, uid: &str, memory: Memory) {
        let mut map = self.map();
        if memory == Memory::default() {
            map.remove(uid);
        } else {
            map.insert(uid.to_string(), memory);
        }
    }

    /// Forgets everything about object `uid`.
    pub fn forget(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// Forgets every object whose uid `live` rejects (objects gone from the cache).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.map().retain(|uid, _| live(uid));
    }

    /// Forgets every object that is not in the controller's cache `store` (deleted).
    pub fn retain_cached(&self, store: &Store<JobRetry>) {
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|o| o.uid()).collect();
        self.retain(|uid| live.contains(uid));
    }
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

    impl ObjectMemory {
        /// How many objects something is remembered for.
        fn len(&self) -> usize {
            self.map().len()
        }
    }

    fn busy() -> Memory {
        Memory {
            failures: 2,
            ..Memory::default()
        }
    }

    fn scanning() -> Memory {
        Memory {
            dry: Some(DryScan::default()),
            ..Memory::default()
        }
    }

    #[test]
    fn a_deleted_objects_memory_and_dry_scan_are_dropped() {
        let m = ObjectMemory::default();
        m.remember("a", busy());
        m.remember(
            "b",
            Memory {
                dry: Some(DryScan::default()),
                ..busy()
            },
        );
        m.remember("c", scanning());
        assert_eq!(m.len(), 3);
        m.forget("b");
        assert_eq!(m.memory("b"), Memory::default());
        assert!(m.memory("b").dry.is_none());
        // "c" left the cache; "a" is still there.
        m.retain(|uid| uid == "a");
        assert_eq!(m.len(), 1);
        assert_eq!(m.memory("a"), busy());
        assert!(m.memory("c").dry.is_none());
    }

    fn jobretry(name: &str, uid: &str) -> JobRetry {
        let yaml = format!(
            "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata: {{name: {name}, namespace: ns, uid: {uid}}}\nspec: {{queue: {{name: q}}, connection: {{secretRef: {{name: redis}}}}, jobIds: ['1']}}\n"
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    #[test]
    fn objects_deleted_from_the_cache_are_forgotten() {
        use kube::runtime::{reflector, watcher::Event};
        let (store, mut writer) = reflector::store::<JobRetry>();
        let (a, b) = (jobretry("a", "uid-a"), jobretry("b", "uid-b"));
        writer.apply_watcher_event(&Event::Apply(a));
        writer.apply_watcher_event(&Event::Apply(b.clone()));
        let m = ObjectMemory::default();
        m.remember("uid-a", busy());
        m.remember(
            "uid-b",
            Memory {
                dry: Some(DryScan::default()),
                ..busy()
            },
        );
        m.retain_cached(&store);
        assert_eq!(m.len(), 2, "both are still there");
        writer.apply_watcher_event(&Event::Delete(b));
        m.retain_cached(&store);
        assert_eq!(m.len(), 1);
        assert_eq!(m.memory("uid-a"), busy());
        assert!(m.memory("uid-b").dry.is_none() && m.memory("uid-b") == Memory::default());
    }

    #[test]
    fn empty_memory_is_not_kept() {
        let m = ObjectMemory::default();
        m.remember("a", busy());
        m.remember("a", Memory::default());
        assert_eq!(m.len(), 0);
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
