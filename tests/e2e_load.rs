//! Load: 1,000 JobRetry objects (10 namespaces × 100, 20 job ids each) applied at once, on
//! 20,000 jobs that a real BullMQ Worker failed. One operator, watching all namespaces, with
//! a bound on concurrent runs and on its API request rate, must complete every object and
//! retry every job: timed from the operator's start to the last object done, with the
//! operator's peak RSS (VmHWM) from /proc. Both are printed in one line beside their bounds
//! (`[load] 1000 objects Succeeded in S s (bound 120 s), operator peak RSS M MiB (bound
//! 64 MiB)`), so CI logs show them. The bounds are regression catches, not targets:
//! the API rate limit alone makes 1,000 runs take about 40 s (42-55 s measured on a busy
//! 2-core machine), so 120 s catches a regression (runs serialized, or retried with backoff)
//! without turning a slow machine into a failure; 64 MiB catches a leak or an unbounded
//! cache.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const NAMESPACES: usize = 10;
const PER_NAMESPACE: usize = 100;
const IDS: usize = 20;
const JOBS: usize = NAMESPACES * PER_NAMESPACE * IDS;
/// Regression catches, not targets: the run takes about 40-60 s and the operator's peak RSS
/// is well under the bound; the measured figures are printed beside these in one line.
const WALL_BOUND: Duration = Duration::from_secs(120);
const RSS_BOUND_MIB: u64 = 64;

/// Peak resident set of process `pid` in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// How many JobRetries of `namespaces` are in phase Succeeded (one light listing: only the
/// namespace and phase columns, so the poll costs the shared machine little).
fn succeeded(namespaces: &[TestNs]) -> usize {
    let out = kubectl_ok(&[
        "get",
        "jobretries",
        "-A",
        "--no-headers",
        "-o",
        "custom-columns=NS:.metadata.namespace,PHASE:.status.phase",
    ]);
    out.lines()
        .filter(|l| {
            let mut cols = l.split_whitespace();
            let (ns, phase) = (cols.next().unwrap_or(""), cols.next().unwrap_or(""));
            phase == "Succeeded" && namespaces.iter().any(|n| n.name == ns)
        })
        .count()
}

#[test]
fn a_thousand_jobretries_applied_at_once_all_complete() {
    let namespaces: Vec<TestNs> = (0..NAMESPACES).map(|_| TestNs::new("e2e-load")).collect();
    let queue = namespaces[0].name.clone();
    let seeded = Instant::now();
    let out = node(
        "bench-seed.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            &queue,
            "--jobs",
            &JOBS.to_string(),
        ],
    );
    assert_eq!(out["failed"], JOBS, "{out}");
    eprintln!(
        "[load] {JOBS} failed jobs seeded by BullMQ in {:.1}s",
        seeded.elapsed().as_secs_f64()
    );

    // Object k of namespace n names ids (n*100 + k)*20 + 1 ..= +20 (addBulk numbers from 1).
    let mut items = Vec::new();
    for (n, ns) in namespaces.iter().enumerate() {
        for k in 0..PER_NAMESPACE {
            let first = (n * PER_NAMESPACE + k) * IDS + 1;
            let ids: Vec<String> = (first..first + IDS).map(|i| i.to_string()).collect();
            items.push(jobretry(&format!("load-{k}"), &queue, &ids).namespace(&ns.name));
        }
    }
    let path = namespaces[0].dir.path().join("load.json");
    std::fs::write(&path, manifest_list(&items)).unwrap();
    let applied = Instant::now();
    kubectl_ok(&["create", "-f", path.to_str().unwrap()]);
    eprintln!(
        "[load] 1000 JobRetries created in {:.1}s",
        applied.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let op = Operator::start_with_kubeconfig(
        &namespaces[0],
        std::path::Path::new(&kubeconfig()),
        &[
            "--max-concurrent-runs",
            "16",
            "--kube-api-qps",
            "100",
            "--kube-api-burst",
            "200",
        ],
    );
    eventually(
        Duration::from_secs(180),
        "all 1000 JobRetries to succeed",
        || {
            std::thread::sleep(Duration::from_millis(800));
            (succeeded(&namespaces) == NAMESPACES * PER_NAMESPACE).then_some(())
        },
    );
    let wall = started.elapsed();
    let rss = peak_rss_kib(op.pid());
    // The figures CI logs show, beside the bounds asserted below.
    eprintln!(
        "[load] {} objects Succeeded in {:.1} s (bound {} s), operator peak RSS {:.1} MiB (bound {} MiB)",
        NAMESPACES * PER_NAMESPACE,
        wall.as_secs_f64(),
        WALL_BOUND.as_secs(),
        rss as f64 / 1024.0,
        RSS_BOUND_MIB
    );
    let objects: Vec<Value> = namespaces
        .iter()
        .flat_map(|ns| {
            let out = ns.kubectl(&["get", "jobretries", "-o", "json"]);
            let list: Value = serde_json::from_str(&out.stdout).unwrap();
            list["items"].as_array().unwrap().clone()
        })
        .collect();
    assert_eq!(objects.len(), NAMESPACES * PER_NAMESPACE);
    for o in &objects {
        assert_eq!(
            status_of(o).counts,
            counts([("Retried", IDS as u64)]),
            "{}",
            o["metadata"]["name"]
        );
    }
    // Every failed job is back in wait, once.
    let mut con = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let failed: usize = redis::cmd("ZCARD")
        .arg(format!("bull:{queue}:failed"))
        .query(&mut con)
        .unwrap();
    let waiting = waiting_ids(&redis_url(), &queue);
    let distinct: std::collections::BTreeSet<&String> = waiting.iter().collect();
    assert_eq!((failed, waiting.len(), distinct.len()), (0, JOBS, JOBS));
    drop(op);
    drop_queue(&queue);
    // The namespaces stay (no controller-manager finishes deleting them); their objects go, so
    // that a later operator watching all namespaces does not carry them.
    for ns in &namespaces {
        ns.kubectl(&["delete", "jobretries", "--all", "--wait=false"]);
    }
    assert!(
        wall < WALL_BOUND,
        "took {wall:?}; expected about 40-60 s, at most {WALL_BOUND:?}"
    );
    assert!(
        rss < RSS_BOUND_MIB * 1024,
        "peak RSS {rss} KiB; the bound is {RSS_BOUND_MIB} MiB"
    );
}
