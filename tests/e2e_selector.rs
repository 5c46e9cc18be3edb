//! Selector pages against real BullMQ 6.7.0 data: a Worker fails jobs of several names and
//! reasons over a time span; each filter alone and combined retries exactly the jobs that
//! BullMQ's own `getJobs` says match (computed here independently), in keyset order, once,
//! and a real Worker then processes each of them once. Also: ties of equal finishedOn paged
//! byte-wise one job at a time, the snapshot bound, a dry run that changes nothing and
//! previews what the real run then retries (and whose preview of 1 MiB job names still fits
//! in the status), and the one-run-per-queue lock.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use jobretry_operator::{
    bullmq::{
        BatchRequest, Error, JobOutcome, Ledger, Page, PageOutcome, PageRequest, QueueKeys,
        QueueVersion, RetryEngine, Selector, select::glob_matches,
    },
    crd::{JobRetryStatus, SourceState},
};
use serde_json::{Value, json};
use support::*;

fn flush(db: u8) {
    let _: () = redis::cmd("FLUSHDB").query(&mut db_conn(db)).unwrap();
}

/// Copies every key of `from` into `to` (replacing).
fn copy_db(from: u8, to: u8) {
    flush(to);
    let mut con = db_conn(from);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    for k in keys {
        let _: i64 = redis::cmd("COPY")
            .arg(&k)
            .arg(&k)
            .arg("DB")
            .arg(to)
            .query(&mut con)
            .unwrap();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Seeds failed jobs through a real Worker (10 at a time, so some share a finishedOn).
fn seed_failed(db: u8, queue: &str, jobs: &[(&str, &str)], dir: &std::path::Path) {
    let spec = json!({"jobs": jobs.iter().enumerate().map(|(i, (name, reason))| json!({
        "key": format!("k{i}"), "name": name, "data": {"reason": reason}, "opts": {}, "outcome": "fail"
    })).collect::<Vec<_>>()});
    let path = dir.join(format!("{queue}-{}.json", now_ms()));
    std::fs::write(&path, spec.to_string()).unwrap();
    node(
        "seed.mjs",
        &[
            "--redis",
            &db_url(db),
            "--queue",
            queue,
            "--spec",
            path.to_str().unwrap(),
            "--concurrency",
            "10",
        ],
    );
}

/// BullMQ's own view of the failed jobs, oldest finishedOn first, ties by id byte-wise.
fn listed(db: u8, queue: &str) -> Vec<Value> {
    let mut jobs = node("list.mjs", &["--redis", &db_url(db), "--queue", queue])["jobs"]
        .as_array()
        .unwrap()
        .clone();
    jobs.sort_by(|a, b| {
        (
            a["finishedOn"].as_i64(),
            a["id"].as_str().unwrap().as_bytes(),
        )
            .cmp(&(
                b["finishedOn"].as_i64(),
                b["id"].as_str().unwrap().as_bytes(),
            ))
    });
    jobs
}

/// A selector's filters.
#[derive(Clone, Default)]
struct Filter {
    names: Vec<String>,
    reason: Option<String>,
    after: Option<i64>,
    before: Option<i64>,
    max: Option<u64>,
}

impl Filter {
    fn expected(&self, jobs: &[Value], upper: i64) -> Vec<String> {
        let hit = |j: &&Value| {
            let name = j["name"].as_str().unwrap().as_bytes();
            let when = j["finishedOn"].as_i64().unwrap();
            (self.names.is_empty() || self.names.iter().any(|g| glob_matches(g, name)))
                && self.reason.as_ref().is_none_or(|r| {
                    j["failedReason"]
                        .as_str()
                        .is_some_and(|f| f.contains(r.as_str()))
                })
                && self.after.is_none_or(|a| when >= a)
                && when < self.before.map_or(upper, |b| b.min(upper))
        };
        let ids = jobs
            .iter()
            .filter(hit)
            .map(|j| j["id"].as_str().unwrap().to_string());
        ids.take(self.max.unwrap_or(u64::MAX) as usize).collect()
    }

    fn request(
        &self,
        queue: &str,
        run_key: &str,
        dry: bool,
        upper: i64,
        budget: u32,
    ) -> PageRequest {
        let keys = QueueKeys::new("bull", queue);
        PageRequest {
            run: BatchRequest {
                state: SourceState::Failed,
                version: QueueVersion::resolve(Some("6.7.0"), None).unwrap(),
                reset_attempts_made: true,
                reset_attempts_started: false,
                dry_run: dry,
                ledger: Ledger {
                    key: keys.ledger(run_key),
                    owner: "selector-test".into(),
                },
                ledger_ttl: Duration::from_secs(600),
                audit: None,
                record: keys.record(run_key),
            },
            run_key: run_key.into(),
            lock_ttl: Duration::from_secs(60),
            lower: self.after,
            upper: self.before.map_or(upper, |b| b.min(upper)),
            max_jobs: self.max.unwrap_or(10_000),
            budget,
            retry_budget: u32::MAX,
            success_rows: None,
            want_totals: true,
            dry_cursor: None,
            dry_matched: 0,
            reason_contains: self.reason.clone(),
            names: self.names.clone(),
            expected_scanned: 0,
            guard: None,
        }
    }
}

/// Everything a run did, page by page, until done.
#[derive(Default)]
struct Drained {
    rows: Vec<(String, JobOutcome)>,
    pages: usize,
    scanned: u64,
    names: BTreeMap<String, u64>,
    reasons: BTreeMap<String, u64>,
    oldest: Option<i64>,
    newest: Option<i64>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One page call.
fn page(db: u8, queue: &str, req: &PageRequest) -> PageOutcome {
    rt().block_on(async {
        let client = redis::Client::open(db_url(db)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        Selector::default()
            .page(&mut c, &QueueKeys::new("bull", queue), req)
            .await
            .unwrap()
    })
}

/// One page call on a queue no other run holds.
fn free_page(db: u8, queue: &str, req: &PageRequest) -> Page {
    match page(db, queue, req) {
        PageOutcome::Page(p) => *p,
        other => panic!("a free queue answered {other:?}"),
    }
}

/// Empties database `db` and seeds `n` failed jobs named `a` (failed reason `x`) on `queue`;
/// returns a bound taken after them.
fn seed_plain(db: u8, queue: &str, n: usize) -> i64 {
    flush(db);
    let dir = tempfile::tempdir().unwrap();
    seed_failed(db, queue, &vec![("a", "x"); n], dir.path());
    now_ms()
}

/// Pages until done, feeding a dry run its own cursor back as the controller does.
fn drain(db: u8, queue: &str, mut req: PageRequest) -> Drained {
    let mut d = Drained::default();
    loop {
        let p = free_page(db, queue, &req);
        d.pages += 1;
        d.scanned = p.scanned;
        d.rows.extend(p.rows);
        for (n, c) in p.names {
            *d.names.entry(n).or_default() += c;
        }
        for (r, c) in p.reasons {
            *d.reasons.entry(r).or_default() += c;
        }
        d.oldest = d.oldest.or(p.oldest);
        d.newest = p.newest.or(d.newest);
        assert!(d.pages < 10_000, "the run does not end");
        if p.done {
            return d;
        }
        req.dry_cursor = p.cursor;
        req.dry_matched = p.matched;
    }
}

fn retried(d: &Drained) -> Vec<String> {
    assert!(
        d.rows.iter().all(|(_, o)| *o == JobOutcome::Retried),
        "{:?}",
        d.rows
    );
    d.rows.iter().map(|(id, _)| id.clone()).collect()
}

const NAMES: [&str; 4] = ["charge-eu", "charge-us", "refund", "émail"];
const REASONS: [&str; 3] = ["ECONNRESET", "card declined", "socket ECONNRESET by peer"];

/// Three waves of failures, 150 ms apart.
fn seed_waves(db: u8, queue: &str, dir: &std::path::Path) -> Vec<(i64, i64)> {
    let mut waves = Vec::new();
    for wave in 0..3 {
        let jobs: Vec<(&str, &str)> = (0..36)
            .map(|i| (NAMES[(i + wave) % 4], REASONS[(i / 4 + wave) % 3]))
            .collect();
        let start = now_ms();
        seed_failed(db, queue, &jobs, dir);
        waves.push((start, now_ms()));
        std::thread::sleep(Duration::from_millis(150));
    }
    waves
}

#[test]
fn each_filter_alone_and_combined_retries_exactly_the_jobs_bullmq_lists() {
    let (src, work) = (1, 2);
    flush(src);
    let dir = tempfile::tempdir().unwrap();
    let queue = "sel-filters";
    let waves = seed_waves(src, queue, dir.path());
    let jobs = listed(src, queue);
    assert_eq!(jobs.len(), 108);
    let upper = now_ms();
    let ties = jobs.len()
        - jobs
            .iter()
            .map(|j| j["finishedOn"].as_i64())
            .collect::<BTreeSet<_>>()
            .len();
    eprintln!(
        "{} failed jobs, {ties} sharing a finishedOn with another",
        jobs.len()
    );
    let second = (waves[1].0, waves[2].0);
    let cases: Vec<(&str, Filter)> = vec![
        ("all", Filter::default()),
        (
            "names",
            Filter {
                names: vec!["charge-*".into()],
                ..Default::default()
            },
        ),
        (
            "names ?",
            Filter {
                names: vec!["?mail".into(), "refun?".into()],
                ..Default::default()
            },
        ),
        (
            "reason",
            Filter {
                reason: Some("ECONNRESET".into()),
                ..Default::default()
            },
        ),
        (
            "window",
            Filter {
                after: Some(second.0),
                before: Some(second.1),
                ..Default::default()
            },
        ),
        (
            "combined",
            Filter {
                names: vec!["charge-??".into()],
                reason: Some("ECONNRESET".into()),
                after: Some(second.0),
                ..Default::default()
            },
        ),
        (
            "maxJobs",
            Filter {
                reason: Some("card".into()),
                max: Some(7),
                ..Default::default()
            },
        ),
    ];
    for (what, filter) in cases {
        copy_db(src, work);
        let want = filter.expected(&jobs, upper);
        assert!(!want.is_empty(), "{what}: the case selects nothing");
        let d = drain(
            work,
            queue,
            filter.request(queue, "ns/run", false, upper, 9),
        );
        assert_eq!(retried(&d), want, "{what}: retried jobs, in keyset order");
        let left: BTreeSet<String> = listed(work, queue)
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        assert!(
            want.iter().all(|id| !left.contains(id)),
            "{what}: a retried job is still failed"
        );
        assert_eq!(
            left.len(),
            jobs.len() - want.len(),
            "{what}: other jobs stay failed"
        );
        eprintln!(
            "{what}: {} of {} jobs retried in {} pages",
            want.len(),
            jobs.len(),
            d.pages
        );
        if what == "combined" {
            // A real Worker processes exactly the retried jobs, once each.
            let processed = processed_ids(&db_url(work), queue, want.len(), &[]);
            let done: Vec<&str> = processed.iter().map(String::as_str).collect();
            assert_eq!(done.len(), want.len(), "each retried job processed once");
            assert_eq!(
                done.iter().copied().collect::<BTreeSet<_>>(),
                want.iter().map(String::as_str).collect::<BTreeSet<_>>()
            );
        }
    }
}

#[test]
fn ties_are_paged_byte_wise_one_job_at_a_time_without_a_skip_or_a_repeat() {
    let db = 3;
    flush(db);
    let queue = "sel-ties";
    let dir = tempfile::tempdir().unwrap();
    seed_failed(db, queue, &[("seed", "x")], dir.path());
    // Jobs written as BullMQ writes failed jobs, all with one finishedOn, with ids whose
    // byte order differs from a locale's order.
    let ids = ["B", "a", "a b", "b", "Ä", "ä", "10", "9", "_", "z"];
    let mut con = db_conn(db);
    for id in ids {
        let key = format!("bull:{queue}:{id}");
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&[
                "name",
                "tie",
                "data",
                "{}",
                "opts",
                "{}",
                "timestamp",
                "1",
                "finishedOn",
                "1000",
                "failedReason",
                "boom",
            ])
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(format!("bull:{queue}:failed"))
            .arg(1000)
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    let filter = Filter {
        names: vec!["tie".into()],
        ..Default::default()
    };
    let d = drain(
        db,
        queue,
        filter.request(queue, "ns/ties", false, now_ms(), 1),
    );
    let mut want: Vec<&str> = ids.to_vec();
    want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(retried(&d), want);
    assert!(d.pages >= ids.len(), "one job per page: {} pages", d.pages);
}

#[test]
fn a_dry_run_changes_nothing_and_previews_what_the_real_run_retries() {
    let (src, work) = (5, 6);
    flush(src);
    let dir = tempfile::tempdir().unwrap();
    let queue = "sel-dry";
    seed_waves(src, queue, dir.path());
    copy_db(src, work);
    let upper = now_ms();
    let filter = Filter {
        reason: Some("ECONNRESET".into()),
        ..Default::default()
    };
    let before = stable_dump(&db_url(work));
    let dry = drain(work, queue, filter.request(queue, "ns/dry", true, upper, 7));
    assert_eq!(
        stable_dump(&db_url(work)),
        before,
        "a dry run wrote to Redis"
    );
    assert!(dry.rows.iter().all(|(_, o)| *o == JobOutcome::WouldRetry));
    let real = drain(
        work,
        queue,
        filter.request(queue, "ns/real", false, upper, 7),
    );
    let would: Vec<String> = dry.rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        would,
        retried(&real),
        "the preview is what the real run retries"
    );
    // The preview's aggregates, against BullMQ's own view of the jobs it names (a real run
    // leaves them out).
    let jobs: BTreeMap<String, Value> = listed(src, queue)
        .into_iter()
        .map(|j| (j["id"].as_str().unwrap().to_string(), j))
        .collect();
    let (mut names, mut reasons) = (BTreeMap::new(), BTreeMap::new());
    for id in &would {
        *names
            .entry(jobs[id]["name"].as_str().unwrap().to_string())
            .or_insert(0u64) += 1;
        let reason = jobs[id]["failedReason"].as_str().unwrap();
        *reasons
            .entry(reason[..reason.len().min(200)].to_string())
            .or_insert(0u64) += 1;
    }
    assert_eq!(dry.names, names);
    assert_eq!(dry.reasons, reasons);
    assert!(real.names.is_empty() && real.reasons.is_empty());
    let when = |id: &String| jobs[id]["finishedOn"].as_i64();
    assert_eq!(
        (dry.oldest, dry.newest),
        (when(&would[0]), when(&would[would.len() - 1]))
    );
    assert_eq!((dry.oldest, dry.newest), (real.oldest, real.newest));
    assert_eq!(dry.reasons.values().sum::<u64>(), would.len() as u64);
    assert!(dry.reasons.keys().all(|r| r.contains("ECONNRESET")));
}

#[test]
fn one_selector_run_per_queue_and_state_the_second_waits() {
    let (db, queue) = (7, "sel-lock");
    let upper = seed_plain(db, queue, 20);
    let all = Filter::default();
    let first = all.request(queue, "ns/first", false, upper, 5);
    let p = free_page(db, queue, &first);
    assert!(!p.done);
    let second = all.request(queue, "ns/second", false, upper, 5);
    assert_eq!(
        page(db, queue, &second),
        PageOutcome::Busy("ns/first".into())
    );
    // Its holder is never blocked, also after a restart (same run key).
    let rest = drain(db, queue, first.clone());
    assert_eq!(rest.rows.len() + p.rows.len(), 20);
    // The first run is done: the lock is gone, the second runs (and finds nothing left).
    let d = drain(db, queue, second);
    assert!(d.rows.is_empty());
}

#[test]
fn the_snapshot_holds_and_a_job_that_fails_again_is_never_taken_twice() {
    let (db, queue) = (8, "sel-snap");
    let upper = seed_plain(db, queue, 12);
    let req = Filter::default().request(queue, "ns/snap", false, upper, 4);
    let p = free_page(db, queue, &req);
    let first: Vec<String> = p.rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(first.len(), 4);
    std::thread::sleep(Duration::from_millis(5));
    // New failures after the run started are outside its snapshot (written as BullMQ's
    // moveToFinished writes them: seed.mjs refuses a queue with waiting jobs).
    let mut con = db_conn(db);
    for i in 0..5 {
        let id = format!("later-{i}");
        let _: () = redis::cmd("HSET")
            .arg(format!("bull:{queue}:{id}"))
            .arg(&[
                "name",
                "a",
                "data",
                "{}",
                "opts",
                "{}",
                "failedReason",
                "later",
            ])
            .arg("finishedOn")
            .arg(now_ms())
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(format!("bull:{queue}:failed"))
            .arg(now_ms())
            .arg(&id)
            .query(&mut con)
            .unwrap();
    }
    // A job the run retried fails again, stamped by a worker whose clock runs behind: its
    // finishedOn lies inside the window, after the cursor.
    let behind = upper - 1;
    let _: () = redis::cmd("LREM")
        .arg(format!("bull:{queue}:wait"))
        .arg(0)
        .arg(&first[0])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("bull:{queue}:failed"))
        .arg(behind)
        .arg(&first[0])
        .query(&mut con)
        .unwrap();
    let rest = drain(db, queue, req);
    let mut all_rows = first.clone();
    all_rows.extend(retried(&rest));
    assert_eq!(all_rows.len(), 12, "{all_rows:?}");
    assert_eq!(
        all_rows.iter().collect::<BTreeSet<_>>().len(),
        12,
        "a job was taken twice"
    );
    let later: Vec<Value> = listed(db, queue)
        .into_iter()
        .filter(|j| j["failedReason"] == "later")
        .collect();
    assert_eq!(
        later.len(),
        5,
        "jobs that failed after the snapshot stay failed"
    );
}

/// A selector run over BullMQ's own integer ids keeps its ledger in bucket hashes of 128
/// jobs (`<ledger>:b:<n>`), a few bytes per job where one hash of every retried id took ~60,
/// each bucket with the run's retention. An id run of the same run key reads the buckets: a
/// job the selector retried, failed again, is AlreadyProcessed and stays where it is. A bucket
/// key that holds anything else refuses the page, which then writes nothing.
#[test]
fn a_selector_runs_ledger_takes_a_few_bytes_a_job_and_binds_its_run_key() {
    let (db, queue) = (9, "sel-ledger");
    let upper = seed_plain(db, queue, 500);
    let keys = QueueKeys::new("bull", queue);
    let req = Filter::default().request(queue, "ns/ledger", false, upper, 200);
    let ids = retried(&drain(db, queue, req.clone()));
    assert_eq!(ids.len(), 500);
    let mut con = db_conn(db);
    let ledger = keys.ledger("ns/ledger");
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ledger}:b:*"))
        .query(&mut con)
        .unwrap();
    let hash: bool = redis::cmd("EXISTS").arg(&ledger).query(&mut con).unwrap();
    assert!(!hash, "integer ids went to the ledger hash");
    let (mut entries, mut bytes) = (0, 0);
    for b in &buckets {
        entries += redis::cmd("HLEN").arg(b).query::<i64>(&mut con).unwrap();
        bytes += redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(b)
            .arg("SAMPLES")
            .arg(0)
            .query::<i64>(&mut con)
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(b).query(&mut con).unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "bucket {b} expires in {ttl} ms");
    }
    assert_eq!(entries, 500, "{buckets:?}");
    println!(
        "ledger of 500 jobs: {} buckets, {bytes} bytes (MEMORY USAGE)",
        buckets.len()
    );
    assert!(
        bytes < 500 * 16,
        "the ledger of 500 jobs takes {bytes} bytes"
    );

    // Two of them fail again, as a worker leaves a job it failed.
    let again = &ids[..2];
    for id in again {
        let _: () = redis::cmd("LREM")
            .arg(keys.key("wait"))
            .arg(0)
            .arg(id)
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(keys.key("failed"))
            .arg(now_ms())
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    let mut by_ids = req.run.clone();
    by_ids.ledger.owner = "id-run".into();
    let outcomes = rt().block_on(async {
        let client = redis::Client::open(db_url(db)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        RetryEngine::default()
            .retry_batch(&mut c, &keys, &by_ids, again, 0)
            .await
            .unwrap()
    });
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, JobOutcome::AlreadyProcessed { .. })),
        "{outcomes:?}"
    );
    let still: usize = redis::cmd("ZCARD")
        .arg(keys.key("failed"))
        .query(&mut con)
        .unwrap();
    assert_eq!(still, 2, "the id run retried what the selector had");

    // Another run key whose bucket of those jobs holds a string.
    let other = Filter::default().request(queue, "ns/ledger-2", false, now_ms() + 1, 200);
    let n: u64 = again[0].parse().unwrap();
    let bucket = format!("{}:b:{}", keys.ledger("ns/ledger-2"), n / 128);
    let _: () = redis::cmd("SET")
        .arg(&bucket)
        .arg("x")
        .query(&mut con)
        .unwrap();
    let before = stable_dump(&db_url(db));
    let err = rt().block_on(async {
        let client = redis::Client::open(db_url(db)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        Selector::default()
            .page(&mut c, &keys, &other)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(&err, Error::IncompatibleQueue(m) if m.contains(&bucket)),
        "{err}"
    );
    assert_eq!(stable_dump(&db_url(db)), before, "the refused page wrote");

    // A sparse selection (one job in fifty) stays in the ledger hash: a bucket key costs more
    // than the few entries it would hold.
    let rare: Vec<(&str, &str)> = (1..=300)
        .map(|i| ("a", if i % 50 == 0 { "rare" } else { "x" }))
        .collect();
    flush(db);
    let dir = tempfile::tempdir().unwrap();
    seed_failed(db, queue, &rare, dir.path());
    let sparse = Filter {
        reason: Some("rare".into()),
        ..Filter::default()
    }
    .request(queue, "ns/sparse", false, now_ms(), 200);
    assert_eq!(retried(&drain(db, queue, sparse)).len(), 6);
    let mut con = db_conn(db);
    let ledger = keys.ledger("ns/sparse");
    let entries: i64 = redis::cmd("HLEN").arg(&ledger).query(&mut con).unwrap();
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ledger}:b:*"))
        .query(&mut con)
        .unwrap();
    assert_eq!((entries, buckets), (6, vec![]));
}

