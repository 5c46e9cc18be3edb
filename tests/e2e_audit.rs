//! The audit line and the requester, end to end against the real API server (with
//! MutatingAdmissionPolicy turned on, as tests/platform/up.sh starts it), Redis and BullMQ:
//! the chart's requester policies, bound to the test's namespace, record who created a
//! JobRetry (a user impersonated by name) whatever they wrote; each job the run retries gets
//! one line in its own BullMQ log, read back with BullMQ's `Queue.getJobLogs` (6.x and 5.x),
//! naming the run, the requester, the reason and the failedReason the retry erased (cut at a
//! character boundary), and honouring the job's `keepLogs`; a dry run and a skipped job get
//! none; a policy's runs carry the policy's requester. Where the cluster lacks the mutating
//! policy, the validating one refuses a forged requester and any later change of it.

mod support;

use std::time::Duration;

use jobretry_operator::crd::{
    Audit, JobRetry, REQUESTER_ANNOTATION,
    policy::{JobRetryPolicy, OnFailures},
};
use serde_json::{Value, json};
use support::{helm::*, *};

/// The user the tests' operator runs as (the platform's admin certificate): the identity the
/// chart's policies exempt, as they exempt the operator's ServiceAccount in a cluster.
const OPERATOR_USER: &str = "admin";
const REASON: &str = "db failover after INC-4711";

/// The chart's requester policies (the mutating one only if `mutating`), rendered for a
/// release named as `ns` and bound to `ns` alone, so that they judge no other test's objects.
fn install_requester_policies(ns: &TestNs, mutating: bool) {
    let rendered = render(
        &ns.name,
        &ns.name,
        &[
            &format!("admissionPolicy.operatorUsername={OPERATOR_USER}"),
            &format!("admissionPolicy.recordRequester={mutating}"),
        ],
    );
    let docs: Vec<String> = docs(&rendered)
        .into_iter()
        .filter(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-requester"))
        })
        .map(|mut d| {
            if d["kind"].as_str().unwrap().ends_with("Binding") {
                d["spec"]["matchResources"] = json!({"namespaceSelector": {"matchLabels":
                    {"kubernetes.io/metadata.name": ns.name}}});
            }
            serde_norway::to_string(&d).unwrap()
        })
        .collect();
    assert_eq!(docs.len(), if mutating { 4 } else { 2 }, "{rendered}");
    let path = ns.dir.path().join("requester.yaml");
    std::fs::write(&path, docs.join("---\n")).unwrap();
    kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
}

/// `carol` may create, read and change JobRetries and JobRetryPolicies in the namespace, and
/// read its Secret `redis`; returns a kubeconfig that impersonates her.
fn carol(ns: &TestNs) -> std::path::PathBuf {
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: run-author, namespace: {ns}}}
rules:
  - apiGroups: [jobretry.io]
    resources: [jobretries, jobretrypolicies]
    verbs: [create, get, list, update, patch]
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [redis]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: run-authors, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: run-author}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}}
"#,
        ns = ns.name
    );
    let applied = ns.apply("rbac.yaml", &rbac);
    assert!(applied.ok, "{}", applied.stderr);
    impersonating_kubeconfig(ns.dir.path(), "carol.kubeconfig", "carol")
}

/// Writes `obj` to `<file>` and creates it as the user of `kubeconfig`.
fn create_as(
    ns: &TestNs,
    kubeconfig: &std::path::Path,
    file: &str,
    obj: &impl serde::Serialize,
) -> Out {
    let path = ns.dir.path().join(file);
    std::fs::write(&path, manifest(obj)).unwrap();
    ns.kubectl_as(kubeconfig, &["create", "-f", path.to_str().unwrap()])
}

/// Waits until the mutating policy records carol on both kinds: policies take effect once
/// the API server has loaded them, and it applies one to a custom kind only once that kind's
/// schema is published (until then a create fails: "Resource kind ... not found").
fn await_mutation(ns: &TestNs, carol: &std::path::Path) {
    let queue = ns.name.as_str();
    let jr = claiming(jobretry("probe", queue, &["1"]), "root");
    let mut p = policy("probe", queue, selector(1), Some("0 3 * * *"));
    p.metadata.annotations = Some([(REQUESTER_ANNOTATION.to_string(), "root".to_string())].into());
    for (file, text) in [
        ("probe-jr.json", manifest(&jr)),
        ("probe-jrp.json", manifest(&p)),
    ] {
        let path = ns.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        eventually(Duration::from_secs(60), "the requester recorded", || {
            let out = ns.kubectl_as(
                carol,
                &[
                    "create",
                    "--dry-run=server",
                    "-f",
                    &path,
                    "-o",
                    "jsonpath={.metadata.annotations.jobretry\\.io/requester}",
                ],
            );
            (out.ok && out.stdout.trim() == "carol").then_some(())
        });
    }
}

