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
//!   v-<name>-<B>  the Lua file benches/lua/<name>.lua, invoked exactly like retry_batch
//!              invokes src/bullmq/retry.lua, batch size B (for profiling script variants)
//!
//! State: JR_BENCH_JOBS (default 100,000) failed jobs, created once by real BullMQ
//! (tests/bullmq/bench-seed.mjs: Queue.addBulk + a throwing Worker) in db 1, kept there as
//! the snapshot; before every measured run db 2 is flushed and every key is COPYed from db 1
//! (untimed). After every run the bench checks that all jobs are in `wait` and none is
//! left in `failed`.
//!
//! Per run: wall clock of the retry work only, and the redis-server's CPU time
//! (INFO cpu used_cpu_user + used_cpu_sys) over the same span, per job; INFO commandstats
//! (reset before each run) gives the per-command profile. Medians over JR_BENCH_RUNS runs
//! (default 3; the paths are interleaved run by run).
//! Also per run: SLOWLOG (every command of 1 ms or more is kept, reset before the run): how
//! many took 10 ms or more, and the longest; a real BullMQ Worker on another queue (db 3,
//! tests/bullmq/bench-probe.mjs, JR_BENCH_PROBE=0 to leave it out) timing each of its own
//! Redis commands: p50/p99/max; for the controller paths the operator's peak RSS (VmHWM)
//! and the largest JobRetry's size as `kubectl get -o json` prints it.
//!
//! Environment: JR_BENCH_REDIS=redis://127.0.0.1:PORT (required; a redis-server nobody else
//! uses), JR_BENCH_KUBECONFIG (for c2), JR_BENCH_PLATFORM_STATE (tests/platform STATE_DIR,
//! for the API server / etcd CPU of c2), JR_BENCH_OPERATOR (default
//! target/release/jobretry-operator), JR_BENCH_CHECK_VARIANTS=0 to skip the check that a
//! variant leaves db 2 exactly as src/bullmq/retry.lua does, JR_BENCH_JSON (results file).
//! Run it through benches/run.sh, which sets all of this up.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use jobretry_operator::{
    bullmq::{
        BatchRequest, Connection, JobOutcome, Ledger, QueueKeys, QueueVersion, RetryEngine, scripts,
    },
    crd::SourceState,
};
use redis::{Script, aio::ConnectionLike};
use serde_json::{Value, json};

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

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, dflt: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| dflt.to_string())
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

    /// Jobs whose failedReason contains REASON_TEXT (data.i % REASON_EVERY == 0).
    fn rare(&self) -> usize {
        self.jobs.div_ceil(REASON_EVERY)
    }

    /// Jobs a path retries, and jobs its scan examines.
    fn expected(&self, path: &str) -> usize {
        if path == "s2" { self.rare() } else { self.jobs }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default)]
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
    /// SLOWLOG over the run: entries of 10 ms or more, and the longest entry (usec, command).
    slow10: usize,
    longest_us: u64,
    longest_cmd: String,
    /// The concurrent Worker's command latencies (bench-probe.mjs output).
    probe: Option<Value>,
    /// The operator's peak RSS (VmHWM, KiB) and the largest JobRetry as `kubectl get -o json`.
    rss_kib: Option<u64>,
    object_bytes: Option<usize>,
}

fn conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

fn redis_cpu(con: &mut redis::Connection) -> f64 {
    let text = info(con, "cpu");
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO cpu has no {name}"))
    };
    field("used_cpu_user") + field("used_cpu_sys")
}

fn commandstats(con: &mut redis::Connection) -> BTreeMap<String, (u64, u64)> {
    let text = info(con, "commandstats");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let get = |k: &str| -> u64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_string(), (get("calls"), get("usec")));
    }
    out
}

/// SLOWLOG since the last reset: entries of 10 ms or more, the longest (usec) and its command.
fn slowlog(con: &mut redis::Connection) -> (usize, u64, String) {
    let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .query(con)
        .unwrap();
    let mut out = (0, 0, String::new());
    for e in entries {
        let args: Vec<String> = e
            .get(3)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or_default();
        let cmd = args.first().cloned().unwrap_or_default().to_lowercase();
        // The measuring connection's own SLOWLOG RESET / CONFIG / INFO are not the run's.
        if ["slowlog", "config", "info"].contains(&cmd.as_str()) {
            continue;
        }
        let us: u64 = e
            .get(2)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or(0);
        if us >= 10_000 {
            out.0 += 1;
        }
        if us > out.1 {
            (out.1, out.2) = (us, cmd);
        }
    }
    out
}

