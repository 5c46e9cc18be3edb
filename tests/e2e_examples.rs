//! Every manifest in `examples/` is applied as a user would (`kubectl apply -f`) against the
//! test control plane, on real BullMQ jobs in the Redis topology it is written for, and must
//! reach the outcome its `# outcome:` comment documents. A file without a case here fails the
//! test, so a new example cannot go untested.
//!
//! The only changes made to a file before applying it: every `payments` (the namespace, the
//! queue and the Secret names) becomes the test's own namespace, so that runs never share a
//! queue; the Secret's `url:` becomes the test Redis; and for TLS, the `ca.crt` placeholder
//! becomes the test CA.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use support::*;

/// One seeded job: its id (empty: BullMQ's own), name, how it ends ("fail" or "complete"),
/// its failedReason, and whether the example retries it (or, for a dry run, would).
type Job = (&'static str, &'static str, &'static str, &'static str, bool);

/// The jobs an example is written for, and the Redis they live in.
struct Case {
    jobs: &'static [Job],
    redis: Topology,
}

enum Topology {
    Standalone,
    Tls,
    Cluster,
    Sentinel,
}

/// Failed charges, some with ECONNRESET, and an email job with ECONNRESET.
const ECONNRESET_MIX: &[Job] = &[
    ("", "charge-card", "fail", "read ECONNRESET", true),
    ("", "charge-card", "fail", "card declined", false),
    (
        "",
        "charge-card",
        "fail",
        "socket hang up: ECONNRESET",
        true,
    ),
    ("", "email-receipt", "fail", "read ECONNRESET", false),
    ("", "charge-card", "fail", "ECONNRESET", true),
];

const TLS_JOBS: [Job; 2] = [
    ("refund-7", "refund", "fail", "timeout", true),
    ("refund-8", "refund", "fail", "timeout", true),
];
const CLUSTER_JOBS: [Job; 2] = [
    ("invoice-31", "invoice", "fail", "timeout", true),
    ("invoice-32", "invoice", "fail", "timeout", true),
];
const SENTINEL_JOBS: [Job; 2] = [
    ("payout-5", "payout", "fail", "timeout", true),
    ("payout-6", "payout", "fail", "timeout", true),
];

/// The jobs and topology each example is written for. A file missing here fails the test.
fn case(file: &str) -> Option<Case> {
    use Topology::*;
    let c = |jobs, redis| Case { jobs, redis };
    Some(match file {
        "retry-by-ids.yaml" => c(
            &[
                ("order-1042", "charge-card", "fail", "card declined", true),
                ("order-1043", "charge-card", "fail", "card declined", true),
            ],
            Standalone,
        ),
        "retry-by-selector.yaml" | "dry-run.yaml" | "policy-econnreset.yaml" => {
            c(ECONNRESET_MIX, Standalone)
        }
        "completed-with-resets.yaml" => c(
            &[
                ("", "send-receipt", "complete", "", true),
                ("", "send-receipt", "fail", "template error", false),
                ("", "send-receipt", "complete", "", true),
            ],
            Standalone,
        ),
        "tls.yaml" => c(&TLS_JOBS, Tls),
        "cluster.yaml" => c(&CLUSTER_JOBS, Cluster),
        "sentinel.yaml" => c(&SENTINEL_JOBS, Sentinel),
        _ => return None,
    })
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: tests/run.sh starts Cluster and Sentinel (JOBRETRY_PLATFORM_TOPOLOGIES=1)"))
}

/// What an example's `# outcome:` comment documents of its status; a key it leaves out is a
/// field the status must not have.
#[derive(serde::Deserialize, Debug, PartialEq)]
struct Outcome {
    phase: Option<String>,
    matched: Option<u64>,
    retried: Option<u64>,
    skipped: Option<u64>,
    errors: Option<u64>,
    /// `status.preview.matched`, for a dry run.
    preview: Option<u64>,
}

/// The documented outcome: the `# outcome: {...}` line of the file, read as YAML.
fn documented_outcome(text: &str, file: &str) -> Outcome {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# outcome:"))
        .unwrap_or_else(|| panic!("{file} has no `# outcome: {{...}}` comment"));
    serde_norway::from_str(line).unwrap_or_else(|e| panic!("{file}: outcome is not YAML: {e}"))
}

/// The file as applied here: `payments` becomes `ns`, the Secret's url `url`, and the
/// `ca.crt` block (if any) the PEM `ca`.
fn localize(text: &str, ns: &str, url: &str, ca: Option<&str>) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("  url: ") {
            out.push(format!("  url: {url}"));
        } else if line == "  ca.crt: |" {
            out.push(line.to_string());
            while lines.peek().is_some_and(|l| l.starts_with("    ")) {
                lines.next();
            }
            let pem = ca.expect("a ca.crt example needs the test CA");
            out.extend(pem.lines().map(|l| format!("    {l}")));
        } else {
            out.push(line.replace("payments", ns));
        }
    }
    out.join("\n") + "\n"
}

