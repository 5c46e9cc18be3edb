//! `kubectl jobretry`, the kubectl plugin, as a user runs it against the test control plane
//! and real BullMQ failed jobs (several names and reasons, failed by a real Worker): the
//! preview shows what BullMQ's own listing says matches and changes nothing; `run --wait`
//! retries exactly those jobs and ends with their counts; `--output yaml` is a manifest the
//! API server accepts as it is; and in a terminal the progress bar moves until a final line.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use jobretry_operator::crd::JobRetrySpec;
use serde_json::{Value, json};
use support::*;

const NAMES: [&str; 4] = ["charge-card", "charge-bank", "refund", "email"];
const REASONS: [&str; 3] = ["read ECONNRESET", "connect ETIMEDOUT", "card declined"];

fn plugin(args: &[&str]) -> Out {
    run(Command::new(env!("CARGO_BIN_EXE_kubectl-jobretry"))
        .env("KUBECONFIG", kubeconfig())
        .args(args))
}

/// Fails `count` jobs of `queue` through a real Worker, names and reasons taken in turn.
fn seed_failed(dir: &Path, queue: &str, count: usize) {
    let jobs: Vec<Value> = (0..count)
        .map(|i| {
            json!({"key": format!("k{i}"), "name": NAMES[i % 4],
                   "data": {"reason": REASONS[(i / 4) % 3]}, "opts": {}, "outcome": "fail"})
        })
        .collect();
    seed(dir, queue, &json!({ "jobs": jobs }));
}

/// BullMQ's own listing of the failed jobs of `queue`.
fn failed_jobs(queue: &str) -> Vec<Value> {
    let out = node("list.mjs", &["--redis", &redis_url(), "--queue", queue]);
    out["jobs"].as_array().unwrap().clone()
}

/// The failed jobs named `charge-*` whose reason has ECONNRESET: (ids, count per name).
fn charge_econnreset(jobs: &[Value]) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut ids = BTreeSet::new();
    let mut names = BTreeMap::new();
    for j in jobs {
        let name = j["name"].as_str().unwrap();
        if name.starts_with("charge-") && j["failedReason"].as_str().unwrap().contains("ECONNRESET")
        {
            ids.insert(j["id"].as_str().unwrap().to_string());
            *names.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    (ids, names)
}

#[test]
fn preview_then_run_wait_retries_exactly_what_the_preview_showed() {
    let ns = TestNs::new("e2e-plugin");
    let queue = ns.name.as_str();
    seed_failed(ns.dir.path(), queue, 48);
    let jobs = failed_jobs(queue);
    let (want, per_name) = charge_econnreset(&jobs);
    assert!(want.len() >= 4 && per_name.len() == 2, "{per_name:?}");
    let _op = Operator::start(&ns, &["--status-interval-ms", "200"]);
    let select = [
        "-n",
        &ns.name,
        "--queue",
        queue,
        "--secret",
        "redis",
        "--reason",
        "ECONNRESET",
        "--name",
        "charge-*",
        "--since",
        "1h",
    ];

    let before = queue_dump(queue);
    let out = plugin(&[&["preview"][..], &select].concat());
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let text = &out.stdout;
    let matched = format!(
        "Matched:  {} failed jobs of queue {queue} (of {} scanned)",
        want.len(),
        jobs.len()
    );
    assert!(text.contains(&matched), "{text}");
    for (name, count) in &per_name {
        let line = format!("\n{count:<8}{name}\n");
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    let reason = format!("\n{:<8}read ECONNRESET\n", want.len());
    assert!(text.contains(&reason), "{text}");
    assert!(
        !text.contains("ETIMEDOUT") && !text.contains("refund"),
        "{text}"
    );
    assert!(before == queue_dump(queue), "the preview changed Redis");
    let left = ns.kubectl(&["get", "jobretries", "-o", "name"]);
    assert_eq!(
        left.stdout, "",
        "the dry-run JobRetry is deleted once printed"
    );

    let out = plugin(&[&["run", "incident", "--wait"][..], &select].concat());
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "jobretry.jobretry.io/incident created");
    let n = want.len();
    assert_eq!(
        lines.last().copied(),
        Some(
            format!("jobretry/incident Succeeded: matched {n}, retried {n}, skipped 0, errors 0")
                .as_str()
        ),
        "{}",
        out.stdout
    );
    assert!(
        lines[1..lines.len() - 1]
            .iter()
            .all(|l| l.contains(": scanned ")),
        "plain progress lines between: {}",
        out.stdout
    );
    assert!(
        !out.stdout.contains('\x1b') && !out.stdout.contains('\r'),
        "no escapes off a terminal"
    );

    // What was really retried: BullMQ's failed set lost exactly the previewed jobs.
    let still: BTreeSet<String> = failed_jobs(queue)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let all: BTreeSet<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        all.difference(&still).cloned().collect::<BTreeSet<_>>(),
        want
    );

    // `status` through kubectl itself, which finds the plugin on PATH.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-jobretry"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = run(Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .env("PATH", path)
        .args(["jobretry", "status", "-n", &ns.name, "incident"]));
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Phase:    Succeeded\n"),
        "{}",
        out.stdout
    );
    let rows: BTreeSet<String> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("ID "))
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(&cells[1..], ["Retried", "1"], "{l}");
            cells[0].to_string()
        })
        .collect();
    assert_eq!(rows, want, "{}", out.stdout);

    // A preview that cannot run says why and leaves nothing behind.
    let out = plugin(&[
        "preview", "-n", &ns.name, "--queue", queue, "--secret", "missing",
    ]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("stalled") && out.stderr.contains("SecretInvalid"),
        "{}",
        out.stderr
    );
    let left = ns.kubectl(&["get", "jobretries", "-o", "name"]);
    assert_eq!(left.stdout, "jobretry.jobretry.io/incident\n");
}

