//! Hostile selectors against a Redis of their own (a private redis-server, so that a
//! regression hangs this test's server, not the suite's): globs built to backtrack, megabyte
//! job names and failed reasons (real BullMQ 6.7.0 jobs), and reasons whose 200th byte falls
//! inside a UTF-8 character. Every run completes with the right matches, no call of ours
//! appears in SLOWLOG at 10 ms or more, and a second client sending PING is never stalled.
//! Also: the script's glob matcher agrees with the reference matcher (`glob_matches`) on
//! generated globs and names, escaping-prone characters and invalid UTF-8 included.

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use jobretry_operator::{
    bullmq::{
        BatchRequest, JobOutcome, Ledger, PageOutcome, PageRequest, QueueKeys, QueueVersion,
        Selector, select::glob_matches,
    },
    crd::SourceState,
};
use serde_json::{Value, json};
use support::*;

/// A redis-server of this test's own that logs every call of 10 ms or more.
struct PrivateRedis {
    own: OwnRedis,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let own = OwnRedis::start(&[
            "--appendonly",
            "no",
            "--slowlog-log-slower-than",
            "10000",
            "--slowlog-max-len",
            "1024",
        ]);
        let url = own.url();
        PrivateRedis { own, url }
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        self.own.conn()
    }

    fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.conn().unwrap()).unwrap()
    }

    /// The SLOWLOG entries (10 ms or more) of calls made since the last reset.
    fn slow_calls(&self) -> Vec<String> {
        let entries: Vec<redis::Value> = self.cmd(redis::cmd("SLOWLOG").arg("GET").arg(1024));
        entries.iter().map(|e| format!("{e:?}")).collect()
    }
}

/// A client that sends PING every millisecond and keeps the longest round trip.
struct Pinger {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Duration>,
}

impl Pinger {
    fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _: String = redis::cmd("PING").query(&mut conn).unwrap();
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        });
        Pinger { stop, handle }
    }

    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn request(queue: &str, names: &[&str], reason: Option<&str>, dry: bool) -> PageRequest {
    let keys = QueueKeys::new("bull", queue);
    let run_key = format!("abuse/{}", names.join(","));
    PageRequest {
        run: BatchRequest {
            state: SourceState::Failed,
            version: QueueVersion::resolve(Some("6.7.0"), None).unwrap(),
            reset_attempts_made: false,
            reset_attempts_started: false,
            dry_run: dry,
            ledger: Ledger {
                key: keys.ledger("abuse/run"),
                owner: "abuse".into(),
            },
            ledger_ttl: Duration::from_secs(600),
            audit: None,
            record: keys.record(&run_key),
        },
        run_key,
        lock_ttl: Duration::from_secs(60),
        lower: None,
        upper: i64::MAX / 2,
        max_jobs: 100_000,
        budget: 200,
        retry_budget: u32::MAX,
        success_rows: None,
        want_totals: true,
        dry_cursor: None,
        dry_matched: 0,
        reason_contains: reason.map(str::to_string),
        names: names.iter().map(|n| n.to_string()).collect(),
        expected_scanned: 0,
        guard: None,
    }
}

/// What a run did, page by page, until done.
#[derive(Default, Debug)]
struct Drained {
    rows: Vec<(String, JobOutcome)>,
    unexamined: u64,
    scanned: u64,
    names: Vec<(String, u64)>,
    reasons: Vec<(String, u64)>,
    pages: usize,
}

/// Pages until done (a dry run gets its own cursor back, as the controller does); a call
/// that does not answer within 20 s fails the test (the hang the bounds exist to prevent).
fn drain(url: &str, queue: &str, mut req: PageRequest) -> Drained {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(20)));
        let client = redis::Client::open(url).unwrap();
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let keys = QueueKeys::new("bull", queue);
        let selector = Selector::default();
        let mut d = Drained::default();
        loop {
            let outcome = selector.page(&mut c, &keys, &req).await;
            let PageOutcome::Page(p) = outcome.expect("the page call answers") else {
                panic!("not a page")
            };
            d.pages += 1;
            d.rows.extend(p.rows);
            d.names.extend(p.names);
            d.reasons.extend(p.reasons);
            // A dry page counts what it did itself; a real run's record keeps totals.
            if req.run.dry_run {
                d.scanned += p.scanned;
                d.unexamined += p.unexamined;
            } else {
                (d.scanned, d.unexamined) = (p.scanned, p.unexamined);
            }
            assert!(d.pages < 10_000, "the run does not end");
            if p.done {
                return d;
            }
            req.dry_cursor = p.cursor;
            req.dry_matched = p.matched;
        }
    })
}

