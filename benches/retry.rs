//! Retry throughput benchmark (a script, not a timed test): BullMQ's own bulk and per-job
//! retries against our batched Lua engine, side by side on one dedicated Redis.
//!
//! Paths (JR_BENCH_PATHS, comma separated; default `a,b,c1-500,c1-1000,c1-2000,c2,s1,s2`):
//!   a          npm bullmq 6.7.0 `queue.retryJobs({ state: 'failed', count: 1000 })`
//!   b          `job.retry('failed')`, 50 in flight; jobs loaded with `queue.getJobs` first,
//!              untimed; only the retry calls are timed
//!   c1-<B>     `RetryEngine::retry_batch` driven directly, batch size B, ledger on,
//!              version detected from `meta.version` (as production and the tests do)
//!   c2         ten JobRetry objects of N/10 ids each, applied to the real API server with
//!              the operator binary running; apply → all ten `Complete` (kubectl wait)
//!              (jobIds holds at most 10,000 ids: N <= 100,000)
//!   s1         one selector JobRetry, no filter, maxJobs N, through the operator binary;
//!              apply → `Complete`
//!   s2         the same with `failedReasonContains: ECONNRESET`, which 1 job in 100 has
//!              (the seed makes every 100th job fail with that text in its message)
//!   m          benches/minimal.lua, pages of 1,000 driven directly: the floor (s1) is held to
//!   s1a        s1 with `audit.jobLog` on (and a reason): each retried job also gets its
//!              audit line, in the same call; checked after the run on a sample of jobs
//!   v-<name>-<B>  the Lua file benches/lua/<name>.lua, invoked exactly like retry_batch
//!              invokes src/bullmq/retry.lua, batch size B (for profiling script variants)
//!
//! State: JR_BENCH_JOBS (default 100,000) failed jobs seeded once by real BullMQ
//! (tests/bullmq/bench-seed.mjs) into db 1, COPYed into a flushed db 2 before every run
//! (untimed), checked after it. Per run: wall clock, Redis CPU per job, INFO commandstats,
//! SLOWLOG, a probe Worker in db 3 (JR_BENCH_PROBE=0 leaves it out), for the controller paths
//! the operator's peak RSS and the largest JobRetry; medians of JR_BENCH_RUNS (3) runs, paths
//! interleaved. benches/README.md says how each figure is taken.
//!
//! Environment: benches/README.md ("Environment"); benches/run.sh sets it all up.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use jobretry_operator::{
    bullmq::{
        BatchRequest, Connection, JobOutcome, Ledger, QueueKeys, QueueVersion, RetryEngine, scripts,
    },
    crd::{JobRetry, JobRetryStatus, SourceState},
};
use redis::Script;
use serde_json::{Value, json};
use support::*;

const QUEUE: &str = "bench";
const SNAP: u8 = 1;
const RUN: u8 = 2;
const LEDGER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The probe Worker's db (flushed by the probe itself, never by the restore).
const PROBE_DB: u8 = 3;
/// Every REASON_EVERY-th seeded job fails with a message containing REASON_TEXT (s2's filter).
const REASON_EVERY: usize = 100;
const REASON_TEXT: &str = "ECONNRESET";
/// A key in db 1 saying how the snapshot was seeded (not copied into db 2).
const SEED_MARKER: &str = "jr-bench:seed";
/// Every command slower than this is kept in SLOWLOG during a run (for the longest call).
const SLOWLOG_US: u64 = 1000;

/// The environment variable `name` unless unset or empty.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_or(name: &str, dflt: &str) -> String {
    var(name).unwrap_or_else(|| dflt.to_string())
}

struct Cfg {
    redis: String,
    jobs: usize,
    runs: usize,
    paths: Vec<String>,
    kubeconfig: Option<String>,
    platform_state: Option<PathBuf>,
    operator: PathBuf,
    check_variants: bool,
    probe: bool,
}

impl Cfg {
    fn db(&self, db: u8) -> String {
        format!("{}/{db}", self.redis)
    }

    /// Jobs a path retries: s2 those failed with REASON_TEXT (i % REASON_EVERY == 0), others all.
    fn expected(&self, path: &str) -> usize {
        if path == "s2" {
            self.jobs.div_ceil(REASON_EVERY)
        } else {
            self.jobs
        }
    }
}

/// One measured run.
#[derive(Debug, Default)]
struct Sample {
    wall: f64,
    redis_cpu_us: f64,
    /// command -> (calls, usec), from INFO commandstats over the run.
    stats: BTreeMap<String, (u64, u64)>,
    /// Path-specific notes (c2: Redis busy time, API server/etcd/operator CPU).
    extra: BTreeMap<String, f64>,
    /// Jobs retried by the run, and jobs it examined (selector runs: status.selection.scanned).
    retried: usize,
    scanned: usize,
    /// SLOWLOG over the run: entries of 10 ms or more, and the longest entry.
    slow: SlowCalls,
    /// The concurrent Worker's command latencies (bench-probe.mjs output).
    probe: Option<Value>,
    /// The operator's peak RSS (VmHWM, KiB) and the largest JobRetry as `kubectl get -o json`.
    rss_kib: Option<u64>,
    object_bytes: Option<usize>,
    /// What the run's ledger keys take in Redis after it (MEMORY USAGE), for our paths.
    ledger_bytes: Option<u64>,
}

