//! GitOps health for Flux: kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, what Flux's
//! kustomize-controller and helm-controller compute health with) reading JobRetry objects the
//! operator really produced, through the real API server and Redis. kstatus has no rules for
//! our kind, so it reads the generic signs we write: `observedGeneration`, and the
//! `Reconciling`, `Stalled` and `Ready` conditions.
//!
//! The kstatus program is `tests/platform/kstatus/main.go`, built and cached by
//! `tests/platform/build-kstatus.sh` (its path in `JOBRETRY_TEST_KSTATUS`, else built here).

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::*;
use serde_json::{Value, json};

fn kstatus_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("JOBRETRY_TEST_KSTATUS") {
        return bin.into();
    }
    let out = run(&mut Command::new(
        repo().join("tests/platform/build-kstatus.sh"),
    ));
    assert!(out.ok, "build-kstatus.sh: {}", out.stderr);
    out.stdout.trim().into()
}

/// kstatus' verdict on `obj`: (status, message).
fn kstatus(obj: &Value) -> (String, String) {
    let mut child = Command::new(kstatus_bin())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus-read failed on {obj}");
    let line = String::from_utf8(out.stdout).unwrap();
    let mut cells = line.trim_end().splitn(3, '\t').skip(1);
    let status = cells.next().unwrap_or_default().to_string();
    (status, cells.next().unwrap_or_default().to_string())
}

fn failing(n: usize) -> Value {
    json!({"jobs": (0..n).map(|i| json!({"key": format!("k{i}"), "name": "charge", "data": {}, "opts": {}, "outcome": "fail"})).collect::<Vec<_>>()})
}

#[test]
fn kstatus_reads_every_phase_the_operator_writes() {
    let ns = TestNs::new("e2e-flux");
    let queue = ns.name.as_str();
    let jobs = seed(ns.dir.path(), queue, &failing(24));
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();

    // Before the operator has seen it: the schema's default status says generation 0.
    let fresh = jobretry_yaml("fresh", queue, &[&ids[0]], "", "");
    assert!(ns.apply("fresh.yaml", &fresh).ok);
    let (s, m) = kstatus(&ns.get("fresh"));
    assert_eq!(s, "InProgress", "a JobRetry nobody has run yet: {m}");
    assert!(m.contains("observed generation is 0"), "{m}");

    let _op = Operator::start(&ns, &[]);
    let apply = |name: &str, ids: &[&str], queue_extra: &str, extra: &str| {
        let out = ns.apply(
            &format!("{name}.yaml"),
            &jobretry_yaml(name, queue, ids, queue_extra, extra),
        );
        assert!(out.ok, "{}", out.stderr);
    };
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
    wait("fresh", "Complete");
    wait("partial", "Complete");
    wait("unknown", "Failed");
    wait("paused", "Suspended");
    wait("nosecret", "Stalled");
    let running = eventually(Duration::from_secs(30), "the slow run is running", || {
        let jr = ns.get("slow");
        (jr["status"]["phase"] == "Running").then_some(jr)
    });
    let cases = [
        ("fresh", "Succeeded", "Current", "Resource is Ready"),
        (
            "partial",
            "PartiallySucceeded",
            "Current",
            "Resource is Ready",
        ),
        (
            "unknown",
            "Failed",
            "Failed",
            "BullMQ 4.0.0 is not supported",
        ),
        ("nosecret", "Pending", "Failed", "Secret"),
        // Suspended is not done: Ready is False, which kstatus reads as InProgress.
        (
            "paused",
            "Suspended",
            "InProgress",
            "suspended after processed 0 of",
        ),
    ];
    for (name, phase, status, message) in cases {
        let jr = ns.get(name);
        assert_eq!(jr["status"]["phase"], phase, "{name}: {jr}");
        let (s, m) = kstatus(&jr);
        assert_eq!(s, status, "{name}: {m}");
        assert!(m.contains(message), "{name}: {m:?} lacks {message:?}");
    }
    let (s, m) = kstatus(&running);
    assert_eq!(s, "InProgress", "{m}");
    assert!(m.contains("processed"), "{m}");

    // Resumed: until the operator observes the new generation, kstatus says InProgress.
    let mut resumed = ns.get("paused");
    resumed["metadata"]["generation"] = json!(2);
    let (s, m) = kstatus(&resumed);
    assert_eq!(s, "InProgress", "{m}");
}