/// A real BullMQ Worker on its own queue (db 3) next to the run, timing its own Redis
/// commands (tests/bullmq/bench-probe.mjs).
struct Probe {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Probe {
    fn start(cfg: &Cfg) -> Self {
        let mut child = Command::new("node")
            .current_dir(repo().join("tests/bullmq"))
            .arg("bench-probe.mjs")
            .args(["--redis", &cfg.db(PROBE_DB), "--queue", "probe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node bench-probe.mjs");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                } else if !line.contains("using bullmq") {
                    eprintln!("  {line}");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("bench-probe.mjs never became ready");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn go(&mut self) {
        self.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }

    fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "bench-probe.mjs failed"
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench-probe.mjs: {e}: {out}"))
    }
}

/// Redis CPU, commandstats and SLOWLOG from `start` to `stop` (CONFIG RESETSTAT and SLOWLOG
/// RESET at the start), with the probe Worker recording over the same span.
struct Meter {
    admin: redis::Connection,
    cpu0: f64,
    t0: Instant,
    probe: Option<Probe>,
}

impl Meter {
    fn start(cfg: &Cfg) -> Self {
        let mut probe = cfg.probe.then(|| Probe::start(cfg));
        let mut admin = conn(&cfg.db(0));
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut admin)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query(&mut admin)
            .unwrap();
        let cpu0 = redis_cpu(&mut admin);
        if let Some(p) = probe.as_mut() {
            p.go();
        }
        Self {
            admin,
            cpu0,
            t0: Instant::now(),
            probe,
        }
    }