// ---- Through the operator: what a user applies and reads. ----

fn selector_yaml(name: &str, queue: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: {name}\nspec:\n  queue:\n    name: {queue}\n  connection:\n    secretRef:\n      name: redis\n  selector:\n{selector}{extra}"
    )
}

fn row_ids(st: &JobRetryStatus, result: &str) -> Vec<String> {
    st.jobs
        .iter()
        .filter(|r| r.result == result)
        .map(|r| r.id.clone())
        .collect()
}

#[test]
fn a_selector_jobretry_previews_then_retries_exactly_the_matching_jobs() {
    let ns = TestNs::new("e2e-select");
    let queue = ns.name.as_str();
    seed_waves(0, queue, ns.dir.path());
    let jobs = listed(0, queue);
    let _op = Operator::start(&ns, &[]);
    let sel = "    names: [\"charge-*\"]\n    failedReasonContains: ECONNRESET\n";
    let filter = Filter {
        names: vec!["charge-*".into()],
        reason: Some("ECONNRESET".into()),
        ..Default::default()
    };
    // The dry run: a preview in status, and nothing changed in Redis.
    let before = queue_dump(queue);
    let dry = ns.apply(
        "dry.yaml",
        &selector_yaml("preview", queue, sel, "  dryRun: true\n"),
    );
    assert!(dry.ok, "{}", dry.stderr);
    assert!(ns.wait_condition("preview", "Complete", "60s").ok);
    let upper = now_ms();
    let want = filter.expected(&jobs, upper);
    let st = ns.status("preview");
    let preview = st.preview.as_ref().unwrap_or_else(|| panic!("{st:?}"));
    assert_eq!(preview.matched, want.len() as u64, "{st:?}");
    assert_eq!(row_ids(&st, "WouldRetry"), want);
    let names: u64 = preview.names.iter().map(|n| n.count).sum();
    assert_eq!(names, want.len() as u64);
    assert!(
        preview
            .reasons
            .iter()
            .all(|r| r.value.contains("ECONNRESET"))
    );
    assert_eq!(
        st.selection.as_ref().map(|s| s.scanned),
        Some(jobs.len() as u64)
    );
    assert!(before == queue_dump(queue), "a dry run changed Redis");
    // The real run retries exactly what the preview said.
    let real = ns.apply(
        "real.yaml",
        &selector_yaml("incident", queue, sel, "  resetAttemptsMade: true\n"),
    );
    assert!(real.ok, "{}", real.stderr);
    assert!(ns.wait_condition("incident", "Complete", "60s").ok);
    let st = ns.status("incident");
    assert_eq!(st.phase_str(), "Succeeded", "{st:?}");
    assert_eq!(
        (st.matched, st.retried),
        (Some(want.len() as u64), Some(want.len() as u64))
    );
    assert_eq!(row_ids(&st, "Retried"), want, "rows in keyset order");
    let selection = st.selection.as_ref().unwrap_or_else(|| panic!("{st:?}"));
    assert!(selection.upper_bound.is_some());
    assert_eq!(selection.remaining, 0);
    let table = ns.kubectl(&["get", "jobretry", "incident", "-o", "wide"]);
    assert!(
        table.stdout.contains("SKIPPED") && table.stdout.contains("SCANNED"),
        "{}",
        table.stdout
    );
    let processed = processed_ids(&redis_url(), queue, want.len(), &[]);
    let done: BTreeSet<&str> = processed.iter().map(String::as_str).collect();
    assert_eq!(processed.len(), want.len(), "each once");
    assert_eq!(
        done,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_preview_of_jobs_with_huge_names_still_fits_in_the_status() {
    let ns = TestNs::new("e2e-select-huge");
    let queue = ns.name.as_str();
    // Three jobs whose names take 256 KiB each (two-byte characters) and one of 1 MiB:
    // copied whole into status, they would make every status write too large for the API
    // server. A preview copies names up to 256 KiB out of Redis and cuts them; a larger
    // one shows as its size.
    let mut names: Vec<String> = ["é", "ß", "ø"]
        .iter()
        .map(|c| c.repeat(128 * 1024))
        .collect();
    names.push("x".repeat(1 << 20));
    let jobs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "ECONNRESET")).collect();
    seed_failed(0, queue, &jobs, ns.dir.path());
    let _op = Operator::start(&ns, &[]);
    let dry = ns.apply(
        "huge.yaml",
        &selector_yaml("huge", queue, "    maxJobs: 10\n", "  dryRun: true\n"),
    );
    assert!(dry.ok, "{}", dry.stderr);
    let waited = ns.wait_condition("huge", "Complete", "60s");
    assert!(waited.ok, "{}", waited.stderr);
    let st = ns.status("huge");
    let preview = st.preview.as_ref().unwrap_or_else(|| panic!("{st:?}"));
    assert_eq!(preview.matched, 4, "{st:?}");
    let mut shown: Vec<(String, u64)> = preview
        .names
        .iter()
        .map(|n| (n.value.clone(), n.count))
        .collect();
    shown.sort();
    // Each name cut to its documented 200 bytes, between characters; the 1 MiB one by size.
    let mut want: Vec<(String, u64)> = ["é", "ß", "ø"].iter().map(|c| (c.repeat(100), 1)).collect();
    want.push(("(a name of 1048576 bytes)".to_string(), 1));
    want.sort();
    assert_eq!(shown, want);
    assert_eq!(row_ids(&st, "WouldRetry").len(), 4);
}

