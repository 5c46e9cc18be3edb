//! Differential tests over every BullMQ release boundary of `Job.retry`: for each release
//! (npm 5.1.6 … 6.7.0 and the PyPI client 2.x and 3.x) the starting state of every case is
//! built once with that release's own client, copied into several databases, retried in one
//! by that client's `Job.retry` and in the others by our engine (once with the version
//! detected from the queue's meta, once with it given as `spec.queue.bullmqVersion` would),
//! and the databases are compared whole: every key, hash field, list order, sorted-set member
//! and score, the events' field lists (stream ids aside), and which keys expire.
//!
//! What each cell must be is decided by [`expect`] from the release and the case alone,
//! never from what our engine answered: equal to BullMQ, or refused with nothing changed
//! (no version known, an option the release lacks, a corrupt value BullMQ would choke on
//! half-way), or equal to 5.79.2 where 5.58.2–5.79.1 fail half-way (the one deliberate
//! divergence, see README).
//!
//! The selector joins the matrix: in the same cases, our selector (no filter, a window from
//! the oldest to the newest job's finishedOn, bounds exact to the millisecond) retries every
//! job of the case's source state in keyset order, and the client's own `Job.retry` does the
//! same jobs in the same order; the databases must be equal again.
//!
//! The audit line joins it too: our side runs once more with `audit.jobLog` on, and the
//! reference is the client's own `Job.retry` of each job followed by its own `Job.log` of the
//! line we wrote for it (same key, and the job's `keepLogs` trim, case `kept-logs`): the
//! databases must be equal, and every retried job's log must end with our line.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use jobretry_operator::bullmq::{
    AuditRun, BatchRequest, Error, JobOutcome, Ledger, PageOutcome, PageRequest, QueueKeys,
    QueueVersion, RetryEngine, Selector, VersionError, version::Semver,
};
use jobretry_operator::crd::SourceState;
use serde_json::Value;
use support::*;

/// npm releases: both sides of every boundary in `src/bullmq/version.rs`.
const NODE: [&str; 15] = [
    "5.1.6", "5.1.7", "5.9.0", "5.58.1", "5.58.2", "5.65.1", "5.66.0", "5.79.1", "5.79.2",
    "5.81.5", "6.0.0", "6.3.8", "6.3.11", "6.3.15", "6.7.0",
];
/// The run key of our side; its ledger is left out of the comparison and checked apart.
const RUN_KEY: &str = "diff/test";
/// Databases: where the state is built, where BullMQ retries, where we retry with the version
/// detected / given, and where 5.79.2 retries (for the deliberate divergence).
const BUILD: u8 = 11;
const THEIRS: u8 = 12;
const DETECTED: u8 = 13;
const GIVEN: u8 = 14;
const FIXED: u8 = 15;
/// The ledger test's own database (tests run in parallel).
const LEDGER_DB: u8 = 10;
/// With `audit.jobLog` on: where we retry (version given), and where the client retries
/// each job and then appends our line with its own `Job.log`.
const AUDITED: u8 = 9;
const LOGGED: u8 = 8;
/// The run name, requester and reason in our audit lines.
const AUDIT_RUN: &str = "diff/audited";
const AUDIT_REQUESTER: &str = "system:serviceaccount:ops:diff";
const AUDIT_REASON: &str = "différentiel: \"audit\"";

