//! Test harness for the end-to-end tests: talks to the real control plane with `kubectl`,
//! to Redis with the `redis` crate, to BullMQ through the Node fixtures in `tests/bullmq`,
//! and runs the operator binary as a child process.
//!
//! The platform (kube-apiserver + etcd + redis-server) is started by `tests/run.sh`, which
//! exports `JOBRETRY_TEST_KUBECONFIG` and `JOBRETRY_TEST_REDIS_URL`; a test run without them
//! fails with a message saying so.
#![allow(dead_code)]

pub mod helm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests with tests/run.sh, which starts the control plane and Redis")
    })
}

pub fn kubeconfig() -> String {
    env("JOBRETRY_TEST_KUBECONFIG")
}

pub fn redis_url() -> String {
    env("JOBRETRY_TEST_REDIS_URL")
}

/// The test Redis, database `db`.
pub fn db_url(db: u8) -> String {
    format!("{}/{db}", redis_url())
}

/// A connection to the test Redis, database `db`.
pub fn db_conn(db: u8) -> redis::Connection {
    redis::Client::open(db_url(db))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// The condition `t` of a JobRetry (as JSON), or null.
pub fn condition(jr: &Value, t: &str) -> Value {
    jr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Output of a finished command.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Out {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kubectl <args>` against the test control plane.
pub fn kubectl(args: &[&str]) -> Out {
    run(Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args))
}

/// `kubectl <args>` that must succeed; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.ok,
        "kubectl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// Installs the committed CRD once per test binary and waits until it is served.
pub fn ensure_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crd = repo().join("crds/jobretries.jobretry.io.yaml");
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crd.to_str().unwrap(),
        ]);
        // Right after the CRD is created its status has no conditions yet, and `kubectl
        // wait` then fails at once ("status.conditions accessor error") instead of waiting:
        // seen on a brand-new API server. Ask again until it answers.
        eventually(Duration::from_secs(60), "the CRD is established", || {
            kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=10s",
                "crd/jobretries.jobretry.io",
            ])
            .ok
            .then_some(())
        });
    });
}

/// A namespace of its own for one test, with the Redis Secret `redis` in it.
pub struct TestNs {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl TestNs {
    /// A fresh namespace `<base>-<suffix>` (unique per run: without a controller-manager a
    /// deleted namespace never finishes terminating, so names are never reused).
    pub fn new(base: &str) -> Self {
        ensure_crd();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "{base}-{:x}",
            (nanos as u64 ^ u64::from(std::process::id())) & 0xffffff
        );
        kubectl_ok(&["create", "namespace", &name]);
        let ns = Self {
            name,
            dir: tempfile::tempdir().unwrap(),
        };
        ns.secret("redis", &redis_url());
        ns
    }

    pub fn secret(&self, name: &str, url: &str) {
        let _ = kubectl(&[
            "-n",
            &self.name,
            "delete",
            "secret",
            name,
            "--ignore-not-found",
        ]);
        kubectl_ok(&[
            "-n",
            &self.name,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=url={url}"),
        ]);
    }

    /// Writes `yaml` to a file and `kubectl apply -f`s it, as a user would.
    pub fn apply(&self, file: &str, yaml: &str) -> Out {
        let path = self.dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        kubectl(&["-n", &self.name, "apply", "-f", path.to_str().unwrap()])
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        kubectl(&all)
    }

    /// `kubectl wait --for=condition=<cond>` on a JobRetry.
    pub fn wait_condition(&self, jr: &str, cond: &str, timeout: &str) -> Out {
        self.kubectl(&[
            "wait",
            &format!("--for=condition={cond}"),
            &format!("--timeout={timeout}"),
            &format!("jobretry/{jr}"),
        ])
    }