fn ids(d: &Drained) -> BTreeSet<String> {
    d.rows.iter().map(|(id, _)| id.clone()).collect()
}

const MIB: usize = 1 << 20;
/// A megabyte name: just under what one call may copy (1 MiB), so it is examined.
const MB: usize = 1_000_000;

/// The hostile queue: megabyte names built to make a backtracking matcher explode, megabyte
/// reasons, a reason whose 200th byte is inside a character, and ordinary jobs.
fn hostile_jobs() -> Value {
    let mut jobs = Vec::new();
    let mut add = |key: String, name: String, reason: String| {
        jobs.push(json!({"key": key, "name": name, "data": {"reason": reason}, "outcome": "fail"}))
    };
    for i in 0..3 {
        add(
            format!("huge-ac{i}"),
            format!("{}c", "a".repeat(MB)),
            "ECONNRESET".into(),
        );
        add(format!("huge-a{i}"), "a".repeat(MB), "ECONNRESET".into());
        add(
            format!("huge-reason{i}"),
            "charge-eu".into(),
            format!("{}ECONNRESET", "x".repeat(MIB)),
        );
    }
    for i in 0..20 {
        let name = match i % 4 {
            0 => format!("{}c", "a".repeat(40)),
            1 => "charge-eu".to_string(),
            2 => "refund".to_string(),
            _ => format!("a{}b", "a".repeat(60)),
        };
        add(
            format!("plain{i}"),
            name,
            if i % 2 == 0 { "ECONNRESET" } else { "declined" }.into(),
        );
    }
    // 199 ASCII bytes, then two-byte characters: byte 200 is the first half of one.
    add(
        "utf8".into(),
        "émail".into(),
        format!("{}{}", "r".repeat(199), "é".repeat(20)),
    );
    json!({ "jobs": jobs })
}