thread_local! {
    /// The Redis a thread's matrix runs on: the selector matrix runs beside the id matrix on a
    /// server of its own (same databases); `None`: the suite's.
    static BASE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn fdb_url(db: u8) -> String {
    BASE.with(|b| match &*b.borrow() {
        Some(url) => format!("{url}/{db}"),
        None => db_url(db),
    })
}

fn fdb_conn(db: u8) -> redis::Connection {
    redis::Client::open(fdb_url(db))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A client release whose behaviour is compared.
struct Client {
    /// Column title: "6.7.0" or "py 3.4.4".
    title: String,
    /// What `spec.queue.bullmqVersion` would say: "6.7.0" or "python:3.4.4".
    spec_version: String,
    /// The Node release whose behaviour it has.
    node: Semver,
    /// Whether the client records `meta.version` (npm >= 5.20.0; never the Python client).
    writes_meta_version: bool,
    /// Builds the cases' state, and runs the client's own `Job.retry` on plans.
    scenario: Vec<String>,
    reference: Vec<String>,
}

fn npm(version: &str) -> Client {
    let pkg = if version == "6.7.0" {
        "bullmq".to_string()
    } else {
        format!("bullmq-{version}")
    };
    let node = Semver::parse(version).unwrap();
    Client {
        title: version.into(),
        spec_version: version.into(),
        node,
        writes_meta_version: node >= Semver(5, 20, 0),
        scenario: vec![
            "node".into(),
            "scenario.mjs".into(),
            "--bullmq".into(),
            pkg.clone(),
        ],
        reference: vec![
            "node".into(),
            "retry-plans.mjs".into(),
            "--bullmq".into(),
            pkg,
        ],
    }
}

fn pypi(python: &str) -> Client {
    let version = run(Command::new(python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('bullmq'))",
    ]))
    .stdout
    .trim()
    .to_string();
    let q = QueueVersion::resolve(Some(&format!("python:{version}")), None).unwrap();
    Client {
        title: format!("py {version}"),
        spec_version: q.label.clone(),
        node: q.node,
        writes_meta_version: false,
        scenario: vec![python.into(), "py/scenario.py".into()],
        reference: vec![python.into(), "py/retry_plans.py".into()],
    }
}

/// The Python interpreters of the PyPI clients under test (tests/run.sh makes their venvs).
fn python_clients() -> Vec<Client> {
    ["JOBRETRY_TEST_PYTHON2", "JOBRETRY_TEST_PYTHON"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|p| pypi(&p))
        .collect()
}

