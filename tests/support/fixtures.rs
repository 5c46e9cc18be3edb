//! BullMQ jobs made and worked by real clients: the Node fixtures in `tests/bullmq/*.mjs`
//! and the PyPI clients (`tests/bullmq/py`), run as child processes that print JSON.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{TestNs, redis_url, repo, run};

/// Runs a BullMQ fixture script (`tests/bullmq/<script>`) and parses its JSON output.
pub fn node(script: &str, args: &[&str]) -> Value {
    fixture(&["node".to_string(), script.to_string()], args)
}

fn in_fixtures(cmd: &[String]) -> Command {
    let mut c = Command::new(&cmd[0]);
    c.current_dir(repo().join("tests/bullmq")).args(&cmd[1..]);
    c
}

fn parse(what: &str, stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stdout}"))
}

/// Runs a fixture command (program and its first arguments, e.g. a Python interpreter and
/// `py/scenario.py`) in `tests/bullmq` with `args`, and parses its JSON output.
pub fn fixture(cmd: &[String], args: &[&str]) -> Value {
    let out = run(in_fixtures(cmd).args(args));
    assert!(
        out.ok,
        "{cmd:?} {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    parse(&format!("{cmd:?}"), &out.stdout)
}

/// As [`node`], with the script's stderr (its progress) passed through to ours as it comes.
pub fn node_verbose(script: &str, args: &[&str]) -> Value {
    let out = in_fixtures(&["node".to_string(), script.to_string()])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
    assert!(out.status.success(), "node {script} {args:?} failed");
    parse(script, &String::from_utf8_lossy(&out.stdout))
}

/// A fixture script that prepares, says `READY` on stderr, then waits for a line on stdin
/// before its measured part, and prints its JSON result when it ends. Its other stderr lines
/// are passed through to ours (less those containing one of `quiet`).
pub struct ReadyScript {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    forward: Option<JoinHandle<()>>,
}

impl ReadyScript {
    /// `node <script> <args>` in tests/bullmq, once it is ready (at most `limit`).
    pub fn node(script: &str, args: &[&str], quiet: &[&str], limit: Duration) -> Self {
        let mut child = in_fixtures(&["node".to_string(), script.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let quiet: Vec<String> = quiet.iter().map(|q| q.to_string()).collect();
        let forward = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                } else if !quiet.iter().any(|q| line.contains(q.as_str())) {
                    eprintln!("  {line}");
                }
            }
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("{script} never became ready"));
        let stdin = child.stdin.take();
        Self {
            name: script.to_string(),
            child,
            stdin,
            forward: Some(forward),
        }
    }

    /// Starts the measured part.
    pub fn go(&mut self) {
        self.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }

    /// Closes its stdin (a script that records until then stops recording).
    pub fn close(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for the end: its JSON result (it must succeed).
    pub fn finish(mut self) -> Value {
        self.close();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "{} failed", self.name);
        if let Some(f) = self.forward.take() {
            f.join().unwrap();
        }
        parse(&self.name, &out)
    }
}

impl Drop for ReadyScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed.mjs spec of `n` jobs named `charge` (keys `k0`..) that a Worker fails; `data`
/// gives each job's data from its index.
pub fn failing_charges(n: usize, data: impl Fn(usize) -> Value) -> Value {
    let jobs: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("k{i}"), "name": "charge", "data": data(i), "opts": {}, "outcome": "fail"}))
        .collect();
    json!({ "jobs": jobs })
}

/// The ids of seeded jobs, in order.
pub fn ids_of(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// Seeds `n` failed BullMQ jobs (name `charge`, keys `k0`.., data `{n: i}`) into `queue` with
/// real Workers (concurrency 50); returns their ids in order.
pub fn seed_failed(ns: &TestNs, queue: &str, n: usize) -> Vec<String> {
    let path = ns.dir.path().join("spec.json");
    std::fs::write(&path, failing_charges(n, |i| json!({"n": i})).to_string()).unwrap();
    let seeded = node(
        "seed.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--spec",
            path.to_str().unwrap(),
            "--concurrency",
            "50",
            "--timeout-ms",
            "170000",
        ],
    );
    let ids = ids_of(seeded["jobs"].as_array().unwrap());
    assert_eq!(ids.len(), n);
    ids
}

/// The ids of `n` jobs named `charge` (data `{}`) that a real Worker failed, on the queue
/// named as `ns`.
pub fn failed_ids(ns: &TestNs, n: usize) -> Vec<String> {
    ids_of(&seed(
        ns.dir.path(),
        &ns.name,
        &failing_charges(n, |_| json!({})),
    ))
}

/// Runs a real BullMQ Worker on `queue` until it has processed `ids.len()` jobs (and a
/// settling pause more), and asserts it processed each of `ids` exactly once.
pub fn assert_processed_exactly_once(queue: &str, ids: &[String]) {
    let started = Instant::now();
    let settle = ["--timeout-ms", "170000", "--settle-ms", "3000"];
    let processed = processed_ids(&redis_url(), queue, ids.len(), &settle);
    println!(
        "worker processed the retried jobs in {:?}",
        started.elapsed()
    );
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &processed {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "jobs processed more than once: {twice:?}");
    assert_eq!(times.len(), ids.len(), "every retried job processed once");
    assert!(ids.iter().all(|id| times.contains_key(id.as_str())));
}

/// Seeds `queue` with the jobs of `spec` (the seed.mjs format) through a real BullMQ Worker.
pub fn seed(dir: &Path, queue: &str, spec: &Value) -> Vec<Value> {
    seed_at(dir, &redis_url(), queue, spec)
}

/// As [`seed`], in the Redis database at `url`.
pub fn seed_at(dir: &Path, url: &str, queue: &str, spec: &Value) -> Vec<Value> {
    let path = dir.join(format!("{queue}-spec.json"));
    std::fs::write(&path, spec.to_string()).unwrap();
    let out = node(
        "seed.mjs",
        &[
            "--redis",
            url,
            "--queue",
            queue,
            "--spec",
            path.to_str().unwrap(),
        ],
    );
    out["jobs"].as_array().unwrap().clone()
}

/// The id of the seeded job with `key`.
pub fn id_of(jobs: &[Value], key: &str) -> String {
    jobs.iter()
        .find(|j| j["key"] == key)
        .unwrap_or_else(|| panic!("no seeded job {key}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Seeds the queue named as `ns` with `jobs` (seed.mjs job specs) through a real BullMQ Worker.
pub fn seed_in(ns: &TestNs, jobs: &[Value]) -> Vec<Value> {
    seed(ns.dir.path(), &ns.name, &json!({ "jobs": jobs }))
}

/// Runs a real BullMQ Worker (process.mjs) on `queue` at `url` until it has processed
/// `expect` jobs (`extra`: more process.mjs arguments): the ids it processed, in order.
pub fn processed_ids(url: &str, queue: &str, expect: usize, extra: &[&str]) -> Vec<String> {
    let expect = expect.to_string();
    let args = ["--redis", url, "--queue", queue, "--expect", &expect];
    let out = node("process.mjs", &[&args[..], extra].concat());
    let processed = out["processed"].as_array().unwrap();
    processed
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}