    fn stop(mut self) -> Sample {
        let wall = self.t0.elapsed().as_secs_f64();
        if let Some(p) = self.probe.as_mut() {
            drop(p.stdin.take()); // stops its recording
        }
        let cpu1 = redis_cpu(&mut self.admin);
        let mut stats = commandstats(&mut self.admin);
        let (slow10, longest_us, longest_cmd) = slowlog(&mut self.admin);
        // The measuring connection's own commands are not part of the work.
        for c in [
            "info",
            "config|resetstat",
            "config",
            "slowlog|reset",
            "slowlog",
        ] {
            stats.remove(c);
        }
        Sample {
            wall,
            redis_cpu_us: (cpu1 - self.cpu0) * 1e6,
            stats,
            slow10,
            longest_us,
            longest_cmd,
            probe: self.probe.take().map(Probe::finish),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------- state

fn node(cfg: &Cfg, script: &str, args: &[&str]) -> Value {
    let out = Command::new("node")
        .current_dir(repo().join("tests/bullmq"))
        .arg(script)
        .args(["--queue", QUEUE])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
    let _ = cfg;
    assert!(out.status.success(), "node {script} {args:?} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Seeds db 1 once (kept across bench runs if the Redis keeps its data).
fn ensure_snapshot(cfg: &Cfg) {
    let mut snap = conn(&cfg.db(SNAP));
    let failed: usize = redis::cmd("ZCARD")
        .arg(format!("bull:{QUEUE}:failed"))
        .query(&mut snap)
        .unwrap();
    let wait: usize = redis::cmd("LLEN")
        .arg(format!("bull:{QUEUE}:wait"))
        .query(&mut snap)
        .unwrap();
    let marker: Option<String> = redis::cmd("GET").arg(SEED_MARKER).query(&mut snap).unwrap();
    let want = format!("every={REASON_EVERY} text={REASON_TEXT}");
    if failed == cfg.jobs && wait == 0 && marker.as_deref() == Some(want.as_str()) {
        eprintln!("[bench] snapshot in db {SNAP}: {failed} failed jobs (reused)");
        return;
    }
    eprintln!(
        "[bench] seeding {} failed jobs with real BullMQ into db {SNAP} ...",
        cfg.jobs
    );
    let _: () = redis::cmd("FLUSHDB").query(&mut snap).unwrap();
    let t = Instant::now();
    let jobs = cfg.jobs.to_string();
    node(
        cfg,
        "bench-seed.mjs",
        &[
            "--redis",
            &cfg.db(SNAP),
            "--jobs",
            &jobs,
            "--chunk",
            "5000",
            "--concurrency",
            "500",
            "--reason-every",
            &REASON_EVERY.to_string(),
            "--reason-text",
            REASON_TEXT,
        ],
    );
    eprintln!("[bench] seeded in {:.1}s", t.elapsed().as_secs_f64());
    let _: () = redis::cmd("SET")
        .arg(SEED_MARKER)
        .arg(want)
        .query(&mut snap)
        .unwrap();
    // Keep it for the next invocation (the Redis runs with --save "").
    let _: () = redis::cmd("SAVE").query(&mut snap).unwrap();
}

/// The snapshot's keys that a restore copies: all but the seed marker and keys with a TTL.
/// A Worker leaves self-expiring keys behind (`stalled-check`); one that expires between
/// listing and copying would make the restore come up a key short, so none is copied.
fn snapshot_keys(cfg: &Cfg) -> Vec<String> {
    let mut snap = conn(&cfg.db(SNAP));
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut snap).unwrap();
    let mut keys = Vec::with_capacity(all.len());
    for chunk in all.chunks(10_000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("PTTL").arg(k);
        }
        let ttls: Vec<i64> = p.query(&mut snap).unwrap();
        for (k, ttl) in chunk.iter().zip(ttls) {
            if ttl == -1 && k != SEED_MARKER {
                keys.push(k.clone());
            } else if k != SEED_MARKER {
                eprintln!("[bench] not restored (expiring or gone, pttl {ttl}): {k}");
            }
        }
    }
    keys
}

/// The failed set's ids in BullMQ's order (oldest failure first).
fn failed_ids(cfg: &Cfg) -> Vec<String> {
    let mut snap = conn(&cfg.db(SNAP));
    redis::cmd("ZRANGE")
        .arg(format!("bull:{QUEUE}:failed"))
        .arg(0)
        .arg(-1)
        .query(&mut snap)
        .unwrap()
}

/// db 2 := db 1 (untimed).
fn restore(cfg: &Cfg, keys: &[String]) {
    let mut run = conn(&cfg.db(RUN));
    let _: () = redis::cmd("FLUSHDB").query(&mut run).unwrap();
    let mut snap = conn(&cfg.db(SNAP));
    for chunk in keys.chunks(5000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("COPY").arg(k).arg(k).arg("DB").arg(RUN).ignore();
        }
        let _: () = p.query(&mut snap).unwrap();
    }
    let n: usize = redis::cmd("DBSIZE").query(&mut run).unwrap();
    assert_eq!(n, keys.len(), "restore copied {n} of {} keys", keys.len());
}

/// The retried jobs in wait, the others still in failed; none in prioritized / paused.
fn verify(cfg: &Cfg, path: &str) {
    let retried = cfg.expected(path);
    let mut run = conn(&cfg.db(RUN));
    let k = |s: &str| format!("bull:{QUEUE}:{s}");
    let (wait, failed, prio, paused): (usize, usize, usize, usize) = redis::pipe()
        .llen(k("wait"))
        .zcard(k("failed"))
        .zcard(k("prioritized"))
        .llen(k("paused"))
        .query(&mut run)
        .unwrap();
    assert!(
        wait == retried && failed == cfg.jobs - retried && prio == 0 && paused == 0,
        "{path}: after the run wait={wait} failed={failed} prioritized={prio} paused={paused}, expected wait={retried}",
    );
}

// ---------------------------------------------------------------- node paths (a), (b)

/// Runs a node bench script that waits for a line on stdin before its timed part; returns
/// its JSON output. Redis CPU is measured from that line to the script's exit.
fn node_timed(cfg: &Cfg, script: &str, args: &[&str]) -> Sample {
    let mut child = Command::new("node")
        .current_dir(repo().join("tests/bullmq"))
        .arg(script)
        .args(["--redis", &cfg.db(RUN), "--queue", QUEUE, "--wait-stdin"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let forward = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = tx.send(());
            } else {
                eprintln!("  {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(600))
        .unwrap_or_else(|_| panic!("{script} never became ready"));
    let mut stdin = child.stdin.take().unwrap();
    let mut out = String::new();
    let meter = Meter::start(cfg);
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let mut sample = meter.stop();
    assert!(status.success(), "{script} failed");
    forward.join().unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{script}: {e}: {out}"));
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The request production builds: version from the queue's meta, ledger on.
async fn production_request<C: Connection>(
    engine: &RetryEngine,
    c: &mut C,
    keys: &QueueKeys,
    run_key: &str,
) -> BatchRequest {
    let probe = engine.probe(c, keys, SourceState::Failed).await.unwrap();
    let version = QueueVersion::resolve(None, probe.meta_version.as_deref()).unwrap();
    assert_eq!(version.label, "6.7.0");
    BatchRequest {
        state: SourceState::Failed,
        version,
        reset_attempts_made: false,
        reset_attempts_started: false,
        dry_run: false,
        ledger: Ledger {
            key: keys.ledger(run_key),
            owner: "benchowner000000".into(),
        },
        ledger_ttl: LEDGER_TTL,
        record: keys.record(run_key),
    }
}

/// A script variant called exactly as `RetryEngine::retry_batch` calls `retry.lua`.
async fn invoke_variant<C: ConnectionLike>(
    script: &Script,
    c: &mut C,
    keys: &QueueKeys,
    req: &BatchRequest,
    ids: &[String],
) -> Vec<String> {
    scripts::retry_invocation(script, keys, req, ids, 0)
        .invoke_async(c)
        .await
        .unwrap()
}

/// Retries `ids` in db 2 with the engine (`variant` None) or a script variant.
fn engine_run(cfg: &Cfg, ids: &[String], batch: usize, variant: Option<&Script>) -> Sample {
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(cfg.db(RUN)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys = QueueKeys::new("bull", QUEUE);
        let engine = RetryEngine::default();
        let req = production_request(&engine, &mut c, &keys, "bench/c1").await;
        // Load the script into Redis's cache outside the clock (production calls it
        // thousands of times per load).
        let warm: Vec<String> = Vec::new();
        match variant {
            None => {
                engine
                    .retry_batch(&mut c, &keys, &req, &warm, 0)
                    .await
                    .unwrap();
            }
            Some(s) => {
                invoke_variant(s, &mut c, &keys, &req, &warm).await;
            }
        }
        let mut retried = 0usize;
        let mut position = 0u64;
        let meter = Meter::start(cfg);
        for chunk in ids.chunks(batch) {
            position += chunk.len() as u64;
            match variant {
                None => {
                    let out = engine
                        .retry_batch(&mut c, &keys, &req, chunk, position)
                        .await
                        .unwrap();
                    retried += out.iter().filter(|o| **o == JobOutcome::Retried).count();
                }
                Some(s) => {
                    let out = invoke_variant(s, &mut c, &keys, &req, chunk).await;
                    retried += out.iter().filter(|o| *o == "1").count();
                }
            }
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

/// Every key of db 2 with its content (stream entries without ids), for variant checks.
fn dump(cfg: &Cfg) -> BTreeMap<String, String> {
    let mut c = conn(&cfg.db(RUN));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(2000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = p.query(&mut c).unwrap();
        let mut p = redis::pipe();
        for (k, t) in chunk.iter().zip(&types) {
            match t.as_str() {
                "string" => p.cmd("GET").arg(k),
                "list" => p.cmd("LRANGE").arg(k).arg(0).arg(-1),
                "set" => p.cmd("SMEMBERS").arg(k),
                "zset" => p.cmd("ZRANGE").arg(k).arg(0).arg(-1).arg("WITHSCORES"),
                "hash" => p.cmd("HGETALL").arg(k),
                "stream" => p.cmd("XRANGE").arg(k).arg("-").arg("+"),
                other => panic!("unexpected type {other}"),
            };
        }
        let values: Vec<redis::Value> = p.query(&mut c).unwrap();
        for ((k, t), v) in chunk.iter().zip(&types).zip(values) {
            let text = match t.as_str() {
                "hash" => {
                    let m: BTreeMap<String, String> = redis::from_redis_value(v).unwrap();
                    format!("{m:?}")
                }
                "set" => {
                    let mut m: Vec<String> = redis::from_redis_value(v).unwrap();
                    m.sort();
                    format!("{m:?}")
                }
                "stream" => {
                    let e: Vec<(String, Vec<String>)> = redis::from_redis_value(v).unwrap();
                    format!("{:?}", e.into_iter().map(|(_, f)| f).collect::<Vec<_>>())
                }
                _ => format!("{v:?}"),
            };
            out.insert(k.clone(), format!("{t}:{text}"));
        }
    }
    out
}

// ---------------------------------------------------------------- through the controller (c2)

fn kubectl(cfg: &Cfg, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", cfg.kubeconfig.as_ref().unwrap())
        .args(args)
        .output()
        .expect("kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn kubectl_ok(cfg: &Cfg, args: &[&str]) -> String {
    let (ok, out) = kubectl(cfg, args);
    assert!(ok, "kubectl {args:?}: {out}");
    out
}

/// utime + stime of a process, in seconds.
fn proc_cpu(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn platform_pid(cfg: &Cfg, name: &str) -> Option<u32> {
    let dir = cfg.platform_state.as_ref()?;
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident set size of a process (VmHWM), KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A fresh namespace with the Redis Secret and the operator binary watching it.
fn operator_in_namespace(cfg: &Cfg, ns: &str) -> Operator {
    kubectl_ok(cfg, &["create", "namespace", ns]);
    kubectl_ok(
        cfg,
        &[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "redis",
            &format!("--from-literal=url={}", cfg.db(RUN)),
        ],
    );
    let log = std::env::temp_dir().join(format!("{ns}-operator.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(&cfg.operator)
        .env("KUBECONFIG", cfg.kubeconfig.as_ref().unwrap())
        .env("RUST_LOG", "info")
        .args(["--watch-namespace", ns])
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start operator");
    let op = Operator(child);
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("starting jobretry-operator controller")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "operator did not start: {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500)); // initial list/watch
    op
}

/// API server, etcd and operator pids, for their CPU time over a run.
fn control_pids(cfg: &Cfg, op: &Operator) -> Vec<(String, u32)> {
    ["kube-apiserver", "etcd"]
        .iter()
        .filter_map(|n| platform_pid(cfg, n).map(|p| (n.to_string(), p)))
        .chain(std::iter::once(("operator".to_string(), op.0.id())))
        .collect()
}

/// Applies `file`, waits for every JobRetry of `ns` to be Complete; the measured sample with
/// the CPU of the control plane and operator, the operator's peak RSS, the largest object's
/// size, and the objects as JSON.
fn apply_and_wait(cfg: &Cfg, ns: &str, op: Operator, file: &Path) -> (Sample, Vec<Value>) {
    let pids = control_pids(cfg, &op);
    let cpu0: Vec<f64> = pids.iter().map(|(_, p)| proc_cpu(*p)).collect();
    let meter = Meter::start(cfg);
    kubectl_ok(
        cfg,
        &["apply", "--server-side", "-f", file.to_str().unwrap()],
    );
    let applied = meter.t0.elapsed().as_secs_f64();
    kubectl_ok(
        cfg,
        &[
            "-n",
            ns,
            "wait",
            "--for=condition=Complete",
            "--timeout=1800s",
            "jobretry",
            "--all",
        ],
    );
    let mut sample = meter.stop();
    for ((name, pid), c0) in pids.iter().zip(cpu0) {
        sample
            .extra
            .insert(format!("{name} CPU s"), proc_cpu(*pid) - c0);
    }
    sample.rss_kib = peak_rss_kib(op.0.id());
    let evalsha = sample.stats.get("evalsha").map_or(0, |s| s.1)
        + sample.stats.get("eval").map_or(0, |s| s.1);
    // Inner commands are counted inside evalsha too, so evalsha+eval is Redis's busy time.
    sample.extra.insert("kubectl apply s".into(), applied);
    sample.extra.insert(
        "redis script time s (evalsha+eval usec)".into(),
        evalsha as f64 / 1e6,
    );
    sample
        .extra
        .insert("redis CPU s".into(), sample.redis_cpu_us / 1e6);
    let names = kubectl_ok(cfg, &["-n", ns, "get", "jobretry", "-o", "name"]);
    let mut items = Vec::new();
    for name in names.split_whitespace() {
        let out = kubectl_ok(cfg, &["-n", ns, "get", name, "-o", "json"]);
        sample.object_bytes = sample.object_bytes.max(Some(out.len()));
        items.push(serde_json::from_str(&out).unwrap());
    }
    drop(op);
    // The namespace stays (no namespace controller runs to delete it); objects are removed.
    let _ = kubectl(
        cfg,
        &["-n", ns, "delete", "jobretry", "--all", "--wait=false"],
    );
    (sample, items)
}

fn controller_run(cfg: &Cfg, ids: &[String], run: usize) -> Sample {
    let ns = format!("jr-bench-{}-{run}", std::process::id());
    let op = operator_in_namespace(cfg, &ns);
    let per = ids.len().div_ceil(10);
    let mut yaml = String::new();
    for (i, chunk) in ids.chunks(per).enumerate() {
        let list: Vec<String> = chunk.iter().map(|id| format!("\"{id}\"")).collect();
        yaml.push_str(&format!(
            "---\napiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: bench-{i}\n  namespace: {ns}\nspec:\n  queue:\n    name: {QUEUE}\n  connection:\n    secretRef:\n      name: redis\n  state: failed\n  jobIds: [{}]\n",
            list.join(",")
        ));
    }
    let file = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let (mut sample, items) = apply_and_wait(cfg, &ns, op, &file);
    let retried: u64 = items
        .iter()
        .map(|i| i["status"]["retried"].as_u64().unwrap_or(0))
        .sum();
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
    let ns = format!("jr-bench-{}-{path}-{run}", std::process::id());
    let op = operator_in_namespace(cfg, &ns);
    let filter = if path == "s2" {
        format!("    failedReasonContains: {REASON_TEXT}\n")
    } else {
        String::new()
    };
    let yaml = format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: sel\n  namespace: {ns}\nspec:\n  queue:\n    name: {QUEUE}\n  connection:\n    secretRef:\n      name: redis\n  state: failed\n  selector:\n{filter}    maxJobs: {}\n",
        cfg.jobs
    );
    let file = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let (mut sample, items) = apply_and_wait(cfg, &ns, op, &file);
    let st = &items[0]["status"];
    let want = cfg.expected(path);
    assert_eq!(
        (st["phase"].as_str(), st["retried"].as_u64()),
        (Some("Succeeded"), Some(want as u64)),
        "{path}: {st}"
    );
    sample.retried = want;
    sample.scanned = st["selection"]["scanned"].as_u64().unwrap_or(0) as usize;
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
        p if p.starts_with("c1-") => format!("(c1) retry_batch, batch {}", &p[3..]),
        p if p.starts_with("v-") => {
            let (name, b) = p[2..].rsplit_once('-').unwrap();
            format!("variant {name}, batch {b}")
        }
        p => p.into(),
    }
}

fn main() {
    let cfg = Cfg {
        redis: std::env::var("JR_BENCH_REDIS")
            .expect("JR_BENCH_REDIS=redis://127.0.0.1:PORT is not set; run benches/run.sh")
            .trim_end_matches('/')
            .to_string(),
        jobs: env_or("JR_BENCH_JOBS", "100000").parse().unwrap(),
        runs: env_or("JR_BENCH_RUNS", "3").parse().unwrap(),
        paths: env_or("JR_BENCH_PATHS", "a,b,c1-500,c1-1000,c1-2000,c2,s1,s2")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        kubeconfig: std::env::var("JR_BENCH_KUBECONFIG")
            .ok()
            .filter(|s| !s.is_empty()),
        platform_state: std::env::var("JR_BENCH_PLATFORM_STATE")
            .ok()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        operator: PathBuf::from(env_or(
            "JR_BENCH_OPERATOR",
            repo()
                .join("target/release/jobretry-operator")
                .to_str()
                .unwrap(),
        )),
        check_variants: env_or("JR_BENCH_CHECK_VARIANTS", "1") == "1",
        probe: env_or("JR_BENCH_PROBE", "1") == "1",
    };
    {
        // Keep every command of 1 ms or more (for the longest call); count those >= 10 ms.
        let mut admin = conn(&cfg.db(0));
        for (k, v) in [
            ("slowlog-log-slower-than", SLOWLOG_US),
            ("slowlog-max-len", 1_000_000),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query(&mut admin)
                .unwrap();
        }
    }
    ensure_snapshot(&cfg);
    let keys = snapshot_keys(&cfg);
    let ids = failed_ids(&cfg);
    assert_eq!(ids.len(), cfg.jobs);

    let variants: BTreeMap<String, Script> = cfg
        .paths
        .iter()
        .filter_map(|p| p.strip_prefix("v-"))
        .map(|p| p.rsplit_once('-').unwrap().0.to_string())
        .map(|name| {
            let file = repo().join("benches/lua").join(format!("{name}.lua"));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (name, Script::new(&text))
        })
        .collect();
    if cfg.check_variants && !variants.is_empty() {
        // A variant only counts if it leaves Redis exactly as src/bullmq/retry.lua does.
        restore(&cfg, &keys);
        engine_run(&cfg, &ids, 500, None);
        let reference = dump(&cfg);
        for (name, script) in &variants {
            restore(&cfg, &keys);
            engine_run(&cfg, &ids, 500, Some(script));
            let got = dump(&cfg);
            let diffs: Vec<&String> = reference
                .keys()
                .chain(got.keys())
                .filter(|k| reference.get(*k) != got.get(*k))
                .take(3)
                .collect();
            assert!(
                diffs.is_empty(),
                "variant {name} differs from retry.lua on keys {diffs:?}"
            );
            eprintln!("[bench] variant {name}: end state identical to src/bullmq/retry.lua");
        }
    }

    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for run in 0..cfg.runs {
        for path in &cfg.paths {
            if ["c2", "s1", "s2"].contains(&path.as_str()) && cfg.kubeconfig.is_none() {
                eprintln!("[bench] {path} skipped: JR_BENCH_KUBECONFIG is not set");
                continue;
            }
            restore(&cfg, &keys);
            eprintln!("[bench] run {}/{} {}", run + 1, cfg.runs, describe(path));
            let mut s = match path.as_str() {
                "a" => node_timed(&cfg, "bench-retry-jobs.mjs", &["--count", "1000"]),
                "b" => node_timed(&cfg, "bench-job-retry.mjs", &["--inflight", "50"]),
                "c2" => controller_run(&cfg, &ids, run),
                "s1" | "s2" => selector_run(&cfg, path, run),
                p if p.starts_with("c1-") => engine_run(&cfg, &ids, p[3..].parse().unwrap(), None),
                p if p.starts_with("v-") => {
                    let (name, b) = p[2..].rsplit_once('-').unwrap();
                    engine_run(&cfg, &ids, b.parse().unwrap(), Some(&variants[name]))
                }
                p => panic!("unknown path {p}"),
            };
            verify(&cfg, path);
            if s.retried == 0 {
                (s.retried, s.scanned) = (cfg.jobs, cfg.jobs);
            }
            eprintln!(
                "[bench]   {:.3}s  {:.0} jobs/s  {:.2} us/job Redis CPU  slowlog>=10ms {}  longest {:.1} ms ({})  probe p99 {} ms",
                s.wall,
                s.retried as f64 / s.wall,
                s.redis_cpu_us / s.retried as f64,
                s.slow10,
                s.longest_us as f64 / 1000.0,
                s.longest_cmd,
                s.probe.as_ref().map_or("-".into(), |p| format!(
                    "{:.2}",
                    p["p99"].as_f64().unwrap_or(f64::NAN)
                ))
            );
            samples.entry(path.clone()).or_default().push(s);
        }
    }
    report(&cfg, &samples);
}

fn report(cfg: &Cfg, samples: &BTreeMap<String, Vec<Sample>>) {
    let jobs_per_s = |s: &Sample| s.retried as f64 / s.wall;
    let rate = |p: &str| {
        samples
            .get(p)
            .map(|v| median(v.iter().map(jobs_per_s).collect()))
    };
    let (ra, rb) = (rate("a"), rate("b"));
    let mut out = String::new();
    out.push_str(&format!(
        "\nRetry benchmark: {} failed jobs (BullMQ 6.7.0), medians of {} runs, redis {}\n",
        cfg.jobs,
        cfg.runs,
        redis_version(cfg)
    ));
    out.push_str(&format!(
        "{:<40} | {:>9} | {:>10} | {:>12} | {:>7} | {:>7} | {:>8}\n",
        "path", "wall s", "jobs/s", "Redis us/job", "vs (a)", "vs (b)", "runs"
    ));
    out.push_str(&format!(
        "{}\n",
        "-".repeat(40 + 9 + 10 + 12 + 7 + 7 + 8 + 18)
    ));
    let mut json_rows = Vec::new();
    for path in &cfg.paths {
        let Some(v) = samples.get(path) else { continue };
        let wall = median(v.iter().map(|s| s.wall).collect());
        let r = median(v.iter().map(jobs_per_s).collect());
        let cpu = median(
            v.iter()
                .map(|s| s.redis_cpu_us / s.retried as f64)
                .collect(),
        );
        let vs = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.2}x", r / x));
        out.push_str(&format!(
            "{:<40} | {:>9.3} | {:>10.0} | {:>12.2} | {:>7} | {:>7} | {:>8}\n",
            describe(path),
            wall,
            r,
            cpu,
            vs(ra),
            vs(rb),
            v.len()
        ));
        let probe = |k: &str| -> Vec<f64> {
            v.iter()
                .filter_map(|s| s.probe.as_ref()?[k].as_f64())
                .collect()
        };
        json_rows.push(json!({"path": path, "wall_s": wall, "jobs_per_s": r,
            "redis_cpu_us_per_job": cpu,
            "walls": v.iter().map(|s| s.wall).collect::<Vec<_>>(),
            "retried": v.iter().map(|s| s.retried).collect::<Vec<_>>(),
            "scanned": v.iter().map(|s| s.scanned).collect::<Vec<_>>(),
            "cpu_us_per_job": v.iter().map(|s| s.redis_cpu_us / s.retried as f64).collect::<Vec<_>>(),
            "cpu_us_per_scanned": v.iter().map(|s| s.redis_cpu_us / s.scanned as f64).collect::<Vec<_>>(),
            "slowlog_10ms": v.iter().map(|s| s.slow10).collect::<Vec<_>>(),
            "longest_us": v.iter().map(|s| s.longest_us).collect::<Vec<_>>(),
            "probe_p99_ms": probe("p99"), "probe_max_ms": probe("max"),
            "rss_kib": v.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
            "object_bytes": v.iter().map(|s| s.object_bytes).collect::<Vec<_>>()}));
    }
    // Latency and footprint: the worst run of each path (max over runs), not the median.
    out.push_str(&format!(
        "\nLatency and footprint (worst of the {} runs; calls >= 10 ms and the longest call from SLOWLOG,\nthe probe Worker's own command latency, operator VmHWM, largest JobRetry as kubectl get -o json)\n",
        cfg.runs
    ));
    out.push_str(&format!(
        "{:<40} | {:>9} | {:>10} | {:>7} | {:>15} | {:>9} | {:>9} | {:>6} | {:>7} | {:>7}\n",
        "path",
        "scanned",
        "us/scanned",
        ">=10ms",
        "longest ms",
        "probe p99",
        "probe max",
        "probe n",
        "RSS MiB",
        "obj KiB"
    ));
    out.push_str(&format!(
        "{}\n",
        "-".repeat(40 + 9 + 10 + 7 + 15 + 9 + 9 + 6 + 7 + 7 + 27)
    ));
    for path in &cfg.paths {
        let Some(v) = samples.get(path) else { continue };
        let worst = |f: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
            v.iter()
                .filter_map(f)
                .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
        };
        let show =
            |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |x| format!("{x:.prec$}"));
        let longest = v.iter().max_by_key(|s| s.longest_us).unwrap();
        let longest = if longest.longest_us == 0 {
            format!("< {:.0}", SLOWLOG_US as f64 / 1000.0)
        } else {
            format!(
                "{:.1} {}",
                longest.longest_us as f64 / 1000.0,
                longest.longest_cmd
            )
        };
        let p = |k: &'static str| move |s: &Sample| s.probe.as_ref()?[k].as_f64();
        out.push_str(&format!(
            "{:<40} | {:>9} | {:>10.2} | {:>7} | {:>15} | {:>9} | {:>9} | {:>6} | {:>7} | {:>7}\n",
            describe(path),
            v[0].scanned,
            median(
                v.iter()
                    .map(|s| s.redis_cpu_us / s.scanned as f64)
                    .collect()
            ),
            v.iter().map(|s| s.slow10).max().unwrap_or(0),
            longest,
            show(worst(&p("p99")), 2),
            show(worst(&p("max")), 1),
            show(
                worst(&|s: &Sample| s.probe.as_ref()?["commands"].as_f64()),
                0
            ),
            show(worst(&|s: &Sample| s.rss_kib.map(|k| k as f64 / 1024.0)), 1),
            show(
                worst(&|s: &Sample| s.object_bytes.map(|b| b as f64 / 1024.0)),
                1
            ),
        ));
    }
    // Per-command profile of each path's median run (by wall).
    out.push_str("\nPer-command profile (INFO commandstats of the median run; commands run inside scripts are counted too;\nso are the probe Worker's, a few hundred per second)\n");
    for path in &cfg.paths {
        let Some(v) = samples.get(path) else { continue };
        let mut sorted: Vec<&Sample> = v.iter().collect();
        sorted.sort_by(|a, b| a.wall.partial_cmp(&b.wall).unwrap());
        let s = sorted[sorted.len() / 2];
        let n = s.retried as f64;
        let mut rows: Vec<(&String, &(u64, u64))> =
            s.stats.iter().filter(|(_, (c, _))| *c > 0).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
        out.push_str(&format!("  {}:\n", describe(path)));
        for (cmd, (calls, usec)) in rows.iter().take(12) {
            out.push_str(&format!(
                "    {:<18} {:>9} calls {:>10.3} ms {:>8.2} us/job {:>8.2} us/call\n",
                cmd,
                calls,
                *usec as f64 / 1000.0,
                *usec as f64 / n,
                *usec as f64 / (*calls).max(1) as f64
            ));
        }
        for (k, val) in &s.extra {
            out.push_str(&format!("    {k}: {val:.3}\n"));
        }
    }
    print!("{out}");
    let json_path = env_or(
        "JR_BENCH_JSON",
        repo().join("target/bench-retry.json").to_str().unwrap(),
    );
    let _ = std::fs::write(
        Path::new(&json_path),
        serde_json::to_string_pretty(
            &json!({"jobs": cfg.jobs, "runs": cfg.runs, "rows": json_rows, "table": out}),
        )
        .unwrap(),
    );
}

fn redis_version(cfg: &Cfg) -> String {
    let mut c = conn(&cfg.db(0));
    info(&mut c, "server")
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}
