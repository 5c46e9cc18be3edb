//! The operator binary as a child process: started against the test control plane, its log in
//! a file, stopped as a crash or the kubelet would; its HTTP endpoint and what /proc says of
//! it (and of any process: CPU time, peak RSS).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{TestNs, eventually, eventually_every, kubeconfig, nanos, run};

/// The operator binary built for the tests.
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_jobretry-operator");

/// The operator binary, watching one namespace; killed when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

/// `args` with `flag` followed by `value` unless some argument starts with `flag` already.
fn default_flag<'a>(args: &[&'a str], flag: &'a str, value: &'a [&'a str]) -> &'a [&'a str] {
    if args.iter().any(|a| a.starts_with(flag)) {
        &[]
    } else {
        value
    }
}

impl Operator {
    /// The test binary watching `ns` with `extra` arguments, at debug level; no leader
    /// election unless `extra` asks for it, its HTTP endpoint on a free port unless `extra`
    /// names one.
    pub fn start(ns: &TestNs, extra: &[&str]) -> Self {
        Self::start_env(ns, extra, &[])
    }

    /// As [`Operator::start`], with environment variables `env` set for it.
    pub fn start_env(ns: &TestNs, extra: &[&str], env: &[(&str, &str)]) -> Self {
        // One operator per test needs no election (a restarted one would wait for the Lease
        // of the one it replaces); tests that elect pass lease flags.
        let elect = extra
            .iter()
            .any(|a| a.starts_with("--leader-elect") || a.starts_with("--lease-"));
        let mut cmd = Command::new(OPERATOR_BIN);
        cmd.env("KUBECONFIG", kubeconfig())
            .envs(env.iter().copied())
            .args(["--watch-namespace", &ns.name])
            .args(if elect {
                &[][..]
            } else {
                &["--leader-elect=false"][..]
            })
            .args(default_flag(
                extra,
                "--http-addr",
                &["--http-addr", "127.0.0.1:0"],
            ))
            .args(extra);
        Self::spawn(cmd, "info,jobretry_operator=debug", operator_log(ns))
    }

    /// The operator binary with exactly `args` (no implied `--watch-namespace`), talking to
    /// the API server through `kubeconfig`, with `POD_NAME` set as the chart's Deployment
    /// sets it; killed when dropped.
    pub fn start_with_kubeconfig(ns: &TestNs, kubeconfig: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(OPERATOR_BIN);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("{}-operator", ns.name))
            .args(args)
            // A free port for the HTTP endpoint, so operators can run side by side.
            .args(default_flag(
                args,
                "--http-addr",
                &["--http-addr", "127.0.0.1:0"],
            ));
        Self::spawn(cmd, "info,jobretry_operator=debug", operator_log(ns))
    }

    /// The binary `bin` (e.g. a release build) with exactly `args`, against the control
    /// plane of [`kubeconfig`], logging at `rust_log` into `log`.
    pub fn start_binary(bin: &Path, rust_log: &str, log: PathBuf, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig()).args(args);
        Self::spawn(cmd, rust_log, log)
    }

    fn spawn(mut cmd: Command, rust_log: &str, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start operator");
        Self { child, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits at most `limit` (polling every 50 ms) until the log contains `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) {
        let what = format!("{text:?} in {}", self.log.display());
        eventually_every(limit, Duration::from_millis(50), &what, || {
            self.logs().contains(text).then_some(())
        });
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

impl Drop for Operator {
    /// Kills the operator; when the test is failing, prints the last lines of its log
    /// (with `JOBRETRY_TEST_LOG_TAIL` lines, default 40).
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let n: usize = (std::env::var("JOBRETRY_TEST_LOG_TAIL").ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(40);
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            eprintln!("--- last {n} lines of {} ---\n{tail}", self.log.display());
        }
    }
}

/// A fresh log file in the namespace's directory.
fn operator_log(ns: &TestNs) -> PathBuf {
    ns.dir.path().join(format!("operator-{}.log", nanos()))
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

/// Peak resident set of process `pid` in KiB (VmHWM), or None when /proc does not say.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
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

/// The fields of /proc/<pid>/stat after the command name (the state first), or none when the
/// process is gone.
pub fn proc_stat(pid: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// utime + stime of a process, in seconds (0 when it is gone).
pub fn proc_cpu_s(pid: u32) -> f64 {
    let f = proc_stat(&pid.to_string());
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}
