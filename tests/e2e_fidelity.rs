//! Differential tests: for every case of the design notes' edge-case list and for BullMQ
//! 5.81.5, 6.3.8 and 6.7.0, the same starting state is built once with the real client, copied
//! into two databases, retried in one by BullMQ's own `Job.retry` and in the other by our
//! engine, and the two databases are compared whole: every key, hash field, list order,
//! sorted-set member and score, and the events' field lists (stream ids aside).

mod common;

use std::collections::BTreeMap;

use common::*;
use jobretry_operator::{
    bullmq::{BatchRequest, JobOutcome, QueueKeys, QueueVersion, RetryEngine},
    crd::SourceState,
};
use serde_json::Value;

const VERSIONS: [(&str, &str); 3] = [
    ("bullmq-5", "5.81.5"),
    ("bullmq-6-3", "6.3.8"),
    ("bullmq", "6.7.0"),
];
const CASES: [&str; 18] = [
    "basic",
    "reset-both",
    "completed",
    "missing",
    "wrong-state",
    "paused",
    "maxed",
    "priority",
    "lifo",
    "flow-fpof",
    "flow-idof",
    "flow-cpof",
    "flow-rdof",
    "flow-none",
    "legacy-attempts",
    "events-maxlen",
    "events-unset",
    "scheduler",
];
/// Databases: where the state is built, where BullMQ retries, where we retry.
const BUILD: u8 = 11;
const THEIRS: u8 = 12;
const OURS: u8 = 13;

fn db_url(db: u8) -> String {
    format!("{}/{db}", redis_url())
}

fn redis_cmd(db: u8, args: &[&str]) -> redis::Value {
    let mut con = redis::Client::open(db_url(db))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con).unwrap()
}

/// Copies every key of BUILD into THEIRS and OURS.
fn clone_state() {
    let mut con = redis::Client::open(db_url(BUILD))
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    for k in keys {
        for db in [THEIRS, OURS] {
            let _: i64 = redis::cmd("COPY")
                .arg(&k)
                .arg(&k)
                .arg("DB")
                .arg(db)
                .arg("REPLACE")
                .query(&mut con)
                .unwrap();
        }
    }
}

/// BullMQ's own results, in our result names.
fn theirs(pkg: &str, queue: &str, plan: &Value) -> Vec<&'static str> {
    let ids: Vec<&str> = plan["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    let ids = ids.join(",");
    let state = plan["state"].as_str().unwrap();
    let mut args = vec![
        "--redis".to_string(),
        db_url(THEIRS),
        "--queue".into(),
        queue.into(),
        "--bullmq".into(),
        pkg.into(),
    ];
    args.extend(["--ids".into(), ids, "--state".into(), state.into()]);
    if plan["resetAttemptsMade"] == true {
        args.push("--reset-attempts-made".into());
    }
    if plan["resetAttemptsStarted"] == true {
        args.push("--reset-attempts-started".into());
    }
    if let Some(n) = plan["eventsMaxLen"].as_u64() {
        args.extend(["--events-max-len".into(), n.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node("retry.mjs", &args);
    out["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| match j["result"].as_str().unwrap() {
            "ok" => "Retried",
            "missing" => "NotFound",
            m if m.contains("is not in the") => "NotInState",
            other => panic!("BullMQ answered {other:?}"),
        })
        .collect()
}

/// Our engine's results, with the version detected from the queue's meta as in production.
fn ours(queue: &str, plan: &Value) -> (Vec<&'static str>, String) {
    let ids: Vec<String> = plan["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(db_url(OURS)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys = QueueKeys::new("bull", queue);
        let state = if plan["state"] == "completed" {
            SourceState::Completed
        } else {
            SourceState::Failed
        };
        let engine = RetryEngine::default();
        let probe = engine.probe(&mut conn, &keys, state).await.unwrap();
        let version = QueueVersion::resolve(None, probe.meta_version.as_deref()).unwrap();
        let req = BatchRequest {
            state,
            version: version.clone(),
            reset_attempts_made: plan["resetAttemptsMade"] == true,
            reset_attempts_started: plan["resetAttemptsStarted"] == true,
            dry_run: false,
            ledger: Some((keys.ledger("diff/test"), "diff".into())),
            ledger_ttl: std::time::Duration::from_secs(600),
        };
        let out = engine
            .retry_batch(&mut conn, &keys, &req, &ids)
            .await
            .unwrap();
        let names = out
            .iter()
            .map(|o| match o {
                JobOutcome::Retried => "Retried",
                JobOutcome::NotFound => "NotFound",
                JobOutcome::NotInState => "NotInState",
                other => panic!("unexpected outcome {other:?}"),
            })
            .collect();
        (names, version.describe())
    })
}

/// Keys whose content differs, with both sides; our ledger key is ours alone and left out.
fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let ledger = |k: &String| k.contains(":jobretry:ledger:");
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !ledger(k) && a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}:\n    BullMQ: {:?}\n    ours:   {:?}",
                a.get(k),
                b.get(k)
            )
        })
        .collect()
}