/// What BullMQ lists, by key.
fn listed(url: &str, queue: &str) -> Vec<Value> {
    node("list.mjs", &["--redis", url, "--queue", queue])["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn hostile_globs_and_megabyte_names_and_reasons_keep_every_call_short() {
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = "hostile";
    seed_at(dir.path(), &redis.url, queue, &hostile_jobs());
    let jobs = listed(&redis.url, queue);
    let _: () = redis.cmd(redis::cmd("SLOWLOG").arg("RESET"));
    let pinger = Pinger::start(&redis.url);
    let key = |j: &Value| j["id"].as_str().unwrap().to_string();
    let name = |j: &Value| j["name"].as_str().unwrap().to_string();
    let reason = |j: &Value| j["failedReason"].as_str().unwrap_or("").to_string();

    // The classic catastrophic glob: the megabyte names ending in `c` are too long to match
    // within one call (unexamined, never retried); every other job gets the exact answer.
    let glob = "*a*a*a*a*a*a*a*a*c";
    let d = drain(&redis.url, queue, request(queue, &[glob], None, true));
    let huge_ac: BTreeSet<String> = jobs
        .iter()
        .filter(|j| name(j).len() > MB && name(j).ends_with('c'))
        .map(key)
        .collect();
    let want: BTreeSet<String> = jobs
        .iter()
        .filter(|j| name(j).len() < MB && glob_matches(glob, name(j).as_bytes()))
        .map(key)
        .collect();
    assert_eq!(want.len(), 5, "the ordinary a..c names match");
    assert_eq!(ids(&d), want);
    assert_eq!(d.unexamined, huge_ac.len() as u64, "{d:?}");
    assert_eq!(d.scanned, jobs.len() as u64);

    // `*` matches every name, megabyte ones included (prefix and suffix are empty).
    let d = drain(&redis.url, queue, request(queue, &["*"], None, true));
    assert_eq!(ids(&d).len(), jobs.len());
    assert!(d.names.iter().all(|(n, _)| n.len() <= 200), "names are cut");

    // A reason filter over megabyte reasons: those are unexamined, the rest exact.
    let d = drain(
        &redis.url,
        queue,
        request(queue, &[], Some("ECONNRESET"), false),
    );
    let huge_reasons = jobs.iter().filter(|j| reason(j).len() > MIB).count();
    let want: BTreeSet<String> = jobs
        .iter()
        .filter(|j| reason(j).len() < MIB && reason(j).contains("ECONNRESET"))
        .map(key)
        .collect();
    assert_eq!(ids(&d), want);
    assert!(d.rows.iter().all(|(_, o)| *o == JobOutcome::Retried));
    assert_eq!(d.unexamined, huge_reasons as u64);

    // A dry run over the reason cut inside a character: the preview decodes, cut before it.
    let d = drain(&redis.url, queue, request(queue, &["émail"], None, true));
    assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
    assert_eq!(
        d.reasons[0].0,
        "r".repeat(199),
        "cut at the character boundary"
    );

    let worst = pinger.finish();
    let slow = redis.slow_calls();
    eprintln!("longest PING round trip while the runs went on: {worst:?}; slow calls: {slow:?}");
    assert!(slow.is_empty(), "calls of 10 ms or more: {slow:?}");
    assert!(
        worst < Duration::from_millis(250),
        "a second client was stalled for {worst:?}"
    );
}

/// A small deterministic generator (xorshift), so the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Glob and name pieces: the characters a Lua pattern or an escaping bug would trip on,
/// multi-byte characters, and (names only) bytes that are not UTF-8.
const GLOB_PIECES: [&str; 14] = [
    "*", "*", "?", "a", "b", "ab", "%", ".", "[", "]", "\\", "é", "-", "^$",
];
const NAME_PIECES: [&str; 12] = [
    "a", "b", "ab", "%", ".", "[", "]", "\\", "é", "-", "^$", "ü",
];

#[test]
fn the_scripts_glob_matcher_agrees_with_the_reference_on_generated_cases() {
    let redis = PrivateRedis::start();
    let queue = "globs";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut conn = redis.conn().unwrap();
    let mut names: Vec<Vec<u8>> = Vec::new();
    for i in 0..400u64 {
        let mut name = Vec::new();
        for _ in 0..(rng.next() % 9) {
            name.extend_from_slice(rng.pick(&NAME_PIECES).as_bytes());
        }
        if i % 10 == 0 {
            name.push(0x80 + (rng.next() % 0x40) as u8); // a stray continuation byte
        }
        if i % 15 == 0 {
            name.push(0xff);
        }
        let _: () = redis::pipe()
            .hset(format!("bull:{queue}:{i}"), "name", &name)
            .hset(format!("bull:{queue}:{i}"), "opts", "{}")
            .zadd(format!("bull:{queue}:failed"), i.to_string(), 1000 + i)
            .query(&mut conn)
            .unwrap();
        names.push(name);
    }
    let mut checked = 0;
    for _ in 0..120 {
        let glob: String = (0..1 + rng.next() % 6)
            .map(|_| rng.pick(&GLOB_PIECES))
            .collect();
        let d = drain(
            &redis.url,
            queue,
            request(queue, &[glob.as_str()], None, true),
        );
        let got = ids(&d);
        let want: BTreeSet<String> = (0..names.len())
            .filter(|&i| glob_matches(&glob, &names[i]))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(got, want, "glob {glob:?}");
        assert_eq!(d.unexamined, 0);
        checked += want.len();
    }
    assert!(
        checked > 400,
        "the cases match something ({checked} matches)"
    );
}

/// A job id whose key is not a hash: with a name filter it cannot be examined, and is
/// counted (never silently skipped); with no filter it is a match whose retry reports why.
#[test]
fn a_job_key_that_is_not_a_hash_is_counted_not_skipped() {
    let redis = PrivateRedis::start();
    let queue = "odd";
    let mut conn = redis.conn().unwrap();
    let _: () = redis::pipe()
        .hset(format!("bull:{queue}:1"), "name", "charge")
        .hset(format!("bull:{queue}:1"), "opts", "{}")
        .set(format!("bull:{queue}:2"), "not a job")
        .zadd(format!("bull:{queue}:failed"), "1", 1000)
        .zadd(format!("bull:{queue}:failed"), "2", 1001)
        .query(&mut conn)
        .unwrap();
    let d = drain(&redis.url, queue, request(queue, &["*"], None, true));
    assert_eq!(ids(&d), BTreeSet::from(["1".to_string()]));
    assert_eq!((d.scanned, d.unexamined), (2, 1));
    let d = drain(&redis.url, queue, request(queue, &[], None, true));
    assert_eq!(d.rows.len(), 2);
    assert!(
        matches!(&d.rows[1], (id, JobOutcome::Error(m)) if id == "2" && m.contains("not a hash")),
        "{:?}",
        d.rows
    );
    assert_eq!(d.unexamined, 0);
}