/// Copies every key of BUILD into the other databases.
fn clone_state() {
    let mut con = fdb_conn(BUILD);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    for k in keys {
        for db in [THEIRS, DETECTED, GIVEN, FIXED, AUDITED, LOGGED] {
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

/// One database's content, and the keys that expire.
struct Dump {
    content: BTreeMap<String, String>,
    expiring: BTreeSet<String>,
}

fn dump(db: u8) -> Dump {
    let content = redis_dump_at(&fdb_url(db), true);
    let mut con = fdb_conn(db);
    let expiring = content
        .keys()
        .filter(|k| redis::cmd("PTTL").arg(k).query::<i64>(&mut con).unwrap() >= 0)
        .cloned()
        .collect();
    Dump { content, expiring }
}

/// The part of a dump that belongs to a case's queues, without our ledger.
fn part(d: &Dump, plan: &Value) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let queues: Vec<String> = plan["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| format!("bull:{}:", q.as_str().unwrap()))
        .collect();
    // Our own keys (ledger, a selector's record and lock) are left out; the ledger is
    // checked apart.
    let mine = |k: &String| !k.contains(":jobretry:") && queues.iter().any(|q| k.starts_with(q));
    (
        d.content
            .iter()
            .filter(|(k, _)| mine(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        d.expiring.iter().filter(|k| mine(k)).cloned().collect(),
    )
}

fn ledger_key(plan: &Value) -> String {
    QueueKeys::new("bull", plan["queue"].as_str().unwrap()).ledger(RUN_KEY)
}

/// Keys whose content or expiry differs, with both sides.
fn differences(a: &Dump, b: &Dump, plan: &Value) -> Vec<String> {
    let ((ca, ea), (cb, eb)) = (part(a, plan), part(b, plan));
    let mut out: Vec<String> = ca
        .keys()
        .chain(cb.keys().filter(|k| !ca.contains_key(*k)))
        .filter(|k| ca.get(*k) != cb.get(*k))
        .map(|k| {
            format!(
                "{k}:\n      want: {:?}\n      ours: {:?}",
                ca.get(k),
                cb.get(k)
            )
        })
        .collect();
    out.extend(
        ea.symmetric_difference(&eb)
            .map(|k| format!("{k}: expiry differs")),
    );
    out
}

/// What a cell must be, from the release and the case alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Redis ends exactly as after the client's own `Job.retry`, with the same result codes.
    Equal,
    /// As after 5.79.2's `Job.retry`: 5.58.2–5.79.1 fail half-way on a parent `:failed` hash.
    EqualFixed,
    /// Refused before touching anything: no version known.
    VersionUnknown,
    /// Refused before touching anything: reset flags on a release without them.
    IncompatibleOptions,
    /// Refused before touching anything: a corrupt value the release's script would parse.
    QueueData,
}

fn expect(client: &Client, detected: bool, plan: &Value) -> Expect {
    let v = client.node;
    let resets = plan["resetAttemptsMade"] == true || plan["resetAttemptsStarted"] == true;
    let parses = match plan["corrupt"].as_str() {
        Some("pc") => v >= Semver(6, 3, 15),
        Some("maxlen") => v >= Semver(5, 1, 7),
        Some("concurrency") => v >= Semver(5, 9, 0),
        _ => false,
    };
    if detected && !client.writes_meta_version {
        Expect::VersionUnknown
    } else if resets && v < Semver(5, 66, 0) {
        Expect::IncompatibleOptions
    } else if parses {
        Expect::QueueData
    } else if plan["parentFailedHash"] == true && v >= Semver(5, 58, 2) && v < Semver(5, 79, 2) {
        Expect::EqualFixed
    } else {
        Expect::Equal
    }
}

/// What our side did with one case.
#[derive(Debug)]
enum Ours {
    Results(Vec<&'static str>),
    Refused(Expect, String),
}

fn ours(db: u8, plan: &Value, spec_version: Option<&str>, selector: bool) -> Ours {
    ours_with(db, plan, spec_version, selector, false)
}

/// As [`ours`], with `audit.jobLog` on when `audit`.
fn ours_with(
    db: u8,
    plan: &Value,
    spec_version: Option<&str>,
    selector: bool,
    audit: bool,
) -> Ours {
    let ids: Vec<String> = plan["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    let state = if plan["state"] == "completed" {
        SourceState::Completed
    } else {
        SourceState::Failed
    };
    let (made, started) = (
        plan["resetAttemptsMade"] == true,
        plan["resetAttemptsStarted"] == true,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(fdb_url(db)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys = QueueKeys::new("bull", plan["queue"].as_str().unwrap());
        let engine = RetryEngine::default();
        let probe = engine.probe(&mut conn, &keys, state).await.unwrap();
        let version = match QueueVersion::resolve(spec_version, probe.meta_version.as_deref()) {
            Ok(v) => v,
            Err(e @ VersionError::Unknown) => {
                return Ours::Refused(Expect::VersionUnknown, e.to_string());
            }
            Err(e) => panic!("version refused: {e}"),
        };
        if let Err(m) = version.check_options(made, started) {
            return Ours::Refused(Expect::IncompatibleOptions, m);
        }
        let req = BatchRequest {
            state,
            version,
            reset_attempts_made: made,
            reset_attempts_started: started,
            dry_run: false,
            ledger: Ledger {
                key: keys.ledger(RUN_KEY),
                owner: "diff".into(),
            },
            ledger_ttl: std::time::Duration::from_secs(600),
            audit: audit.then(|| {
                AuditRun {
                    state,
                    run: AUDIT_RUN,
                    run_key: RUN_KEY,
                    requester: Some(AUDIT_REQUESTER),
                    reason: Some(AUDIT_REASON),
                }
                .line()
            }),
            record: keys.record(RUN_KEY),
        };
        let done = if selector {
            select_all(&mut conn, &keys, req, plan).await
        } else {
            engine.retry_batch(&mut conn, &keys, &req, &ids, 0).await
        };
        match done {
            Ok(out) => Ours::Results(
                out.iter()
                    .map(|o| match o {
                        JobOutcome::Retried => "Retried",
                        JobOutcome::NotFound => "NotFound",
                        JobOutcome::NotInState => "NotInState",
                        other => panic!("unexpected outcome {other:?}"),
                    })
                    .collect(),
            ),
            Err(Error::QueueData(m)) => Ours::Refused(Expect::QueueData, m),
            Err(e) => panic!("engine error: {e}"),
        }
    })
}

/// Our selector over the case's queue: no filter, the plan's window (`lower`, `upper` in
/// ms), pages of 2 jobs until done; the outcomes in keyset order.
async fn select_all(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &QueueKeys,
    run: BatchRequest,
    plan: &Value,
) -> Result<Vec<JobOutcome>, Error> {
    let mut req = PageRequest {
        run,
        run_key: RUN_KEY.into(),
        lock_ttl: std::time::Duration::from_secs(60),
        lower: plan["lower"].as_i64(),
        upper: plan["upper"].as_i64().unwrap_or(i64::MAX / 2),
        max_jobs: 1000,
        budget: 2,
        retry_budget: u32::MAX,
        success_rows: None,
        want_totals: true,
        dry_cursor: None,
        dry_matched: 0,
        reason_contains: None,
        names: vec![],
        expected_scanned: 0,
        guard: None,
    };
    let selector = Selector::default();
    let mut out = Vec::new();
    for _ in 0..1000 {
        match selector.page(conn, keys, &req).await? {
            PageOutcome::Page(p) => {
                out.extend(p.rows.into_iter().map(|(_, o)| o));
                if p.done {
                    return Ok(out);
                }
                req.dry_cursor = p.cursor;
                req.dry_matched = p.matched;
            }
            other => panic!("selector: {other:?}"),
        }
    }
    panic!("the selector does not end")
}

/// The plans of a selector comparison: each case's ids become every job of its source
/// state, in keyset order (finishedOn, then id byte-wise), within a window from the oldest
/// to the newest finishedOn (inclusive; the upper bound is exclusive, so newest + 1 ms).
fn selector_plans(built: &Value) -> Value {
    let mut con = fdb_conn(BUILD);
    let plans: Vec<Value> = built["plans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["case"] != "ledger-collision")
        .map(|p| {
            let mut p = p.clone();
            if p["unavailable"].is_null() {
                let state = p["state"].as_str().unwrap_or("failed");
                let key = format!("bull:{}:{state}", p["queue"].as_str().unwrap());
                let mut members: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut con)
                    .unwrap();
                members.sort_by(|a, b| {
                    a.1.total_cmp(&b.1)
                        .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
                });
                if let (Some(first), Some(last)) = (members.first(), members.last()) {
                    p["lower"] = (first.1 as i64).into();
                    p["upper"] = (last.1 as i64 + 1).into();
                }
                p["ids"] = members.into_iter().map(|(id, _)| Value::from(id)).collect();
            }
            p
        })
        .collect();
    serde_json::json!({ "bullmq": built["bullmq"], "plans": plans })
}

/// A client's own results, in our result names.
fn their_results(jobs: &Value) -> Vec<&'static str> {
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| match j["result"].as_str().unwrap() {
            "ok" => "Retried",
            "missing" => "NotFound",
            m if m.contains("is not in the") => "NotInState",
            _ => "Error",
        })
        .collect()
}

/// Judges one (case, mode) cell from what our side did and the databases after it; returns
/// its table code, or the failure.
fn judge(
    client: &Client,
    plan: &Value,
    detected: bool,
    got: &Ours,
    dumps: &BTreeMap<u8, Dump>,
    theirs: &Value,
    fixed: &Value,
) -> Result<char, String> {
    let db = if detected { DETECTED } else { GIVEN };
    let case = plan["case"].as_str().unwrap();
    let want = expect(client, detected, plan);
    let retried = matches!(got, Ours::Results(r) if r.contains(&"Retried"));
    // The ledger hash, or (a selector run's integer ids) its buckets `<ledger>:b:<n>`.
    let ledger_keys: Vec<String> = redis::cmd("KEYS")
        .arg(ledger_key(plan))
        .query(&mut fdb_conn(db))
        .unwrap();
    let bucket_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:b:*", ledger_key(plan)))
        .query(&mut fdb_conn(db))
        .unwrap();
    let ledger = !ledger_keys.is_empty() || !bucket_keys.is_empty();
    let (reference, reference_db) = match want {
        Expect::EqualFixed => (&fixed[case], FIXED),
        Expect::Equal => (&theirs[case], THEIRS),
        _ => (&Value::Null, BUILD),
    };
    let diffs = differences(&dumps[&reference_db], &dumps[&db], plan);
    let verdict = match (got, want) {
        (Ours::Results(r), Expect::Equal | Expect::EqualFixed) => {
            let want_results = their_results(reference);
            if *r == want_results {
                Ok(())
            } else {
                Err(format!("results: BullMQ {want_results:?}, ours {r:?}"))
            }
        }
        (Ours::Refused(kind, message), w) if *kind == w => {
            // The run must say why, naming what to fix.
            let names = match (w, plan["corrupt"].as_str()) {
                (Expect::VersionUnknown, _) => "spec.queue.bullmqVersion",
                (Expect::IncompatibleOptions, _) => "has no such option before",
                (_, Some("pc")) => "priority counter",
                (_, Some("maxlen")) => "opts.maxLenEvents",
                _ => "field concurrency",
            };
            if message.contains(names) {
                Ok(())
            } else {
                Err(format!("refused without naming {names:?}: {message}"))
            }
        }
        (got, w) => Err(format!("expected {w:?}, got {got:?}")),
    };
    let mode = if detected { "detected" } else { "given" };
    verdict
        .and_then(|()| {
            if !diffs.is_empty() {
                Err(format!("Redis differs:\n    {}", diffs.join("\n    ")))
            } else if ledger != retried {
                Err(format!(
                    "ledger present: {ledger}, a job retried: {retried}"
                ))
            } else if want == Expect::EqualFixed && !their_results(&theirs[case]).contains(&"Error")
            {
                Err(
                    "this release was expected to fail half-way on the parent's :failed hash"
                        .into(),
                )
            } else {
                Ok(())
            }
        })
        .map(|()| match want {
            Expect::Equal => '=',
            Expect::EqualFixed => '~',
            Expect::VersionUnknown => 'U',
            Expect::IncompatibleOptions => 'O',
            Expect::QueueData => 'D',
        })
        .map_err(|e| format!("{case} @ {} ({mode}): {e}", client.title))
}

/// Builds, retries both ways and compares every case of one client; returns one table cell
/// per case (detected, given) and the failures.
fn compare(client: &Client, dir: &Path, selector: bool) -> (BTreeMap<String, String>, Vec<String>) {
    for db in [BUILD, THEIRS, DETECTED, GIVEN, FIXED, AUDITED, LOGGED] {
        let _: () = redis::cmd("FLUSHDB").query(&mut fdb_conn(db)).unwrap();
    }
    let built = fixture(
        &client.scenario,
        &[
            "--redis",
            &fdb_url(BUILD),
            "--queue",
            "diff",
            "--cases",
            "all",
        ],
    );
    let built = if selector {
        selector_plans(&built)
    } else {
        built
    };
    let file = dir.join(format!(
        "plans-{}-{selector}.json",
        client.title.replace(' ', "-")
    ));
    std::fs::write(&file, built.to_string()).unwrap();
    let file = file.to_str().unwrap();
    clone_state();
    let theirs = fixture(
        &client.reference,
        &[
            "--redis",
            &fdb_url(THEIRS),
            "--queue",
            "diff",
            "--plans",
            file,
        ],
    );
    let plans = built["plans"].as_array().unwrap();
    let fixed = if (Semver(5, 58, 2)..Semver(5, 79, 2)).contains(&client.node) {
        let cases: Vec<&str> = plans
            .iter()
            .filter(|p| p["parentFailedHash"] == true)
            .map(|p| p["case"].as_str().unwrap())
            .collect();
        let args = [
            "--redis",
            &fdb_url(FIXED),
            "--queue",
            "diff",
            "--plans",
            file,
            "--cases",
            &cases.join(","),
        ];
        fixture(&npm("5.79.2").reference, &args)
    } else {
        Value::Null
    };
    let mut ran = Vec::new();
    for plan in plans.iter().filter(|p| p["unavailable"].is_null()) {
        for detected in [true, false] {
            let db = if detected { DETECTED } else { GIVEN };
            let spec = (!detected).then_some(client.spec_version.as_str());
            ran.push((plan, detected, ours(db, plan, spec, selector)));
        }
    }
    let audited = audit_pass(client, file, plans, selector);
    let dumps: BTreeMap<u8, Dump> = [BUILD, THEIRS, DETECTED, GIVEN, FIXED, AUDITED, LOGGED]
        .into_iter()
        .map(|d| (d, dump(d)))
        .collect();
    let mut cells: BTreeMap<String, String> = plans
        .iter()
        .filter(|p| !p["unavailable"].is_null())
        .map(|p| (p["case"].as_str().unwrap().to_string(), "-".to_string()))
        .collect();
    let mut failures = Vec::new();
    // A cell's mark: its code, or X with the failure kept.
    let mut note = |plan: &Value, judged: Result<char, String>| {
        let code = judged.unwrap_or_else(|e| {
            failures.push(e);
            'X'
        });
        cells
            .entry(plan["case"].as_str().unwrap().to_string())
            .or_default()
            .push(code);
    };
    for (plan, detected, got) in &ran {
        let judged = judge(
            client,
            plan,
            *detected,
            got,
            &dumps,
            &theirs["results"],
            &fixed["results"],
        );
        note(plan, judged);
    }
    for (plan, got) in &audited {
        note(plan, judge_audit(client, plan, got, &dumps));
    }
    (cells, failures)
}

/// The audit pass of one client: our retry with `audit.jobLog` on (version given) in
/// AUDITED; then, in LOGGED, the client's own `Job.retry` of every job followed by its own
/// `Job.log` of the line we wrote for that job (the last of its log in AUDITED).
fn audit_pass<'a>(
    client: &Client,
    plans_file: &str,
    plans: &'a [Value],
    selector: bool,
) -> Vec<(&'a Value, Ours)> {
    let mut ran = Vec::new();
    let mut lines = serde_json::Map::new();
    let mut con = fdb_conn(AUDITED);
    for plan in plans.iter().filter(|p| p["unavailable"].is_null()) {
        let got = ours_with(AUDITED, plan, Some(&client.spec_version), selector, true);
        if let Ours::Results(r) = &got {
            let mut case = serde_json::Map::new();
            for (id, r) in plan["ids"].as_array().unwrap().iter().zip(r) {
                let id = id.as_str().unwrap();
                let key = format!("bull:{}:{id}:logs", plan["queue"].as_str().unwrap());
                let last: Option<String> = redis::cmd("LINDEX")
                    .arg(&key)
                    .arg(-1)
                    .query(&mut con)
                    .unwrap();
                if let (&"Retried", Some(line)) = (r, last) {
                    case.insert(id.to_string(), line.into());
                }
            }
            lines.insert(plan["case"].as_str().unwrap().to_string(), case.into());
        }
        ran.push((plan, got));
    }
    let lines_file = format!("{plans_file}.lines.json");
    std::fs::write(&lines_file, Value::Object(lines).to_string()).unwrap();
    let args = [
        "--redis",
        &fdb_url(LOGGED),
        "--queue",
        "diff",
        "--plans",
        plans_file,
        "--log-lines",
        &lines_file,
    ];
    fixture(&client.reference, &args);
    ran
}

/// Judges the audit cell of a case: with `audit.jobLog` on, Redis must end exactly as after
/// the client's own `Job.retry` and `Job.log` of our line (where our retry equals BullMQ's),
/// each retried job's line naming the run; a refused run changes nothing.
fn judge_audit(
    client: &Client,
    plan: &Value,
    got: &Ours,
    dumps: &BTreeMap<u8, Dump>,
) -> Result<char, String> {
    let case = plan["case"].as_str().unwrap();
    let want = expect(client, false, plan);
    let fail = |e: String| format!("{case} @ {} (audit): {e}", client.title);
    let (reference, code) = match (got, want) {
        (Ours::Results(_), Expect::Equal) => (LOGGED, '='),
        // 5.58.2-5.79.1 fail half-way where we follow 5.79.2: no BullMQ reference to log on.
        (Ours::Results(_), Expect::EqualFixed) => return Ok('~'),
        (Ours::Refused(kind, _), w) if *kind == w => (
            BUILD,
            match w {
                Expect::IncompatibleOptions => 'O',
                Expect::QueueData => 'D',
                _ => 'U',
            },
        ),
        (got, w) => return Err(fail(format!("expected {w:?}, got {got:?}"))),
    };
    let diffs = differences(&dumps[&reference], &dumps[&AUDITED], plan);
    if !diffs.is_empty() {
        return Err(fail(format!(
            "Redis differs:\n    {}",
            diffs.join("\n    ")
        )));
    }
    let head = format!(
        "jobretry: retried from {} by run={} runKey={} requester={} reason={}; erased",
        plan["state"].as_str().unwrap_or("failed"),
        Value::from(AUDIT_RUN),
        Value::from(RUN_KEY),
        Value::from(AUDIT_REQUESTER),
        Value::from(AUDIT_REASON),
    );
    // Each retried job's log ends with our line (equal to LOGGED alone would also hold if we
    // had written none).
    if let Ours::Results(results) = got {
        let mut con = fdb_conn(AUDITED);
        for (id, r) in plan["ids"].as_array().unwrap().iter().zip(results) {
            let key = format!(
                "bull:{}:{}:logs",
                plan["queue"].as_str().unwrap(),
                id.as_str().unwrap()
            );
            let last: Option<String> = redis::cmd("LINDEX")
                .arg(&key)
                .arg(-1)
                .query(&mut con)
                .unwrap();
            let lined = last.is_some_and(|l| l.starts_with(&head));
            if lined != (*r == "Retried") {
                return Err(fail(format!(
                    "job {id} ({r}): audit line {lined}, want {head:?}"
                )));
            }
        }
    }
    Ok(code)
}

#[test]
fn our_retry_leaves_redis_exactly_as_each_bullmq_release_does() {
    differential(
        false,
        "each release's Job.retry vs jobretry-operator's id batches",
    );
}

#[test]
fn our_selector_leaves_redis_exactly_as_each_bullmq_release_does() {
    differential(
        true,
        "each release's Job.retry over every job of the state vs jobretry-operator's selector (no filter, window exact to the ms)",
    );
}

/// Runs every client's comparison (ids, or the selector) and prints the matrix.
fn differential(selector: bool, title: &str) {
    // The selector matrix runs on a server of its own, beside the id matrix.
    let own = selector.then(|| OwnRedis::start(&[]));
    BASE.with(|b| *b.borrow_mut() = own.as_ref().map(OwnRedis::url));
    let dir = tempfile::tempdir().unwrap();
    let clients: Vec<Client> = NODE
        .iter()
        .map(|v| npm(v))
        .chain(python_clients())
        .collect();
    assert!(
        clients.len() >= NODE.len() + 2,
        "the PyPI clients are missing: run with tests/run.sh (JOBRETRY_TEST_PYTHON, JOBRETRY_TEST_PYTHON2)"
    );
    // While developing: JOBRETRY_FIDELITY_ONLY=6.3.15,py runs only the columns named.
    let only = std::env::var("JOBRETRY_FIDELITY_ONLY").unwrap_or_default();
    let clients: Vec<Client> = clients
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| c.title.starts_with(o)))
        .collect();
    let mut columns = Vec::new();
    let mut failures = Vec::new();
    for client in &clients {
        let started = std::time::Instant::now();
        let (cells, failed) = compare(client, dir.path(), selector);
        eprintln!(
            "{}: {} cases in {:.1}s",
            client.title,
            cells.len(),
            started.elapsed().as_secs_f64()
        );
        columns.push((client.title.clone(), cells));
        failures.extend(failed);
    }
    let cases: BTreeSet<&String> = columns.iter().flat_map(|(_, c)| c.keys()).collect();
    let mut table = vec![format!(
        "{:<22}|{}",
        "case \\ release",
        columns
            .iter()
            .map(|(t, _)| format!("{t:^9}|"))
            .collect::<String>()
    )];
    for case in cases {
        let row: String = columns
            .iter()
            .map(|(_, c)| format!("{:^9}|", c.get(case).map_or(".", String::as_str)))
            .collect();
        table.push(format!("{case:<22}|{row}"));
    }
    println!(
        "\nDifferential: {title} (version detected, given, and given with audit.jobLog on: \
         equal to the client's Job.retry then its own Job.log of our line)\n\
         = equal to BullMQ (keys, fields, lists, scores, events, expiry, result codes)\n\
         ~ equal to 5.79.2 where this release fails half-way (the deliberate divergence)\n\
         U refused, nothing changed: no version recorded (VersionUnknown)\n\
         O refused, nothing changed: reset flags the release lacks (IncompatibleOptions)\n\
         D refused, nothing changed: a corrupt value the release would choke on (QueueDataInvalid)\n\
         - the release's client cannot build the case; . not built; X different\n{}\n",
        table.join("\n")
    );
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

/// The old ledger naming collided with a job whose custom id was `jobretry:ledger:<runKey>`
/// (BullMQ 6.7 accepts it); the current name's id part is refused by BullMQ's custom-id rule
/// (from 5.58.7), and a job hash at the ledger key (a release before that rule, or the
/// Python client, which checks nothing) makes the script refuse the batch, changing nothing.
#[test]
fn no_job_can_be_mistaken_for_a_ledger() {
    let _: () = redis::cmd("FLUSHDB")
        .query(&mut fdb_conn(LEDGER_DB))
        .unwrap();
    let built = fixture(
        &npm("6.7.0").scenario,
        &[
            "--redis",
            &fdb_url(LEDGER_DB),
            "--queue",
            "ledger",
            "--cases",
            "ledger-collision",
        ],
    );
    let plan = &built["plans"][0];
    assert!(
        plan["newNameRefused"]
            .as_str()
            .is_some_and(|m| m.contains("Custom Id")),
        "BullMQ 6.7 accepted a job id of the ledger naming: {plan}"
    );
    // A job hash where the ledger goes, as a client without the rule could write it.
    let keys = QueueKeys::new("bull", plan["queue"].as_str().unwrap());
    let mut con = fdb_conn(LEDGER_DB);
    let _: () = redis::cmd("HSET")
        .arg(keys.ledger(RUN_KEY))
        .arg(&["name", "x", "data", "{}", "opts", "{}", "timestamp", "1"])
        .query(&mut con)
        .unwrap();
    let before = dump(LEDGER_DB).content;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let client = redis::Client::open(fdb_url(LEDGER_DB)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let req = BatchRequest {
            state: SourceState::Failed,
            version: QueueVersion::resolve(Some("6.7.0"), None).unwrap(),
            reset_attempts_made: false,
            reset_attempts_started: false,
            dry_run: false,
            ledger: Ledger {
                key: keys.ledger(RUN_KEY),
                owner: "diff".into(),
            },
            ledger_ttl: std::time::Duration::from_secs(600),
            audit: None,
            record: keys.record(RUN_KEY),
        };
        let ids = vec!["2".to_string()];
        RetryEngine::default()
            .retry_batch(&mut conn, &keys, &req, &ids, 0)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(&err, Error::IncompatibleQueue(m) if m.contains("holds a BullMQ job")),
        "{err}"
    );
    assert_eq!(
        dump(LEDGER_DB).content,
        before,
        "the refused batch changed Redis"
    );
}