/// Sets `metadata.annotations[jobretry.io/requester]` as a user might write it by hand.
fn claiming(mut jr: JobRetry, who: &str) -> JobRetry {
    jr.metadata
        .annotations
        .get_or_insert_default()
        .insert(REQUESTER_ANNOTATION.to_string(), who.to_string());
    jr
}

/// A JobRetry with a reason and the audit line on.
fn audited(jr: JobRetry) -> JobRetry {
    let mut jr = jr;
    jr.spec.reason = Some(REASON.to_string());
    jr.spec.audit = Some(Audit { job_log: true });
    jr
}

/// The requester annotation as the API server stored it ("" if none).
fn recorded(ns: &TestNs, kind: &str, name: &str) -> String {
    let out = ns.kubectl(&[
        "get",
        kind,
        name,
        "-o",
        "jsonpath={.metadata.annotations.jobretry\\.io/requester}",
    ]);
    assert!(out.ok, "{}", out.stderr);
    out.stdout.trim().to_string()
}

/// Each job's log as BullMQ's `Queue.getJobLogs` of `pkg` returns it: (lines, count).
fn job_logs(queue: &str, ids: &[&str], pkg: &str) -> Vec<(Vec<String>, u64)> {
    let out = node(
        "logs.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            queue,
            "--ids",
            &ids.join(","),
            "--bullmq",
            pkg,
        ],
    );
    ids.iter()
        .map(|id| {
            let j = &out["jobs"][*id];
            let lines = (j["logs"].as_array().unwrap().iter())
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            (lines, j["count"].as_u64().unwrap())
        })
        .collect()
}

/// The JSON string value of `field=` in an audit line.
fn field(line: &str, field: &str) -> Option<String> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    serde_json::Deserializer::from_str(&line[at..])
        .into_iter::<String>()
        .next()?
        .ok()
}