/// The kind and name of the file's JobRetry or JobRetryPolicy document.
fn run_document(text: &str) -> (String, String) {
    text.split("\n---\n")
        .filter_map(|d| serde_norway::from_str::<serde_norway::Value>(d).ok())
        .find_map(|v| {
            let kind = v["kind"].as_str()?;
            matches!(kind, "JobRetry" | "JobRetryPolicy").then(|| {
                let name = v["metadata"]["name"].as_str().unwrap().to_string();
                (kind.to_string(), name)
            })
        })
        .expect("a JobRetry or JobRetryPolicy document")
}

/// The JobRetry whose outcome the file documents: the file's own, or a policy's first run
/// (the earliest tick), as `kubectl get jobretries -l jobretry.io/policy=NAME` lists it.
fn run_name(ns: &TestNs, text: &str) -> String {
    match run_document(text) {
        (kind, name) if kind == "JobRetryPolicy" => {
            eventually(Duration::from_secs(90), "the policy's first run", || {
                ns.runs_of(&name).into_iter().next()
            })
        }
        (_, name) => name,
    }
}

/// Seeds the case's jobs in `queue` through a real BullMQ Worker; returns seed.mjs's rows.
fn seed_case(ns: &TestNs, c: &Case, url: &str, conn: &[&str], prefix: &str) -> Vec<Value> {
    let jobs: Vec<Value> = c
        .jobs
        .iter()
        .enumerate()
        .map(|(i, (id, name, outcome, reason, _))| {
            let opts = if id.is_empty() {
                json!({})
            } else {
                json!({"jobId": id})
            };
            json!({"key": format!("k{i}"), "name": name, "data": {"reason": reason}, "opts": opts, "outcome": outcome})
        })
        .collect();
    let path = ns.dir.path().join("seed.json");
    std::fs::write(&path, json!({ "jobs": jobs }).to_string()).unwrap();
    let mut args = vec![
        "--redis",
        url,
        "--queue",
        &ns.name,
        "--prefix",
        prefix,
        "--spec",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(conn);
    node("seed.mjs", &args)["jobs"].as_array().unwrap().clone()
}

/// For a topology: the URL the operator gets, the URL and connection flags seed.mjs and
/// process.mjs get, and the queue's prefix.
fn endpoints<'a>(
    redis: &Topology,
    tls: Option<&TlsRedis>,
    sentinel_master: &'a str,
) -> (String, String, Vec<&'a str>, &'static str) {
    match redis {
        Topology::Standalone => (redis_url(), redis_url(), vec![], "bull"),
        Topology::Tls => {
            let t = tls.expect("the test's TLS redis-server");
            (
                format!("rediss://127.0.0.1:{}", t.tls),
                format!("redis://127.0.0.1:{}", t.plain),
                vec![],
                "bull",
            )
        }
        Topology::Cluster => {
            let u = env("JOBRETRY_TEST_CLUSTER_URL");
            (u.clone(), u, vec!["--cluster"], "{bull}")
        }
        Topology::Sentinel => {
            let u = env("JOBRETRY_TEST_SENTINEL_URL");
            (u.clone(), u, vec!["--sentinel", sentinel_master], "bull")
        }
    }
}