/// Redis over the span of a run ([`RedisSpan`]), with the probe Worker (tests/bullmq/
/// bench-probe.mjs, on its own queue in db 3, timing its own Redis commands) recording too.
struct Meter {
    span: RedisSpan,
    probe: Option<ReadyScript>,
}

impl Meter {
    fn start(cfg: &Cfg) -> Self {
        let (url, limit) = (cfg.db(PROBE_DB), Duration::from_secs(60));
        let args = ["--redis", &url, "--queue", "probe"];
        let probe = cfg
            .probe
            .then(|| ReadyScript::node("bench-probe.mjs", &args, &["using bullmq"], limit));
        let span = RedisSpan::start(&cfg.db(0));
        let mut meter = Self { span, probe };
        if let Some(p) = meter.probe.as_mut() {
            p.go();
        }
        meter
    }

    fn stop(mut self) -> Sample {
        if let Some(p) = self.probe.as_mut() {
            p.close(); // stops its recording
        }
        let f = self.span.stop();
        Sample {
            wall: f.wall_s,
            redis_cpu_us: f.cpu_us,
            stats: f.stats,
            slow: f.slow,
            probe: self.probe.take().map(ReadyScript::finish),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------- state

/// Seeds db 1 once (kept across bench runs if the Redis keeps its data).
fn ensure_snapshot(cfg: &Cfg) {
    let mut snap = conn(&cfg.db(SNAP));
    let (failed, wait, marker): (usize, usize, Option<String>) = redis::pipe()
        .zcard(format!("bull:{QUEUE}:failed"))
        .llen(format!("bull:{QUEUE}:wait"))
        .get(SEED_MARKER)
        .query(&mut snap)
        .unwrap();
    let want = format!("every={REASON_EVERY} text={REASON_TEXT}");
    if failed == cfg.jobs && wait == 0 && marker.as_deref() == Some(want.as_str()) {
        eprintln!("[bench] snapshot in db {SNAP}: {failed} failed jobs (reused)");
        return;
    }
    let (jobs, url) = (cfg.jobs, cfg.db(SNAP));
    eprintln!("[bench] seeding {jobs} failed jobs with real BullMQ into db {SNAP} ...");
    let _: () = redis::cmd("FLUSHDB").query(&mut snap).unwrap();
    let t = Instant::now();
    // No argument has a space of its own.
    let args = format!(
        "--redis {url} --queue {QUEUE} --jobs {jobs} --chunk 5000 --concurrency 500 \
         --reason-every {REASON_EVERY} --reason-text {REASON_TEXT}"
    );
    node_verbose("bench-seed.mjs", &args.split(' ').collect::<Vec<_>>());
    eprintln!("[bench] seeded in {:.1}s", t.elapsed().as_secs_f64());
    // Kept for the next invocation (the Redis runs with --save "").
    let mark = redis::pipe().set(SEED_MARKER, want).cmd("SAVE").clone();
    let _: () = mark.query(&mut snap).unwrap();
}

/// The snapshot's keys that a restore copies: all but the seed marker and keys with a TTL.
/// A Worker leaves self-expiring keys behind (`stalled-check`); one that expires between
/// listing and copying would make the restore come up a key short, so none is copied.
fn snapshot_keys(cfg: &Cfg) -> Vec<String> {
    let (mut keys, expiring) = keys_by_ttl(&mut conn(&cfg.db(SNAP)));
    keys.retain(|k| k != SEED_MARKER);
    for (k, ttl) in expiring.iter().filter(|(k, _)| k != SEED_MARKER) {
        eprintln!("[bench] not restored (expiring or gone, pttl {ttl}): {k}");
    }
    keys
}

/// The failed set's ids in BullMQ's order (oldest failure first).
fn failed_ids(cfg: &Cfg) -> Vec<String> {
    let failed = format!("bull:{QUEUE}:failed");
    redis::Commands::zrange(&mut conn(&cfg.db(SNAP)), failed, 0, -1).unwrap()
}

/// db 2 := db 1 (untimed).
fn restore(cfg: &Cfg, keys: &[String]) {
    let mut run = conn(&cfg.db(RUN));
    let _: () = redis::cmd("FLUSHDB").query(&mut run).unwrap();
    copy_keys(&mut conn(&cfg.db(SNAP)), keys, RUN);
    let n: usize = redis::cmd("DBSIZE").query(&mut run).unwrap();
    assert_eq!(n, keys.len(), "restore copied {n} of {} keys", keys.len());
}

/// The retried jobs in wait, the others still in failed; none in prioritized / paused.
fn verify(cfg: &Cfg, path: &str) {
    let retried = cfg.expected(path);
    let k = |s: &str| format!("bull:{QUEUE}:{s}");
    let (wait, failed, prio, paused): (usize, usize, usize, usize) = redis::pipe()
        .llen(k("wait"))
        .zcard(k("failed"))
        .zcard(k("prioritized"))
        .llen(k("paused"))
        .query(&mut conn(&cfg.db(RUN)))
        .unwrap();
    assert!(
        wait == retried && failed == cfg.jobs - retried && prio == 0 && paused == 0,
        "{path}: after the run wait={wait} failed={failed} prioritized={prio} paused={paused}, expected wait={retried}",
    );
    // s1a: every retried job has its one audit line (the first and last 100 waiting jobs
    // checked); the other paths write none.
    let mut c = conn(&cfg.db(RUN));
    let mut ids: Vec<String> = redis::cmd("LRANGE")
        .arg(k("wait"))
        .arg(0)
        .arg(99)
        .query(&mut c)
        .unwrap();
    let tail: Vec<String> = redis::cmd("LRANGE")
        .arg(k("wait"))
        .arg(-100)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    ids.extend(tail);
    for id in ids {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(k(&format!("{id}:logs")))
            .arg(0)
            .arg(-1)
            .query(&mut c)
            .unwrap();
        let audited =
            lines.len() == 1 && lines[0].starts_with("jobretry: retried from failed by run=");
        assert!(
            if path == "s1a" {
                audited
            } else {
                lines.is_empty()
            },
            "{path}: job {id}'s log is {lines:?}"
        );
    }
}

// ---------------------------------------------------------------- node paths (a), (b)

/// Runs a node bench script that waits for a line on stdin before its timed part; the
/// sample with its own timing. Redis CPU is measured from that line to the script's exit.
fn node_timed(cfg: &Cfg, script: &str, args: &[&str]) -> Sample {
    let url = cfg.db(RUN);
    let all = [
        &["--redis", &url, "--queue", QUEUE, "--wait-stdin"][..],
        args,
    ]
    .concat();
    let mut child = ReadyScript::node(script, &all, &[], Duration::from_secs(600));
    let meter = Meter::start(cfg);
    child.go();
    let v = child.finish();
    let mut sample = meter.stop();
    sample.wall = v["ms"].as_f64().unwrap() / 1000.0;
    if let Some(e) = v["errors"].as_u64() {
        assert_eq!(e, 0, "{script}: {e} job.retry errors");
    }
    if let Some(l) = v["loadMs"].as_f64() {
        sample
            .extra
            .insert("untimed getJobs load s".into(), l / 1000.0);
    }
    sample
}

// ---------------------------------------------------------------- our engine (c1, variants)

/// The request production builds: version from the queue's meta, ledger on.
async fn production_request<C: Connection>(c: &mut C, keys: &QueueKeys) -> BatchRequest {
    let probe = RetryEngine::default()
        .probe(c, keys, SourceState::Failed)
        .await
        .unwrap();
    let version = QueueVersion::resolve(None, probe.meta_version.as_deref()).unwrap();
    assert_eq!(version.label, "6.7.0");
    BatchRequest {
        state: SourceState::Failed,
        version,
        reset_attempts_made: false,
        reset_attempts_started: false,
        dry_run: false,
        ledger: Ledger {
            key: keys.ledger("bench/c1"),
            owner: "benchowner000000".into(),
        },
        ledger_ttl: LEDGER_TTL,
        audit: None,
        record: keys.record("bench/c1"),
    }
}

/// Retries `ids` in db 2, `batch` a call, with the engine (`variant` None) or a script variant
/// called exactly as `RetryEngine::retry_batch` calls `retry.lua`.
fn engine_run(cfg: &Cfg, ids: &[String], batch: usize, variant: Option<&Script>) -> Sample {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(cfg.db(RUN)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys = QueueKeys::new("bull", QUEUE);
        let engine = RetryEngine::default();
        let req = production_request(&mut c, &keys).await;
        // One call: how many of `chunk` it retried.
        let mut call = async |chunk: &[String], position: u64| -> usize {
            if let Some(s) = variant {
                let invocation = scripts::retry_invocation(s, &keys, &req, chunk, 0);
                let out: Vec<String> = invocation.invoke_async(&mut c).await.unwrap();
                return out.iter().filter(|o| *o == "1").count();
            }
            let out = engine
                .retry_batch(&mut c, &keys, &req, chunk, position)
                .await
                .unwrap();
            out.iter().filter(|o| **o == JobOutcome::Retried).count()
        };
        // Load the script into Redis's cache outside the clock (production calls it
        // thousands of times per load).
        call(&[], 0).await;
        let (mut retried, mut position) = (0, 0);
        let meter = Meter::start(cfg);
        for chunk in ids.chunks(batch) {
            position += chunk.len() as u64;
            retried += call(chunk, position).await;
        }
        let sample = meter.stop();
        assert_eq!(
            retried,
            ids.len(),
            "engine retried {retried} of {}",
            ids.len()
        );
        sample
    })
}

// ---------------------------------------------------------------- the floor (m)

/// Pages of benches/minimal.lua driven directly, MINIMAL_PAGE jobs each, until the failed set
/// is done: the least a faithful page can do (see that file), the floor (s1) is held to.
const MINIMAL_PAGE: usize = 1000;

fn minimal_run(cfg: &Cfg) -> Sample {
    let text = std::fs::read_to_string(repo().join("benches/minimal.lua")).unwrap();
    let script = Script::new(&text);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(cfg.db(RUN)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let k = |s: &str| format!("bull:{QUEUE}:{s}");
        let upper = jiff::Timestamp::now().as_millisecond();
        let mut invocation = script.prepare_invoke();
        for key in ["failed", "wait", "meta", "marker", "events"] {
            invocation.key(k(key));
        }
        invocation
            .key(k("jobretry:ledger:bench-minimal"))
            .key(k("jobretry:record:bench-minimal"))
            .key(k("active"))
            .arg(k(""))
            .arg(MINIMAL_PAGE)
            .arg(upper)
            .arg("1@bench-minimal")
            .arg(LEDGER_TTL.as_millis() as u64);
        // Load the script outside the clock, as (c1) does.
        let _: () = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&text)
            .query_async(&mut c)
            .await
            .map(|_: String| ())
            .unwrap();
        let meter = Meter::start(cfg);
        let mut retried = 0;
        loop {
            let (n, status): (usize, String) = invocation.invoke_async(&mut c).await.unwrap();
            retried += n;
            if status == "done" {
                break;
            }
        }
        let mut sample = meter.stop();
        sample.scanned = retried;
        sample.retried = retried;
        sample
    })
}