#[test]
fn each_retried_job_logs_who_retried_it_why_and_what_was_erased() {
    let ns = TestNs::new("e2e-audit");
    let queue = ns.name.as_str();
    install_requester_policies(&ns, true);
    let carol = carol(&ns);
    await_mutation(&ns, &carol);
    // 1 + 150 two-byte characters: a cut at 200 bytes would fall inside a character.
    let long_reason = format!("x{}", "ж".repeat(150));
    let spec = json!({"jobs": [
        {"key": "a", "name": "charge", "data": {"reason": "read ECONNRESET"}, "opts": {}, "outcome": "fail"},
        {"key": "b", "name": "charge", "data": {"reason": long_reason}, "opts": {}, "outcome": "fail"},
        {"key": "c", "name": "charge", "data": {"reason": "timeout", "logs": 3},
         "opts": {"keepLogs": 2}, "outcome": "fail"},
        {"key": "e", "name": "charge", "data": {}, "opts": {}, "outcome": "complete"},
    ]});
    let seeded = seed(ns.dir.path(), queue, &spec);
    let [a, b, c, e] = ["a", "b", "c", "e"].map(|k| id_of(&seeded, k));
    let ids = [a.as_str(), b.as_str(), c.as_str(), e.as_str()];
    let before = job_logs(queue, &ids, "bullmq");
    assert_eq!(
        before[2],
        (
            vec!["seed line 2".to_string(), "seed line 3".to_string()],
            2
        ),
        "BullMQ's Job.log kept the last 2 of 3 lines (keepLogs 2)"
    );
    let _op = Operator::start(&ns, &["--status-interval-ms", "200"]);

    // A dry run with the audit line on writes no line.
    let mut sel = selector(100);
    sel.names = Some(vec!["charge".into()]);
    let preview = audited(selector_jobretry("preview", queue, sel)).dry_run();
    assert!(create_as(&ns, &carol, "preview.json", &preview).ok);
    let waited = ns.wait_condition("preview", "Complete", "60s");
    assert!(waited.ok, "{}", waited.stderr);
    assert_eq!(
        job_logs(queue, &ids, "bullmq"),
        before,
        "a dry run logs nothing"
    );

    // carol claims to be root: the mutating policy records who she is.
    let jr = claiming(audited(jobretry("incident", queue, &ids)), "root");
    let created = create_as(&ns, &carol, "incident.json", &jr);
    assert!(created.ok, "{}", created.stderr);
    assert_eq!(recorded(&ns, "jobretry", "incident"), "carol");
    let waited = ns.wait_condition("incident", "Complete", "60s");
    assert!(waited.ok, "{}", waited.stderr);
    let st = ns.status("incident");
    assert_eq!(st.requester.as_deref(), Some("carol"));
    assert_eq!(st.counts, counts([("Retried", 3), ("NotInState", 1)]));
    let wide = ns.kubectl(&["get", "jr", "incident", "-o", "wide"]);
    assert!(
        wide.stdout.contains("carol") && wide.stdout.contains(REASON),
        "{}",
        wide.stdout
    );
    let events = ns.kubectl(&["get", "events", "-o", "json"]).stdout;
    assert!(
        events.contains(&format!("retrying 4 jobs, requested by carol: {REASON}")),
        "{events}"
    );

    let head = format!(
        "jobretry: retried from failed by run=\"{q}/incident\" runKey=\"{q}/incident\" requester=\"carol\" reason=\"{REASON}\"; erased failedReason=",
        q = ns.name
    );
    for pkg in ["bullmq", "bullmq-5.1.6"] {
        let logs = job_logs(queue, &ids, pkg);
        // a: one line, naming everything, with its failedReason and finishedOn.
        let (lines, count) = &logs[0];
        assert_eq!((lines.len(), *count), (1, 1), "{pkg}: {lines:?}");
        let line = &lines[0];
        eprintln!("{pkg} Queue.getJobLogs of job {a}: {line}");
        assert!(line.starts_with(&head), "{pkg}: {line}");
        assert_eq!(
            field(line, "failedReason").as_deref(),
            Some("read ECONNRESET")
        );
        let finished = &seeded.iter().find(|j| j["key"] == "a").unwrap()["finishedOn"];
        assert_eq!(
            field(line, "finishedOn"),
            Some(finished.as_u64().unwrap().to_string()),
            "{line}"
        );
        assert!(
            !line.contains("attemptsMade"),
            "no reset flag, nothing erased: {line}"
        );
        // b: the reason cut to at most 200 bytes, at a character boundary.
        let (lines, _) = &logs[1];
        let cut = field(&lines[0], "failedReason").unwrap();
        assert!(long_reason.starts_with(&cut), "{cut}");
        assert!((197..=200).contains(&cut.len()), "{} bytes", cut.len());
        assert_eq!(cut.chars().count(), 100, "1 + 99 whole characters");
        assert!(lines[0].contains(" failedReasonBytes=301 "), "{}", lines[0]);
        // c: keepLogs 2 honoured: the last seed line and the audit line.
        let (lines, count) = &logs[2];
        assert_eq!(*count, 2, "{pkg}: {lines:?}");
        assert_eq!(lines[0], "seed line 3");
        assert!(lines[1].starts_with(&head) && lines[1].contains("failedReason=\"timeout\""));
        // e: not in the failed state (NotInState): no line.
        assert_eq!(logs[3], (vec![], 0), "{pkg}: a skipped job gets no line");
    }
}