#[test]
fn a_second_selector_run_on_the_queue_waits_busy_then_runs() {
    let ns = TestNs::new("e2e-busy");
    let queue = ns.name.as_str();
    seed_failed(0, queue, &[("a", "x"); 40], ns.dir.path());
    let _op = Operator::start(&ns, &[]);
    let sel = "    names: [\"*\"]\n";
    let slow = "  rateLimit:\n    jobsPerSecond: 10\n";
    assert!(
        ns.apply("first.yaml", &selector_yaml("first", queue, sel, slow))
            .ok
    );
    eventually(Duration::from_secs(30), "the first run started", || {
        (ns.status("first").phase_str() == "Running").then_some(())
    });
    let second = format!("{slow}  state: failed\n");
    assert!(
        ns.apply("second.yaml", &selector_yaml("second", queue, sel, &second))
            .ok
    );
    let busy = eventually(Duration::from_secs(30), "the second run waits", || {
        let c = ns.status("second").condition("Reconciling").cloned();
        c.filter(|c| c.reason == "QueueBusy")
    });
    assert_eq!(busy.status, "True");
    assert!(busy.message.contains("/first"), "{busy:?}");
    assert!(ns.wait_condition("first", "Complete", "60s").ok);
    assert!(ns.wait_condition("second", "Complete", "90s").ok);
    assert_eq!(ns.status("first").retried, Some(40));
    assert_eq!(
        ns.status("second").matched,
        Some(0),
        "nothing left for the second run"
    );
}