    /// The JobRetry as JSON.
    pub fn get(&self, jr: &str) -> Value {
        let out = self.kubectl(&["get", "jobretry", jr, "-o", "json"]);
        assert!(out.ok, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }
}

/// The operator binary, watching one namespace; killed when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(ns: &TestNs, extra: &[&str]) -> Self {
        let log = ns.dir.path().join(format!(
            "operator-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        // One operator per test needs no election (a restarted one would wait for the Lease
        // of the one it replaces); tests that elect pass lease flags.
        let elect = extra
            .iter()
            .any(|a| a.starts_with("--leader-elect") || a.starts_with("--lease-"));
        let child = Command::new(env!("CARGO_BIN_EXE_jobretry-operator"))
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info,jobretry_operator=debug")
            .args(["--watch-namespace", &ns.name])
            .args(if elect {
                &[][..]
            } else {
                &["--leader-elect=false"][..]
            })
            .args(if extra.contains(&"--http-addr") {
                &[][..]
            } else {
                &["--http-addr", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start operator");
        Self { child, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as the kubelet stops a pod.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let out = run(Command::new("kill").args(["-TERM", &pid]));
        assert!(out.ok, "kill -TERM {pid}: {}", out.stderr);
    }

    /// Waits at most `limit` for the process to exit: its exit code (None: killed by a
    /// signal) and how long it took, or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(Option<i32>, Duration)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status.code(), start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A free loopback TCP port (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET http://<addr><path>` with curl: the status code (0 when nothing answered) and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let out = run(Command::new("curl").args([
        "-s",
        "-m",
        "2",
        "-w",
        "\n%{http_code}",
        &format!("http://{addr}{path}"),
    ]));
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// One series of the operator's /metrics at `addr` (0 when absent), or None when the
/// endpoint does not answer.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics");
    (code == 200).then(|| {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    })
}

/// Seeds `n` failed BullMQ jobs (name `charge`, keys `k0`..) into `queue` with real Workers;
/// returns their ids in order.
pub fn seed_failed(ns: &TestNs, queue: &str, n: usize) -> Vec<String> {
    let spec: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"key": format!("k{i}"), "name": "charge", "data": {"n": i}, "opts": {}, "outcome": "fail"}))
        .collect();
    let path = ns.dir.path().join("spec.json");
    std::fs::write(&path, serde_json::json!({ "jobs": spec }).to_string()).unwrap();
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
    let ids: Vec<String> = seeded["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), n);
    ids
}