#[test]
fn a_policys_runs_carry_the_policys_requester() {
    let ns = TestNs::new("e2e-audit-policy");
    let queue = ns.name.as_str();
    install_requester_policies(&ns, true);
    let carol = carol(&ns);
    await_mutation(&ns, &carol);
    let seeded = seed_in(
        &ns,
        &[
            json!({"key": "s", "name": "sync-users", "data": {"reason": "ETIMEDOUT"}, "opts": {}, "outcome": "fail"}),
        ],
    );
    let s = id_of(&seeded, "s");
    let _op = Operator::start(&ns, &["--status-interval-ms", "200"]);
    let mut sel = selector(100);
    sel.names = Some(vec!["sync-*".into()]);
    let mut p: JobRetryPolicy = policy("nightly", queue, sel, None);
    p.spec.on_failures = Some(OnFailures {
        at_least: 1,
        within: "10m".into(),
        check_every_seconds: 5,
    });
    let t = &mut p.spec.job_retry_template;
    t.spec.reason = Some("nightly cleanup".into());
    t.spec.audit = Some(Audit { job_log: true });
    // A requester written into the template is not taken either.
    let forged: Value = json!({"annotations": {REQUESTER_ANNOTATION: "root"}});
    t.metadata = Some(serde_json::from_value(forged).unwrap());
    let created = create_as(&ns, &carol, "nightly.json", &p);
    assert!(created.ok, "{}", created.stderr);
    assert_eq!(recorded(&ns, "jobretrypolicy", "nightly"), "carol");

    let run = eventually(Duration::from_secs(60), "the policy's first run", || {
        ns.runs_of("nightly").into_iter().next()
    });
    let waited = ns.wait_condition(&run, "Complete", "60s");
    assert!(waited.ok, "{}", waited.stderr);
    assert_eq!(recorded(&ns, "jobretry", &run), "carol");
    assert_eq!(ns.status(&run).requester.as_deref(), Some("carol"));
    let logs = job_logs(queue, &[s.as_str()], "bullmq");
    let line = &logs[0].0[0];
    assert!(
        line.starts_with(&format!(
            "jobretry: retried from failed by run=\"{q}/{run}\" runKey=\"{q}/nightly/",
            q = ns.name
        )) && line.contains(
            "requester=\"carol\" reason=\"nightly cleanup\"; erased failedReason=\"ETIMEDOUT\""
        ),
        "{line}"
    );
}

#[test]
fn without_the_mutating_policy_a_forged_requester_is_refused() {
    let ns = TestNs::new("e2e-audit-forge");
    let queue = ns.name.as_str();
    install_requester_policies(&ns, false);
    let carol = carol(&ns);

    // The validating policy takes effect once the API server has loaded it.
    let forged = claiming(jobretry("forged", queue, &["1"]), "root");
    let path = ns.dir.path().join("forged.json");
    std::fs::write(&path, manifest(&forged)).unwrap();
    let refusal = eventually(
        Duration::from_secs(30),
        "the forged requester refused",
        || {
            let out = ns.kubectl_as(
                &carol,
                &["create", "--dry-run=server", "-f", path.to_str().unwrap()],
            );
            (!out.ok).then_some(out.stderr)
        },
    );
    assert!(
        refusal.contains("jobretry.io/requester] is root, but this request is made by carol"),
        "{refusal}"
    );
    let out = create_as(&ns, &carol, "forged.json", &forged);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        !ns.kubectl(&["get", "jobretry", "forged"]).ok,
        "nothing was created"
    );

    // Her own name is admitted; no annotation is admitted (the requester is then unknown).
    let own = claiming(jobretry("own", queue, &["1"]).suspend(), "carol");
    let out = create_as(&ns, &carol, "own.json", &own);
    assert!(out.ok, "{}", out.stderr);
    let bare = jobretry("bare", queue, &["1"]).suspend();
    let out = create_as(&ns, &carol, "bare.json", &bare);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(recorded(&ns, "jobretry", "bare"), "");

    // Nobody changes it later: not to another name, not onto an object created without one.
    for (name, from) in [("own", "carol"), ("bare", "not set")] {
        let patch = json!({"metadata": {"annotations": {REQUESTER_ANNOTATION: "root"}}});
        let out = ns.kubectl_as(
            &carol,
            &[
                "patch",
                "jobretry",
                name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
        );
        assert!(
            !out.ok
                && out
                    .stderr
                    .contains(&format!("was {from} at creation and cannot change")),
            "{name}: {}",
            out.stderr
        );
    }
    assert_eq!(recorded(&ns, "jobretry", "own"), "carol");
    // The same rule for a policy.
    let mut sel = selector(10);
    sel.names = Some(vec!["x".into()]);
    let mut p = policy("forged-policy", queue, sel, Some("0 3 * * *"));
    p.metadata.annotations = Some([(REQUESTER_ANNOTATION.to_string(), "root".to_string())].into());
    let out = create_as(&ns, &carol, "forged-policy.json", &p);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("is root, but this request is made by carol"),
        "{}",
        out.stderr
    );
}