#[test]
fn output_yaml_is_a_manifest_the_api_server_accepts_as_is() {
    let ns = TestNs::new("e2e-plugin-yaml");
    let out = plugin(&[
        "run",
        "-n",
        &ns.name,
        "--queue",
        "payments",
        "--reason",
        "ECONNRESET",
        "--since",
        "2h",
        "--until",
        "1h",
        "--name",
        "charge-*",
        "--max-jobs",
        "500",
        "--rate",
        "50",
        "--reset-attempts-made",
        "-o",
        "yaml",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let file = ns.dir.path().join("run.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let applied = kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(applied.ok, "{}\n{}", out.stdout, applied.stderr);
    let stored: Value = serde_json::from_str(&applied.stdout).unwrap();
    let printed: Value = serde_norway::from_str(&out.stdout).unwrap();
    let spec = |v: &Value| serde_json::from_value::<JobRetrySpec>(v["spec"].clone()).unwrap();
    assert_eq!(
        spec(&stored),
        spec(&printed),
        "the schema keeps the spec as printed"
    );
    assert_eq!(
        stored["spec"]["connection"]["secretRef"]["name"],
        "payments-redis"
    );
    assert!(
        ns.kubectl(&["get", "jobretries", "-o", "name"])
            .stdout
            .is_empty(),
        "a dry run"
    );

    // A flag the API would refuse is refused before anything is sent.
    let bad = plugin(&[
        "run", "-n", &ns.name, "--queue", "q", "--since", "1h", "--until", "2h",
    ]);
    assert!(!bad.ok && bad.stderr.contains("--since"), "{}", bad.stderr);
}

#[test]
fn in_a_terminal_the_progress_bar_moves_until_a_final_line() {
    let ns = TestNs::new("e2e-plugin-tty");
    let queue = ns.name.as_str();
    seed_failed(ns.dir.path(), queue, 100);
    let _op = Operator::start(&ns, &["--status-interval-ms", "200"]);
    // 100 jobs at 20 per second: about 5 s of progress, a page of 20 a second, so the bar
    // is drawn at 20, 40, 60 and 80 before the final line (the page that reaches the end of
    // the window ends the run). `script` gives the plugin a pseudo-terminal as stdout and
    // copies everything drawn on it to the typescript file.
    let typescript = ns.dir.path().join("typescript");
    let cmd = format!(
        "stty cols 160; '{}' run incident --wait --rate 20 -n {} --queue {queue} --secret redis",
        env!("CARGO_BIN_EXE_kubectl-jobretry"),
        ns.name
    );
    let out = run(Command::new("script")
        .env("KUBECONFIG", kubeconfig())
        .args(["-qfec", &cmd, typescript.to_str().unwrap()]));
    let screen = std::fs::read_to_string(&typescript).unwrap();
    assert!(out.ok, "{}{}\n{screen}", out.stdout, out.stderr);
    // Every redraw of the bar: `[=====>    ] Running: scanned 20/60, ...`.
    let frames: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|f| f.contains("] Running: scanned "))
        .collect();
    let scanned: BTreeSet<u64> = frames
        .iter()
        .filter_map(|f| f.split("scanned ").nth(1)?.split('/').next()?.parse().ok())
        .collect();
    assert!(
        scanned.len() >= 3,
        "the bar did not move: {scanned:?}\n{screen:?}"
    );
    assert!(
        screen.contains('\x1b'),
        "a terminal gets a redrawn bar: {screen:?}"
    );
    let bars: BTreeSet<usize> = frames
        .iter()
        .filter_map(|f| {
            Some(
                f.split(" [")
                    .nth(1)?
                    .split(']')
                    .next()?
                    .matches('=')
                    .count(),
            )
        })
        .collect();
    assert!(
        bars.len() >= 3,
        "the bar's fill did not grow: {bars:?}\n{frames:?}"
    );
    assert!(
        screen
            .contains("jobretry/incident Succeeded: matched 100, retried 100, skipped 0, errors 0"),
        "{screen:?}"
    );
}
