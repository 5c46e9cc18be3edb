//! Test support for the end-to-end tests and the benchmark: talks to the real control plane
//! with `kubectl` ([`kube`]), to Redis with the `redis` crate ([`redis`]), to BullMQ through
//! the Node and Python fixtures in `tests/bullmq` ([`fixtures`]), runs the operator binary as a
//! child process ([`operator`]), builds JobRetry manifests from the crate's typed spec
//! ([`manifests`]) and reads their status into the typed status ([`status`]); [`helm`] renders
//! the chart.
//!
//! The platform (kube-apiserver + etcd + redis-server) is started by `tests/run.sh`, which
//! exports `JOBRETRY_TEST_KUBECONFIG` and `JOBRETRY_TEST_REDIS_URL`; a test run without them
//! fails with a message saying so. `benches/retry.rs` uses the same files
//! (`#[path = "../tests/support/mod.rs"]`) and names its own kubeconfig ([`use_kubeconfig`]).
// Every test binary uses a part of it.
#![allow(dead_code, unused_imports)]

mod fixtures;
mod gitops;
pub mod helm;
mod kube;
mod manifests;
mod operator;
mod redis;
mod status;

pub use self::{fixtures::*, gitops::*, kube::*, manifests::*, operator::*, redis::*, status::*};

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment variable `name`, set by tests/run.sh.
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests with tests/run.sh, which starts the control plane and Redis")
    })
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

/// `cmd`, which must succeed (`what` names it in the failure); returns stdout.
pub fn run_ok(what: &str, cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.ok, "{what} failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

/// Polls `f` every 200 ms until it returns Some, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_every(timeout, Duration::from_millis(200), what, f)
}

/// As [`eventually`], polling every `every`.
pub fn eventually_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
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

/// Nanoseconds since the epoch: unique names for files and namespaces.
pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