/// Tried as a new user would: `status.processed: 60` written through the status subresource
/// before the operator saw the object made it skip 60 ids and report Succeeded.
#[test]
fn a_forged_status_cannot_make_a_run_skip_jobs() {
    let ns = TestNs::new("e2e-forged");
    let queue = ns.name.as_str();
    seed_failed(0, queue, &[("a", "x"); 80], ns.dir.path());
    let ids: Vec<String> = listed(0, queue)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ns.apply_jr(&jobretry("forged", queue, &ids).suspend()).ok);
    let patch = r#"{"status":{"processed":60,"retried":60,"counts":{"Retried":60}}}"#;
    let out = ns.kubectl(&[
        "patch",
        "jobretry",
        "forged",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ]);
    assert!(out.ok, "{}", out.stderr);
    let _op = Operator::start(&ns, &[]);
    let out = ns.kubectl(&[
        "patch",
        "jobretry",
        "forged",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(ns.wait_condition("forged", "Complete", "60s").ok);
    let left: i64 = redis::cmd("ZCARD")
        .arg(format!("bull:{queue}:failed"))
        .query(&mut db_conn(0))
        .unwrap();
    assert_eq!(left, 0, "every job was retried");
    let st = ns.status("forged");
    assert_eq!(st.processed, Some(80), "{st:?}");
}