/// Applies one example and checks its documented outcome; panics saying what differs.
fn check_example(path: &Path) {
    let file = path.file_name().unwrap().to_str().unwrap().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let want = documented_outcome(&text, &file);
    let c = case(&file).unwrap_or_else(|| {
        panic!(
            "examples/{file} has no case in tests/e2e_examples.rs: add the jobs it is written for"
        )
    });
    let ns = TestNs::new("e2e-example");
    let tls = matches!(c.redis, Topology::Tls).then(|| start_tls_redis(ns.dir.path()));
    let sentinel_master = matches!(c.redis, Topology::Sentinel)
        .then(|| env("JOBRETRY_TEST_SENTINEL_MASTER"))
        .unwrap_or_default();
    let (url, seed_url, conn, prefix) = endpoints(&c.redis, tls.as_ref(), &sentinel_master);
    if matches!(c.redis, Topology::Sentinel) {
        assert!(
            text.contains(&format!("sentinelMasterName: {sentinel_master}")),
            "{file}: the test platform's sentinel monitors {sentinel_master}"
        );
    }
    let seeded = seed_case(&ns, &c, &seed_url, &conn, prefix);
    let ca = tls
        .as_ref()
        .map(|t| std::fs::read_to_string(&t.ca).unwrap());
    let manifest = localize(&text, &ns.name, &url, ca.as_deref());
    let before = matches!(c.redis, Topology::Standalone).then(|| queue_dump(&ns.name));
    let _op = Operator::start(&ns, &[]);
    let local = ns.dir.path().join(&file);
    std::fs::write(&local, &manifest).unwrap();
    let applied = kubectl(&["apply", "-f", local.to_str().unwrap()]);
    assert!(applied.ok, "{file}: {}{}", applied.stdout, applied.stderr);
    let name = run_name(&ns, &text);
    let waited = ns.wait_condition(&name, "Complete", "90s");
    assert!(
        waited.ok,
        "{file}: {}\n{}\n{}",
        waited.stderr,
        ns.get(&name),
        _op.logs()
    );
    let st = ns.status(&name);
    let got = Outcome {
        phase: st.phase.clone(),
        matched: st.matched,
        retried: st.retried,
        skipped: st.skipped,
        errors: st.errors,
        preview: want.preview.and(st.preview.as_ref().map(|p| p.matched)),
    };
    assert_eq!(
        got, want,
        "{file}: the status is not the documented outcome: {st:?}"
    );
    let (kind, policy) = run_document(&text);
    if kind == "JobRetryPolicy" {
        let retried = st.retried.unwrap_or_default();
        eventually(Duration::from_secs(30), "the policy counts its run", || {
            let ps = ns.policy_status(&policy);
            (ps.runs_created >= 1 && ps.jobs_retried == retried).then_some(())
        });
    }
    if want.preview.is_some() {
        assert_eq!(
            before,
            Some(queue_dump(&ns.name)),
            "{file}: a dry run changed Redis"
        );
    }
    // The rows: exactly the jobs the example is written to retry were retried (or, in a
    // dry run, would be).
    let retried: BTreeSet<String> = st
        .jobs
        .iter()
        .filter(|r| r.result == "Retried" || r.result == "WouldRetry")
        .map(|r| r.id.clone())
        .collect();
    let expected: BTreeSet<String> = (c.jobs.iter().enumerate())
        .filter(|(_, job)| job.4)
        .map(|(i, _)| id_of(&seeded, &format!("k{i}")))
        .collect();
    assert_eq!(retried, expected, "{file}: retried rows: {st:?}");
    if want.preview.is_some() {
        return;
    }
    assert_processed(
        &file,
        &text,
        (&seed_url, &conn, prefix),
        &ns.name,
        &expected,
    );
}

/// A real Worker processes exactly the `expected` jobs, once each, with the attempt counter
/// reset where the example asks for it.
fn assert_processed(
    file: &str,
    text: &str,
    (seed_url, conn, prefix): (&str, &[&str], &str),
    queue: &str,
    expected: &BTreeSet<String>,
) {
    let n = expected.len().to_string();
    let mut args = vec![
        "--redis", seed_url, "--queue", queue, "--prefix", prefix, "--expect", &n,
    ];
    args.extend_from_slice(conn);
    let out = node("process.mjs", &args);
    let processed = out["processed"].as_array().unwrap();
    let ids: BTreeSet<String> = (processed.iter())
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(processed.len(), expected.len(), "{file}: each once: {out}");
    assert_eq!(&ids, expected, "{file}: {out}");
    if text.contains("resetAttemptsMade: true") {
        assert!(
            processed.iter().all(|p| p["attemptsMade"] == 0),
            "{file}: {out}"
        );
    }
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_reaches_its_documented_outcome() {
    let files = example_files();
    assert!(files.len() >= 8, "examples/: {files:?}");
    for f in &files {
        assert!(
            f.extension().is_some_and(|e| e == "yaml"),
            "examples/ holds only manifests (*.yaml): {}",
            f.display()
        );
        let file = f.file_name().unwrap().to_str().unwrap();
        assert!(
            case(file).is_some(),
            "examples/{file} has no case in tests/e2e_examples.rs"
        );
    }
    // The examples run side by side, each in its own namespace with its own operator.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| (f, s.spawn(|| check_example(f))))
            .collect();
        handles
            .into_iter()
            .filter_map(|(f, h)| h.join().err().map(|_| f.display().to_string()))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "examples that did not reach their documented outcome (see the panics above): {failures:?}"
    );
}

#[test]
fn localizing_changes_only_the_namespace_the_url_and_the_ca() {
    let text = std::fs::read_to_string(repo().join("examples/tls.yaml")).unwrap();
    let out = localize(&text, "ns1", "rediss://h:1", Some("PEM1\nPEM2\nPEM3\n"));
    assert!(out.contains("  url: rediss://h:1\n"), "{out}");
    assert!(
        out.contains("  ca.crt: |\n    PEM1\n    PEM2\n    PEM3\n---"),
        "{out}"
    );
    assert!(!out.contains("payments") && out.contains("namespace: ns1"));
    // Line by line (the placeholder CA has 3 lines too): every other line is unchanged.
    assert_eq!(text.lines().count(), out.lines().count());
    for (before, after) in text.lines().zip(out.lines()) {
        assert!(
            before == after
                || before.contains("payments")
                || after.starts_with("  url: ")
                || after.starts_with("    PEM"),
            "{before:?} became {after:?}"
        );
    }
}