/// What the ledger keys our paths write take in Redis after a run (MEMORY USAGE of each, all
/// its fields); None for BullMQ's own paths, which keep none.
fn ledger_bytes(cfg: &Cfg, path: &str) -> Option<u64> {
    if ["a", "b"].contains(&path) {
        return None;
    }
    let mut c = conn(&cfg.db(RUN));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bull:{QUEUE}:jobretry:ledger*"))
        .query(&mut c)
        .unwrap();
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
    }
    let sizes: Vec<u64> = p.query(&mut c).unwrap();
    Some(sizes.iter().sum())
}

/// What a run left of the queue, to compare (m) with (s1): the whole wait list, every
/// thousandth job's hash, the events stream's length and the meta; None for other paths.
fn end_state(cfg: &Cfg, path: &str) -> Option<String> {
    if !["m", "s1"].contains(&path) {
        return None;
    }
    let k = |s: &str| format!("bull:{QUEUE}:{s}");
    let mut c = conn(&cfg.db(RUN));
    let wait: Vec<String> = redis::cmd("LRANGE")
        .arg(k("wait"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    let mut p = redis::pipe();
    for id in wait.iter().step_by(1000) {
        p.cmd("HGETALL").arg(k(id));
    }
    let jobs: Vec<BTreeMap<String, String>> = p.query(&mut c).unwrap();
    let (events, meta): (u64, BTreeMap<String, String>) = redis::pipe()
        .xlen(k("events"))
        .hgetall(k("meta"))
        .query(&mut c)
        .unwrap();
    Some(format!("{wait:?}|{jobs:?}|{events}|{meta:?}"))
}

// ---------------------------------------------------------------- through the controller

/// Applies `items` (server-side) in a namespace of their own with the operator running,
/// waits for every one to be Complete; the measured sample with the CPU of the control plane
/// and operator, the operator's peak RSS, the largest object's size, and the statuses.
fn apply_and_wait(cfg: &Cfg, base: &str, items: Vec<JobRetry>) -> (Sample, Vec<JobRetryStatus>) {
    // A fresh namespace with the Redis Secret (db 2) and the operator binary watching it.
    let ns = TestNs::with_redis(base, &cfg.db(RUN));
    let log = std::env::temp_dir().join(format!("{}-operator.log", ns.name));
    let op = Operator::start_binary(&cfg.operator, "info", log, &["--watch-namespace", &ns.name]);
    op.wait_log(
        "starting jobretry-operator controller",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500)); // initial list/watch
    let items: Vec<JobRetry> = items.into_iter().map(|jr| jr.namespace(&ns.name)).collect();
    let file = ns.dir.path().join("bench.json");
    std::fs::write(&file, manifest_list(&items)).unwrap();
    let state = cfg.platform_state.as_deref();
    let pids: Vec<(String, u32)> = ["kube-apiserver", "etcd"]
        .iter()
        .filter_map(|n| Some((n.to_string(), platform_pid(state?, n)?)))
        .chain([("operator".to_string(), op.pid())])
        .collect();
    let cpu0: Vec<f64> = pids.iter().map(|(_, p)| proc_cpu_s(*p)).collect();
    let meter = Meter::start(cfg);
    kubectl_ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let applied = meter.span.t0.elapsed().as_secs_f64();
    let wait = format!(
        "-n {} wait --for=condition=Complete --timeout=1800s jobretry --all",
        ns.name
    );
    kubectl_ok(&wait.split(' ').collect::<Vec<_>>());
    let mut sample = meter.stop();
    for ((name, pid), c0) in pids.iter().zip(cpu0) {
        let cpu = proc_cpu_s(*pid) - c0;
        sample.extra.insert(format!("{name} CPU s"), cpu);
    }
    sample.rss_kib = peak_rss_kib(op.pid());
    let evalsha = sample.stats.get("evalsha").map_or(0, |s| s.1)
        + sample.stats.get("eval").map_or(0, |s| s.1);
    // Inner commands are counted inside evalsha too, so evalsha+eval is Redis's busy time.
    let (busy, redis_cpu) = (evalsha as f64 / 1e6, sample.redis_cpu_us / 1e6);
    for (k, v) in [("kubectl apply s", applied), ("redis CPU s", redis_cpu)] {
        sample.extra.insert(k.into(), v);
    }
    let busy_key = "redis script time s (evalsha+eval usec)";
    sample.extra.insert(busy_key.into(), busy);
    let mut statuses = Vec::new();
    for jr in &items {
        let name = jr.metadata.name.as_deref().unwrap();
        let out = kubectl_ok(&["-n", &ns.name, "get", "jobretry", name, "-o", "json"]);
        sample.object_bytes = sample.object_bytes.max(Some(out.len()));
        statuses.push(status_of(&serde_json::from_str(&out).unwrap()));
    }
    drop(op);
    // The namespace stays (no namespace controller runs to delete it); objects are removed.
    ns.kubectl(&["delete", "jobretry", "--all", "--wait=false"]);
    (sample, statuses)
}

/// (c2): ten JobRetries of N/10 ids each.
fn controller_run(cfg: &Cfg, ids: &[String], run: usize) -> Sample {
    let per = ids.len().div_ceil(10);
    let items = ids.chunks(per).enumerate();
    let items = items.map(|(i, chunk)| jobretry(&format!("bench-{i}"), QUEUE, chunk));
    let (mut sample, statuses) = apply_and_wait(cfg, &format!("jr-bench-{run}"), items.collect());
    let retried: u64 = statuses.iter().map(|s| s.retried.unwrap_or(0)).sum();
    assert_eq!(
        retried as usize,
        ids.len(),
        "c2: status says {retried} retried"
    );
    sample.retried = ids.len();
    sample.scanned = ids.len();
    sample
}

/// One selector JobRetry over the whole failed set: no filter (s1), or failedReasonContains
/// matching 1 job in REASON_EVERY (s2). maxJobs = all jobs.
fn selector_run(cfg: &Cfg, path: &str, run: usize) -> Sample {
    let mut sel = selector(cfg.jobs as u64);
    sel.failed_reason_contains = (path == "s2").then(|| REASON_TEXT.to_string());
    let mut jr = selector_jobretry("sel", QUEUE, sel);
    if path == "s1a" {
        jr.spec.reason = Some("bench: audit line on".into());
        jr.spec.audit = Some(jobretry_operator::crd::Audit { job_log: true });
    }
    let (mut sample, statuses) = apply_and_wait(cfg, &format!("jr-bench-{path}-{run}"), vec![jr]);
    let st = &statuses[0];
    let want = cfg.expected(path);
    assert_eq!(
        (st.phase.as_deref(), st.retried),
        (Some("Succeeded"), Some(want as u64)),
        "{path}: {st:?}"
    );
    sample.retried = want;
    sample.scanned = st.selection.as_ref().map_or(0, |s| s.scanned) as usize;
    assert_eq!(sample.scanned, cfg.jobs, "{path}: scanned");
    sample
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn describe(path: &str) -> String {
    match path {
        "a" => "(a) BullMQ queue.retryJobs count=1000".into(),
        "b" => "(b) BullMQ job.retry, 50 in flight".into(),
        "c2" => "(c2) controller, 10 x JobRetry".into(),
        "s1" => "(s1) controller, selector, no filter".into(),
        "s2" => format!("(s2) selector, 1% {REASON_TEXT}"),
        "s1a" => "(s1a) s1 with audit.jobLog on".into(),
        "m" => format!("(m) minimal faithful page, {MINIMAL_PAGE} jobs"),
        p if p.starts_with("c1-") => format!("(c1) retry_batch, batch {}", &p[3..]),
        p if p.starts_with("v-") => {
            let (name, b) = p[2..].rsplit_once('-').unwrap();
            format!("variant {name}, batch {b}")
        }
        p => p.into(),
    }
}

fn main() {
    let release = repo().join("target/release/jobretry-operator");
    let cfg = Cfg {
        redis: std::env::var("JR_BENCH_REDIS")
            .expect("JR_BENCH_REDIS=redis://127.0.0.1:PORT is not set; run benches/run.sh")
            .trim_end_matches('/')
            .to_string(),
        jobs: env_or("JR_BENCH_JOBS", "100000").parse().unwrap(),
        runs: env_or("JR_BENCH_RUNS", "5").parse().unwrap(),
        paths: env_or("JR_BENCH_PATHS", "a,b,c1-500,c1-1000,c1-2000,c2,s1,s2")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        kubeconfig: var("JR_BENCH_KUBECONFIG"),
        platform_state: var("JR_BENCH_PLATFORM_STATE").map(PathBuf::from),
        operator: var("JR_BENCH_OPERATOR").map_or(release, PathBuf::from),
        check_variants: env_or("JR_BENCH_CHECK_VARIANTS", "1") == "1",
        probe: env_or("JR_BENCH_PROBE", "1") == "1",
    };
    // Keep every command of 1 ms or more (for the longest call); count those >= 10 ms.
    let mut admin = conn(&cfg.db(0));
    for (k, v) in [
        ("slowlog-log-slower-than", SLOWLOG_US),
        ("slowlog-max-len", 1_000_000),
    ] {
        let set = redis::cmd("CONFIG").arg("SET").arg(k).arg(v).clone();
        let _: () = set.query(&mut admin).unwrap();
    }
    if let Some(k) = &cfg.kubeconfig {
        use_kubeconfig(k);
    }
    ensure_snapshot(&cfg);
    let keys = snapshot_keys(&cfg);
    let ids = failed_ids(&cfg);
    assert_eq!(ids.len(), cfg.jobs);

    let variants: BTreeMap<String, Script> = cfg
        .paths
        .iter()
        .filter_map(|p| Some(p.strip_prefix("v-")?.rsplit_once('-')?.0.to_string()))
        .map(|name| {
            let file = repo().join("benches/lua").join(format!("{name}.lua"));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (name, Script::new(&text))
        })
        .collect();
    if cfg.check_variants && !variants.is_empty() {
        // A variant only counts if it leaves Redis exactly as src/bullmq/retry.lua does.
        let end_state = |variant: Option<&Script>| {
            restore(&cfg, &keys);
            engine_run(&cfg, &ids, 500, variant);
            redis_dump_at(&cfg.db(RUN), true)
        };
        let reference = end_state(None);
        for (name, script) in &variants {
            let got = end_state(Some(script));
            let diffs: Vec<_> = changed_keys(&reference, &got).into_iter().take(3).collect();
            assert!(
                diffs.is_empty(),
                "variant {name} differs from retry.lua on keys {diffs:?}"
            );
            eprintln!("[bench] variant {name}: end state identical to src/bullmq/retry.lua");
        }
    }

    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut end_states: BTreeMap<String, String> = BTreeMap::new();
    for run in 0..cfg.runs {
        for path in &cfg.paths {
            if ["c2", "s1", "s2", "s1a"].contains(&path.as_str()) && cfg.kubeconfig.is_none() {
                eprintln!("[bench] {path} skipped: JR_BENCH_KUBECONFIG is not set");
                continue;
            }
            restore(&cfg, &keys);
            eprintln!("[bench] run {}/{} {}", run + 1, cfg.runs, describe(path));
            let mut s = match path.as_str() {
                "a" => node_timed(&cfg, "bench-retry-jobs.mjs", &["--count", "1000"]),
                "b" => node_timed(&cfg, "bench-job-retry.mjs", &["--inflight", "50"]),
                "c2" => controller_run(&cfg, &ids, run),
                "s1" | "s2" | "s1a" => selector_run(&cfg, path, run),
                "m" => minimal_run(&cfg),
                p if p.starts_with("c1-") => engine_run(&cfg, &ids, p[3..].parse().unwrap(), None),
                p if p.starts_with("v-") => {
                    let (name, b) = p[2..].rsplit_once('-').unwrap();
                    engine_run(&cfg, &ids, b.parse().unwrap(), Some(&variants[name]))
                }
                p => panic!("unknown path {p}"),
            };
            verify(&cfg, path);
            s.ledger_bytes = ledger_bytes(&cfg, path);
            if run == 0
                && let Some(state) = end_state(&cfg, path)
            {
                end_states.insert(path.clone(), state);
            }
            if s.retried == 0 {
                (s.retried, s.scanned) = (cfg.jobs, cfg.jobs);
            }
            let p99 = s.probe.as_ref().map(|p| p["p99"].as_f64());
            eprintln!(
                "[bench]   {:.3}s  {:.0} jobs/s  {:.2} us/job Redis CPU  slowlog>=10ms {}  longest {:.1} ms ({})  probe p99 {} ms",
                s.wall,
                s.retried as f64 / s.wall,
                s.redis_cpu_us / s.retried as f64,
                s.slow.ten_ms,
                s.slow.longest_us as f64 / 1000.0,
                s.slow.longest_cmd,
                p99.map_or("-".into(), |p| format!("{:.2}", p.unwrap_or(f64::NAN)))
            );
            samples.entry(path.clone()).or_default().push(s);
        }
    }
    if let (Some(m), Some(s1)) = (end_states.get("m"), end_states.get("s1")) {
        assert!(m == s1, "(m) and (s1) left the queue differently");
        eprintln!("[bench] (m) and (s1) left the same wait list, job hashes, events and meta");
    }
    report(&cfg, &samples);
}

/// One table row: the path's description, then `cells` right-aligned to `widths`.
fn row(path: &str, cells: &[String], widths: &[usize]) -> String {
    let mut line = format!("{path:<40}");
    for (c, w) in cells.iter().zip(widths) {
        line.push_str(&format!(" | {c:>w$}"));
    }
    line + "\n"
}

/// A table's header (`names` comma separated) and rule.
fn header(names: &str, widths: &[usize]) -> String {
    let cells: Vec<String> = names.split(',').map(str::to_string).collect();
    let rule = "-".repeat(40 + widths.iter().map(|w| w + 3).sum::<usize>());
    format!("{}{rule}\n", row("path", &cells, widths))
}

fn report(cfg: &Cfg, samples: &BTreeMap<String, Vec<Sample>>) {
    let jobs_per_s = |s: &Sample| s.retried as f64 / s.wall;
    let per_scanned = |s: &Sample| s.redis_cpu_us / s.scanned as f64;
    let rate = |p: &str| Some(median(samples.get(p)?.iter().map(jobs_per_s).collect()));
    let (ra, rb) = (rate("a"), rate("b"));
    let runs = cfg.paths.iter().filter_map(|p| Some((p, samples.get(p)?)));
    let setting = setting(cfg);
    let mut out = format!(
        "\nRetry benchmark: {} failed jobs, medians of {} runs (spread: least-most of the runs)\n{}\n",
        cfg.jobs,
        cfg.runs,
        setting
            .iter()
            .map(|(k, v)| format!("  {k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let widths = [9, 10, 15, 12, 11, 7, 7, 8];
    out.push_str(&header(
        "wall s,jobs/s,jobs/s spread,Redis us/job,us spread,vs (a),vs (b),runs",
        &widths,
    ));
    let mut json_rows = Vec::new();
    for (path, v) in runs.clone() {
        let all = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { v.iter().map(f).collect() };
        let per_job = all(&|s| s.redis_cpu_us / s.retried as f64);
        let (wall, r, cpu) = (
            median(all(&|s| s.wall)),
            median(all(&jobs_per_s)),
            median(per_job.clone()),
        );
        let vs = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.2}x", r / x));
        let spread = |v: Vec<f64>, prec: usize| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.prec$}-{hi:.prec$}")
        };
        let cells = [
            format!("{wall:.3}"),
            format!("{r:.0}"),
            spread(all(&jobs_per_s), 0),
            format!("{cpu:.2}"),
            spread(per_job.clone(), 2),
        ];
        let cells = [&cells[..], &[vs(ra), vs(rb), v.len().to_string()]].concat();
        out.push_str(&row(&describe(path), &cells, &widths));
        let probe = |k: &'static str| v.iter().filter_map(move |s| s.probe.as_ref()?[k].as_f64());
        json_rows.push(json!({"path": path, "wall_s": wall, "jobs_per_s": r,
            "redis_cpu_us_per_job": cpu, "walls": all(&|s| s.wall),
            "retried": v.iter().map(|s| s.retried).collect::<Vec<_>>(),
            "scanned": v.iter().map(|s| s.scanned).collect::<Vec<_>>(),
            "cpu_us_per_job": per_job,
            "cpu_us_per_scanned": all(&per_scanned),
            "slowlog_10ms": v.iter().map(|s| s.slow.ten_ms).collect::<Vec<_>>(),
            "longest_us": v.iter().map(|s| s.slow.longest_us).collect::<Vec<_>>(),
            "probe_p99_ms": probe("p99").collect::<Vec<_>>(),
            "probe_max_ms": probe("max").collect::<Vec<_>>(),
            "rss_kib": v.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
            "object_bytes": v.iter().map(|s| s.object_bytes).collect::<Vec<_>>(),
            "ledger_bytes": v.iter().map(|s| s.ledger_bytes).collect::<Vec<_>>()}));
    }
    // Latency and footprint: the worst run of each path (max over runs), not the median.
    out.push_str(&format!(
        "\nLatency and footprint (worst of the {} runs; calls >= 10 ms and the longest call from SLOWLOG,\nthe probe Worker's own command latency, operator VmHWM, largest JobRetry as kubectl get -o json,\nthe run's ledger keys in Redis as MEMORY USAGE sums them)\n",
        cfg.runs
    ));
    let widths = [9, 10, 7, 15, 9, 9, 6, 7, 7, 10];
    let names = "scanned,us/scanned,>=10ms,longest ms,probe p99,probe max,probe n,RSS MiB,obj KiB,ledger MiB";
    out.push_str(&header(names, &widths));
    for (path, v) in runs.clone() {
        // The largest value of `f` over the runs, shown with `prec` decimals ("-" for none).
        let worst = |f: &dyn Fn(&Sample) -> Option<f64>, prec: usize| -> String {
            let max = v
                .iter()
                .filter_map(f)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            max.map_or("-".to_string(), |x| format!("{x:.prec$}"))
        };
        let probe = |k: &'static str| move |s: &Sample| s.probe.as_ref()?[k].as_f64();
        let longest = &v.iter().max_by_key(|s| s.slow.longest_us).unwrap().slow;
        let (ms, cmd) = (longest.longest_us as f64 / 1000.0, &longest.longest_cmd);
        let per_scanned = median(v.iter().map(per_scanned).collect());
        let ten_ms = v.iter().map(|s| s.slow.ten_ms).max().unwrap_or(0);
        let cells = [
            v[0].scanned.to_string(),
            format!("{per_scanned:.2}"),
            ten_ms.to_string(),
            match longest.longest_us {
                0 => format!("< {:.0}", SLOWLOG_US as f64 / 1000.0),
                _ => format!("{ms:.1} {cmd}"),
            },
            worst(&probe("p99"), 2),
            worst(&probe("max"), 1),
            worst(&probe("commands"), 0),
            worst(&|s| s.rss_kib.map(|k| k as f64 / 1024.0), 1),
            worst(&|s| s.object_bytes.map(|b| b as f64 / 1024.0), 1),
            worst(&|s| s.ledger_bytes.map(|b| b as f64 / 1048576.0), 2),
        ];
        out.push_str(&row(&describe(path), &cells, &widths));
    }
    // Per-command profile of each path's median run (by wall).
    out.push_str("\nPer-command profile (INFO commandstats of the median run; commands run inside scripts are counted too;\nso are the probe Worker's, a few hundred per second)\n");
    for (path, v) in runs {
        let mut sorted: Vec<&Sample> = v.iter().collect();
        sorted.sort_by(|a, b| a.wall.partial_cmp(&b.wall).unwrap());
        let s = sorted[sorted.len() / 2];
        let n = s.retried as f64;
        let mut rows: Vec<(&String, &(u64, u64))> =
            s.stats.iter().filter(|(_, (c, _))| *c > 0).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
        out.push_str(&format!("  {}:\n", describe(path)));
        for (cmd, (calls, usec)) in rows.iter().take(12) {
            let (us, per_call) = (*usec as f64, *usec as f64 / (*calls).max(1) as f64);
            out.push_str(&format!(
                "    {cmd:<18} {calls:>9} calls {:>10.3} ms {:>8.2} us/job {per_call:>8.2} us/call\n",
                us / 1000.0,
                us / n,
            ));
        }
        for (k, val) in &s.extra {
            out.push_str(&format!("    {k}: {val:.3}\n"));
        }
    }
    print!("{out}");
    let json_path = var("JR_BENCH_JSON").map(PathBuf::from);
    let json_path = json_path.unwrap_or_else(|| repo().join("target/bench-retry.json"));
    let results = json!({"jobs": cfg.jobs, "runs": cfg.runs, "setting": setting,
        "rows": json_rows, "table": out});
    let _ = std::fs::write(json_path, serde_json::to_string_pretty(&results).unwrap());
}

/// What the results depend on besides the code: the commit, the versions, the machine, and
/// the priority Redis really ran at (`benches/run.sh` asks for nice -20 and says when the
/// machine refused it).
fn setting(cfg: &Cfg) -> BTreeMap<&'static str, String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo())
            .output()
            .map_or_else(
                |_| "?".into(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
            )
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let package = repo().join("tests/bullmq/node_modules/bullmq/package.json");
    let bullmq = std::fs::read_to_string(package)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    // Field 19 of /proc/<pid>/stat is the nice value the process really has.
    let nice_now = var("JR_BENCH_REDIS_PID")
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(16).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let nice = format!(
        "asked {}, has {nice_now}{}",
        env_or("JR_BENCH_REDIS_NICE", "-20"),
        match var("JR_BENCH_REDIS_NICE_FELL_BACK").as_deref() {
            Some("1") => " (the machine refused the priority: nice fell back to 0)",
            _ => "",
        }
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    BTreeMap::from([
        (
            "commit",
            format!(
                "{}{}",
                git(&["rev-parse", "HEAD"]),
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        ),
        ("redis", redis_version(cfg)),
        ("bullmq (npm, seed, a, b, probe)", bullmq),
        ("cores", cores.to_string()),
        ("redis-server nice", nice),
    ])
}

fn redis_version(cfg: &Cfg) -> String {
    let server = info(&mut conn(&cfg.db(0)), "server");
    let v = server
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"));
    v.unwrap_or("?").trim().to_string()
}