#[test]
fn our_retry_leaves_redis_exactly_as_bullmq_job_retry_does() {
    let mut table = vec![format!(
        "{:<16} | {:^12} | {:^12} | {:^12}",
        "case", VERSIONS[0].1, VERSIONS[1].1, VERSIONS[2].1
    )];
    let mut failures = Vec::new();
    for case in CASES {
        let mut cells = Vec::new();
        for (pkg, ver) in VERSIONS {
            for db in [BUILD, THEIRS, OURS] {
                redis_cmd(db, &["FLUSHDB"]);
            }
            let queue = format!("diff-{case}");
            let plan = node(
                "scenario.mjs",
                &[
                    "--redis",
                    &db_url(BUILD),
                    "--queue",
                    &queue,
                    "--case",
                    case,
                    "--bullmq",
                    pkg,
                ],
            );
            clone_state();
            let their_results = theirs(pkg, &queue, &plan);
            let (our_results, detected) = ours(&queue, &plan);
            let diffs = differences(
                &redis_dump_at(&db_url(THEIRS), true),
                &redis_dump_at(&db_url(OURS), true),
            );
            let ledger: i64 = redis::cmd("EXISTS")
                .arg(format!("bull:{queue}:jobretry:ledger:diff/test"))
                .query(
                    &mut redis::Client::open(db_url(OURS))
                        .unwrap()
                        .get_connection()
                        .unwrap(),
                )
                .unwrap();
            let retried = our_results.contains(&"Retried");
            let ok = diffs.is_empty()
                && their_results == our_results
                && detected == ver
                && (ledger == 1) == retried;
            if !ok {
                failures.push(format!(
                    "{case} @ {ver} (detected {detected}): results BullMQ {their_results:?} ours {our_results:?}, ledger {ledger}\n  {}",
                    diffs.join("\n  ")
                ));
            }
            cells.push(if ok {
                format!("equal {}", summary(&our_results))
            } else {
                "DIFFERENT".to_string()
            });
        }
        table.push(format!(
            "{case:<16} | {:^12} | {:^12} | {:^12}",
            cells[0], cells[1], cells[2]
        ));
    }
    println!(
        "\nDifferential: BullMQ Job.retry vs jobretry-operator, whole-database comparison\n{}\n",
        table.join("\n")
    );
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

fn summary(results: &[&str]) -> String {
    let code = |r: &&str| match *r {
        "Retried" => "1",
        "NotFound" => "-1",
        _ => "-3",
    };
    let codes: Vec<&str> = results.iter().map(code).collect();
    match codes.as_slice() {
        [one, rest @ ..] if rest.len() > 3 && rest.iter().all(|c| c == one) => {
            format!("({}x {one})", codes.len())
        }
        _ => format!("({})", codes.join(",")),
    }
}