/// Runs a real BullMQ Worker on `queue` until it has processed `ids.len()` jobs (and a
/// settling pause more), and asserts it processed each of `ids` exactly once.
pub fn assert_processed_exactly_once(queue: &str, ids: &[String]) {
    let started = Instant::now();
    let processed = node(
        "process.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--expect",
            &ids.len().to_string(),
            "--timeout-ms",
            "170000",
            "--settle-ms",
            "3000",
        ],
    );
    println!(
        "worker processed the retried jobs in {:?}",
        started.elapsed()
    );
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for p in processed["processed"].as_array().unwrap() {
        *times.entry(p["id"].as_str().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "jobs processed more than once: {twice:?}");
    assert_eq!(times.len(), ids.len(), "every retried job processed once");
    assert!(ids.iter().all(|id| times.contains_key(id.as_str())));
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a BullMQ fixture script (`tests/bullmq/<script>`) and parses its JSON output.
pub fn node(script: &str, args: &[&str]) -> Value {
    fixture(&["node".to_string(), script.to_string()], args)
}

/// Runs a fixture command (program and its first arguments, e.g. a Python interpreter and
/// `py/scenario.py`) in `tests/bullmq` with `args`, and parses its JSON output.
pub fn fixture(cmd: &[String], args: &[&str]) -> Value {
    let out = run(Command::new(&cmd[0])
        .current_dir(repo().join("tests/bullmq"))
        .args(&cmd[1..])
        .args(args));
    assert!(
        out.ok,
        "{cmd:?} {args:?} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}): {}", out.stdout))
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

/// Every key of the database at `url` with its content, less the Worker's `stalled-check`
/// throttle keys (SET PX): they expire by themselves, so before/after comparisons leave them out.
pub fn stable_dump(url: &str) -> BTreeMap<String, String> {
    redis_dump_at(url, false)
        .into_iter()
        .filter(|(k, _)| !k.ends_with(":stalled-check"))
        .collect()
}

/// Every key of one queue (`bull:<queue>:*`) in the test database, as [`stable_dump`]
/// gives it; other tests share the database.
pub fn queue_dump(queue: &str) -> BTreeMap<String, String> {
    // Only the queue's keys are read: other tests leave hundreds of thousands of keys.
    let mut pattern = String::from("bull:");
    for c in queue.chars() {
        if matches!(c, '[' | ']' | '?' | '*' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":*");
    redis_dump_matching(&redis_url(), &pattern, false)
        .into_iter()
        .filter(|(k, _)| !k.ends_with(":stalled-check"))
        .collect()
}

/// The ids in `queue`'s wait list (prefix `bull`) on the Redis at `url`, head first.
pub fn waiting_ids(url: &str, queue: &str) -> Vec<String> {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("LRANGE")
        .arg(format!("bull:{queue}:wait"))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap()
}

/// Deletes every key of `queue` from the test database (the large tests' clean-up, so that the
/// tests after them do not wade through their jobs).
pub fn drop_queue(queue: &str) {
    let mut con = db_conn(0);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bull:{queue}:*"))
        .query(&mut con)
        .unwrap();
    for chunk in keys.chunks(10_000) {
        let _: i64 = redis::cmd("UNLINK").arg(chunk).query(&mut con).unwrap();
    }
}

/// Every key of the database at `url` with its full content. With `fields_only`, stream
/// entries are rendered without their ids (which differ between two runs of the same steps).
pub fn redis_dump_at(url: &str, fields_only: bool) -> BTreeMap<String, String> {
    redis_dump_matching(url, "*", fields_only)
}

/// As [`redis_dump_at`], for the keys matching the glob `pattern` only.
pub fn redis_dump_matching(
    url: &str,
    pattern: &str,
    fields_only: bool,
) -> BTreeMap<String, String> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut con).unwrap();
    keys.into_iter()
        .map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(&mut con).unwrap();
            let content: String = match t.as_str() {
                "string" => redis::cmd("GET").arg(&k).query(&mut con).unwrap(),
                "list" => format!(
                    "{:?}",
                    redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query::<Vec<String>>(&mut con)
                        .unwrap()
                ),
                "set" => {
                    let mut m: Vec<String> =
                        redis::cmd("SMEMBERS").arg(&k).query(&mut con).unwrap();
                    m.sort();
                    format!("{m:?}")
                }
                "zset" => format!(
                    "{:?}",
                    redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query::<Vec<String>>(&mut con)
                        .unwrap()
                ),
                "hash" => format!(
                    "{:?}",
                    redis::cmd("HGETALL")
                        .arg(&k)
                        .query::<BTreeMap<String, String>>(&mut con)
                        .unwrap()
                ),
                "stream" => {
                    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query(&mut con)
                        .unwrap();
                    let rendered: Vec<String> = entries
                        .into_iter()
                        .map(|(id, fields)| {
                            if fields_only {
                                fields.join(" ")
                            } else {
                                format!("{id} {}", fields.join(" "))
                            }
                        })
                        .collect();
                    format!("{rendered:?}")
                }
                other => other.to_string(),
            };
            (k, format!("{t}:{content}"))
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns Some, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Operator {
    /// The operator binary with exactly `args` (no implied `--watch-namespace`), talking to
    /// the API server through `kubeconfig`, with `POD_NAME` set as the chart's Deployment
    /// sets it; killed when dropped.
    pub fn start_with_kubeconfig(ns: &TestNs, kubeconfig: &Path, args: &[&str]) -> Self {
        let log = ns.dir.path().join(format!(
            "operator-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        // A free port for the HTTP endpoint, so operators can run side by side.
        let http_addr: &[&str] = if args.iter().any(|a| a.starts_with("--http-addr")) {
            &[]
        } else {
            &["--http-addr", "127.0.0.1:0"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_jobretry-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,jobretry_operator=debug")
            .env("POD_NAME", format!("{}-operator", ns.name))
            .args(args)
            .args(http_addr)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start operator");
        Self { child, log }
    }
}

/// Writes `<dir>/<file>`: a copy of the admin kubeconfig whose users impersonate `user`
/// (kubeconfig `as:`, honoured by kubectl and kube-rs alike). The admin is in
/// system:masters, so the API server allows the impersonation; every request is then
/// authorized as `user`.
pub fn impersonating_kubeconfig(dir: &Path, file: &str, user: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let users = config["users"]
        .as_sequence_mut()
        .expect("kubeconfig has users");
    for u in users {
        u["user"]
            .as_mapping_mut()
            .expect("kubeconfig user")
            .insert("as".into(), user.into());
    }
    let path = dir.join(file);
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    // It holds the admin's client key, like the original.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// A JobRetry manifest, as a user would write it: queue `queue`, Secret `redis`, `ids`;
/// `queue_extra` and `spec_extra` are YAML lines added under `spec.queue` and `spec`.
pub fn jobretry_yaml<S: AsRef<str>>(
    name: &str,
    queue: &str,
    ids: &[S],
    queue_extra: &str,
    spec_extra: &str,
) -> String {
    let ids: Vec<String> = ids.iter().map(|i| format!("\"{}\"", i.as_ref())).collect();
    format!(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\nmetadata:\n  name: {name}\nspec:\n  queue:\n    name: {queue}\n{queue_extra}  connection:\n    secretRef:\n      name: redis\n  jobIds: [{}]\n{spec_extra}",
        ids.join(", ")
    )
}

/// Keys whose content differs between two dumps.
pub fn changed_keys<'a>(
    before: &'a BTreeMap<String, String>,
    after: &'a BTreeMap<String, String>,
) -> Vec<&'a String> {
    before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
        .filter(|k| before.get(*k) != after.get(*k))
        .collect()
}

/// The ids of `n` jobs named `charge` that a real Worker failed, on the queue named as `ns`.
pub fn failed_ids(ns: &TestNs, n: usize) -> Vec<String> {
    let spec = serde_json::json!({"jobs": (0..n).map(|i| serde_json::json!({"key": format!("k{i}"), "name": "charge", "data": {}, "opts": {}, "outcome": "fail"})).collect::<Vec<_>>()});
    let jobs = seed(ns.dir.path(), &ns.name, &spec);
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// For the GitOps health tests: one JobRetry in each phase the operator writes, in `ns`
/// (whose operator must run), on queue `queue` whose failed jobs are `ids` (at least 4):
/// `done` (Succeeded), `partial` (PartiallySucceeded), `paused` (Suspended), `unknown`
/// (Failed), `nosecret` (stalled), each waited for; returns `slow` as read while Running.
pub fn one_of_each_phase(ns: &TestNs, queue: &str, ids: &[String]) -> Value {
    let apply = |name: &str, ids: &[&str], queue_extra: &str, extra: &str| {
        let out = ns.apply(
            &format!("{name}.yaml"),
            &jobretry_yaml(name, queue, ids, queue_extra, extra),
        );
        assert!(out.ok, "{}", out.stderr);
    };
    apply("done", &[&ids[0]], "", "");
    apply("partial", &[&ids[1], "no-such-job"], "", "");
    apply(
        "slow",
        &ids[2..].iter().map(String::as_str).collect::<Vec<_>>(),
        "",
        "  rateLimit:\n    jobsPerSecond: 1\n",
    );
    apply("paused", &[&ids[3]], "", "  suspend: true\n");
    apply("unknown", &["1"], "    bullmqVersion: \"4.0.0\"\n", "");
    let nosecret =
        jobretry_yaml("nosecret", queue, &["1"], "", "").replace("name: redis", "name: missing");
    assert!(ns.apply("nosecret.yaml", &nosecret).ok);
    let wait =
        |name: &str, cond: &str| assert!(ns.wait_condition(name, cond, "60s").ok, "{name} {cond}");
    wait("done", "Complete");
    wait("partial", "Complete");
    wait("unknown", "Failed");
    wait("paused", "Suspended");
    wait("nosecret", "Stalled");
    eventually(Duration::from_secs(30), "the slow run is running", || {
        let jr = ns.get("slow");
        (jr["status"]["phase"] == "Running").then_some(jr)
    })
}

impl Operator {
    /// The address the operator's HTTP endpoint listens on, as its log says (text or JSON),
    /// once it says it.
    pub fn http_addr(&self) -> String {
        eventually(
            Duration::from_secs(30),
            "the operator's HTTP address",
            || {
                let logs = self.logs();
                let line = logs
                    .lines()
                    .find(|l| l.contains("serving /healthz, /readyz and /metrics"))?;
                let (_, rest) = line
                    .split_once("addr=")
                    .or_else(|| line.split_once("\"addr\":\""))?;
                Some(
                    rest.split(|c: char| c.is_whitespace() || c == '"')
                        .next()?
                        .to_string(),
                )
            },
        )
    }
}

/// A redis-server of the test's own with a plain port (for seeding) and a TLS port whose
/// certificate is signed by a CA made here; killed when dropped.
pub struct TlsRedis {
    pub children: Vec<std::process::Child>,
    pub plain: u16,
    pub tls: u16,
    pub ca: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), written into `dir`.
pub fn make_certs(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = run(std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args));
        assert!(out.ok, "openssl {args:?}: {}", out.stderr);
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=jobretry-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

pub fn start_tls_redis(dir: &std::path::Path) -> TlsRedis {
    make_certs(dir);
    let (plain, tls) = (free_port(), free_port());
    let child = std::process::Command::new("redis-server")
        .current_dir(dir)
        .args([
            "--port",
            &plain.to_string(),
            "--tls-port",
            &tls.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
        ])
        .spawn()
        .expect("start redis-server");
    let server = TlsRedis {
        children: vec![child],
        plain,
        tls,
        ca: dir.join("ca.pem"),
    };
    eventually(
        std::time::Duration::from_secs(10),
        "the TLS redis-server to answer",
        || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{plain}")).ok()?;
            let mut con = client.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        },
    );
    server
}

/// Copies `queue`'s BullMQ keys (not the operator's own, under `jobretry:`) from db 0 into
/// `db`, emptied first: another server with the same queue but none of a run's records.
pub fn copy_bullmq_keys(queue: &str, db: u8) {
    let mut con = db_conn(0);
    let _: () = redis::cmd("FLUSHDB").query(&mut db_conn(db)).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bull:{queue}:*"))
        .query(&mut con)
        .unwrap();
    for k in keys.iter().filter(|k| !k.contains(":jobretry:")) {
        let _: i64 = redis::cmd("COPY")
            .arg(k)
            .arg(k)
            .arg("DB")
            .arg(db)
            .query(&mut con)
            .unwrap();
    }
}

/// A redis-server of the test's own (so a fault or a hostile input never touches the shared
/// Redis, and tests can run beside each other), with the given extra arguments; can be killed, stopped, continued and restarted on its port and
/// data directory.
pub struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl OwnRedis {
    pub fn start(extra: &[&str]) -> Self {
        let mut r = OwnRedis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to it.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url().as_str())?.get_connection()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no", "--save", ""])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(30), "redis-server up", || {
            let c = redis::Client::open(url.as_str()).ok()?;
            let mut con = c.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut con).ok()?;
            (!info.contains("loading:1")).then_some(())
        });
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGKILL, as a host crash of the process would, then a start on the same data.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
