//! What the controller keeps in memory per JobRetry (keyed by uid) between reconciles besides
//! its status: backoff, the rate limit's pause, a selector's page budget and what a selector
//! dry run found so far.
//!
//! Guarantees: an object's entries are dropped when its run finishes, when a reconcile finds
//! it deleted, and by [`ObjectMemory::retain`] once it has left the controller's cache, so
//! the maps hold at most the objects that exist (a long-running operator does not grow with
//! every JobRetry it ever saw).

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use kube::{ResourceExt, runtime::reflector::Store};

use super::plan::DryScan;
use crate::crd::JobRetry;

/// What a run keeps in memory between reconciles besides its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Memory {
    /// Consecutive failed tries, for backoff.
    pub failures: u32,
    /// The earliest start of its next batch (rate limit).
    pub not_before: Option<Instant>,
    /// Jobs a selector page examines (adapted to how long the last page took); 0: not yet.
    pub budget: u32,
}

/// Per-object memory of all runs.
#[derive(Default)]
pub(super) struct ObjectMemory {
    memory: Mutex<HashMap<String, Memory>>,
    dry: Mutex<HashMap<String, DryScan>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectMemory {
    /// What the run of object `uid` keeps between reconciles.
    pub fn memory(&self, uid: &str) -> Memory {
        lock(&self.memory).get(uid).copied().unwrap_or_default()
    }

    /// Keeps `memory` for object `uid` (forgets it when it is empty).
    pub fn remember(&self, uid: &str, memory: Memory) {
        let mut map = lock(&self.memory);
        if memory == Memory::default() {
            map.remove(uid);
        } else {
            map.insert(uid.to_string(), memory);
        }
    }

    /// What object `uid`'s selector dry run found so far, if remembered.
    pub fn dry_scan(&self, uid: &str) -> Option<DryScan> {
        lock(&self.dry).get(uid).cloned()
    }

    /// Keeps (or, with `None`, forgets) what object `uid`'s dry run found.
    pub fn set_dry_scan(&self, uid: &str, scan: Option<DryScan>) {
        let mut map = lock(&self.dry);
        match scan {
            Some(s) => map.insert(uid.to_string(), s),
            None => map.remove(uid),
        };
    }

    /// Forgets everything about object `uid`.
    pub fn forget(&self, uid: &str) {
        lock(&self.memory).remove(uid);
        lock(&self.dry).remove(uid);
    }

    /// Forgets every object whose uid `live` rejects (objects gone from the cache).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        lock(&self.memory).retain(|uid, _| live(uid));
        lock(&self.dry).retain(|uid, _| live(uid));
    }

    /// Forgets every object that is not in the controller's cache `store` (deleted).
    pub fn retain_cached(&self, store: &Store<JobRetry>) {
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|o| o.uid()).collect();
        self.retain(|uid| live.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ObjectMemory {
        /// How many objects something is remembered for.
        fn len(&self) -> usize {
            let mut uids: Vec<String> = lock(&self.memory).keys().cloned().collect();
            uids.extend(lock(&self.dry).keys().cloned());
            uids.sort();
            uids.dedup();
            uids.len()
        }
    }

    fn busy() -> Memory {
        Memory {
            failures: 2,
            ..Memory::default()
        }
    }

    #[test]
    fn a_deleted_objects_memory_and_dry_scan_are_dropped() {
        let m = ObjectMemory::default();
        m.remember("a", busy());
        m.remember("b", busy());
        m.set_dry_scan("b", Some(DryScan::default()));
        m.set_dry_scan("c", Some(DryScan::default()));
        assert_eq!(m.len(), 3);
        m.forget("b");
        assert_eq!(
            (m.memory("b"), m.dry_scan("b").is_none()),
            (Memory::default(), true)
        );
        // "c" left the cache; "a" is still there.
        m.retain(|uid| uid == "a");
        assert_eq!(m.len(), 1);
        assert_eq!(m.memory("a"), busy());
        assert!(m.dry_scan("c").is_none());
    }

    fn jobretry(name: &str, uid: &str) -> JobRetry {
        let yaml = format!(
            "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata: {{name: {name}, namespace: ns, uid: {uid}}}\nspec: {{queue: {{name: q}}, connection: {{secretRef: {{name: redis}}}}, jobIds: ['1']}}\n"
        );
        serde_yaml::from_str(&yaml).unwrap()
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
        m.remember("uid-b", busy());
        m.set_dry_scan("uid-b", Some(DryScan::default()));
        m.retain_cached(&store);
        assert_eq!(m.len(), 2, "both are still there");
        writer.apply_watcher_event(&Event::Delete(b));
        m.retain_cached(&store);
        assert_eq!(m.len(), 1);
        assert_eq!(m.memory("uid-a"), busy());
        assert!(m.dry_scan("uid-b").is_none() && m.memory("uid-b") == Memory::default());
    }

    #[test]
    fn empty_memory_is_not_kept() {
        let m = ObjectMemory::default();
        m.remember("a", busy());
        m.remember("a", Memory::default());
        assert_eq!(m.len(), 0);
    }
}
