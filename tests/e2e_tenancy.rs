//! Tenancy, against the real API server: the chart's ValidatingAdmissionPolicy refuses a
//! JobRetry whose author may not read the Secret it names (impersonated users, RBAC granted
//! here), and admits it for an author who may; the operator's opt-in `--secret-label` leaves
//! a JobRetry naming an unlabelled Secret waiting with a condition saying why, and runs it once
//! the Secret carries the label; a JobRetry whose Secret the operator may not read (the
//! chart's `rbac.secretNamespaces` leaves its namespace out) stalls with a condition saying
//! what to grant, and runs once it is granted.

mod support;

use std::time::Duration;

use jobretry_operator::crd::JobRetryStatus;
use serde_json::json;
use support::{helm::*, *};

/// The RBAC of the test: `alice` and `bob` may create, read and change JobRetries and
/// JobRetryPolicies in the namespace; only `bob` may read Secret `r2-good`.
fn grant(ns: &TestNs) {
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: jobretry-author, namespace: {ns}}}
rules:
  - apiGroups: [jobretry.io]
    resources: [jobretries, jobretrypolicies]
    verbs: [create, get, list, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: r2-good-reader, namespace: {ns}}}
rules:
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [r2-good]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: jobretry-authors, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: jobretry-author}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: r2-good-readers, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: r2-good-reader}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}
"#,
        ns = ns.name
    );
    let applied = ns.apply("rbac.yaml", &rbac);
    assert!(applied.ok, "{}", applied.stderr);
}

/// The chart's Secret-access admission policies (one for JobRetries, one for
/// JobRetryPolicies) and their bindings, applied as the chart renders them (the requester's
/// policies are tests/e2e_audit.rs's).
fn install_policy(ns: &TestNs) {
    let rendered = render("tenancy", &ns.name, &[]);
    let policy: Vec<String> = docs(&rendered)
        .into_iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("secret-access"))
        })
        .map(|d| serde_norway::to_string(&d).unwrap())
        .collect();
    assert_eq!(
        policy.len(),
        4,
        "the chart renders two policies (JobRetry, JobRetryPolicy) and their bindings"
    );
    let path = ns.dir.path().join("policy.yaml");
    std::fs::write(&path, policy.join("---\n")).unwrap();
    kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
}

/// `kubectl create -f <file>` (with `extra` flags) in the namespace as `user`.
fn create_as(ns: &TestNs, kubeconfig: &std::path::Path, file: &str, extra: &[&str]) -> Out {
    let path = ns.dir.path().join(file);
    let mut args = vec!["create", "-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    ns.kubectl_as(kubeconfig, &args)
}

#[test]
fn the_admission_policy_admits_a_jobretry_only_if_its_author_may_read_the_secret() {
    let ns = TestNs::new("e2e-tenancy");
    ns.secret("r2-good", &redis_url());
    grant(&ns);
    install_policy(&ns);
    let alice = impersonating_kubeconfig(ns.dir.path(), "alice.kubeconfig", "alice");
    let bob = impersonating_kubeconfig(ns.dir.path(), "bob.kubeconfig", "bob");
    let steal = jobretry("steal", &ns.name, &["1"]).secret("r2-good");
    std::fs::write(ns.dir.path().join("steal.yaml"), manifest(&steal)).unwrap();
    let mut own = steal;
    own.metadata.name = Some("own".to_string());
    std::fs::write(ns.dir.path().join("own.yaml"), manifest(&own)).unwrap();

    // The policy takes effect once the API server has loaded it: until then a server-side
    // dry run is admitted.
    let refusal = eventually(
        Duration::from_secs(30),
        "the policy to refuse alice",
        || {
            let out = create_as(&ns, &alice, "steal.yaml", &["--dry-run=server"]);
            (!out.ok).then_some(out.stderr)
        },
    );
    let expected = format!(
        "user alice may not get Secret {}/r2-good, which spec.connection.secretRef names",
        ns.name
    );
    assert!(refusal.contains(&expected), "{refusal}");
    let out = create_as(&ns, &alice, "steal.yaml", &[]);
    assert!(!out.ok && out.stderr.contains(&expected), "{}", out.stderr);
    assert!(
        out.stderr.contains("ValidatingAdmissionPolicy"),
        "{}",
        out.stderr
    );
    assert!(
        !ns.kubectl(&["get", "jobretry", "steal"]).ok,
        "nothing was created"
    );

    // bob may read the Secret: admitted.
    let out = create_as(&ns, &bob, "own.yaml", &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        ns.get("own")["spec"]["connection"]["secretRef"]["name"],
        "r2-good"
    );

    // alice may change JobRetries, but not one naming a Secret she may not read: an update
    // (here: suspending bob's run, the one spec change the schema allows) is checked too.
    let patched = ns.kubectl_as(
        &alice,
        &[
            "patch",
            "jobretry",
            "own",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
    );
    assert!(
        !patched.ok && patched.stderr.contains(&expected),
        "{}",
        patched.stderr
    );
    assert_eq!(ns.get("own")["spec"]["suspend"], json!(false));

    // The same rule for a JobRetryPolicy, whose runs the operator creates under its own
    // account: alice may not name the Secret in a policy's template either; bob may.
    let mut sel = selector(10);
    sel.names = Some(vec!["charge-*".into()]);
    let mut steal = policy("steal-policy", &ns.name, sel, Some("*/5 * * * *"));
    steal
        .spec
        .job_retry_template
        .spec
        .connection
        .secret_ref
        .name = "r2-good".to_string();
    std::fs::write(ns.dir.path().join("steal-policy.yaml"), manifest(&steal)).unwrap();
    let mut own = steal;
    own.metadata.name = Some("own-policy".to_string());
    std::fs::write(ns.dir.path().join("own-policy.yaml"), manifest(&own)).unwrap();
    let expected = format!(
        "user alice may not get Secret {}/r2-good, which spec.jobRetryTemplate.spec.connection.secretRef names",
        ns.name
    );
    let refusal = eventually(
        Duration::from_secs(30),
        "the policy admission to refuse alice",
        || {
            let out = create_as(&ns, &alice, "steal-policy.yaml", &["--dry-run=server"]);
            (!out.ok).then_some(out.stderr)
        },
    );
    assert!(refusal.contains(&expected), "{refusal}");
    let out = create_as(&ns, &alice, "steal-policy.yaml", &[]);
    assert!(!out.ok && out.stderr.contains(&expected), "{}", out.stderr);
    assert!(
        !ns.kubectl(&["get", "jobretrypolicy", "steal-policy"]).ok,
        "no policy was created"
    );
    let out = create_as(&ns, &bob, "own-policy.yaml", &[]);
    assert!(out.ok, "{}", out.stderr);
    let suspend = r#"{"spec":{"suspend":true}}"#;
    let patched = ns.kubectl_as(
        &alice,
        &[
            "patch",
            "jobretrypolicy",
            "own-policy",
            "--type=merge",
            "-p",
            suspend,
        ],
    );
    assert!(
        !patched.ok && patched.stderr.contains(&expected),
        "{}",
        patched.stderr
    );
}

fn reason(st: &JobRetryStatus) -> (String, String) {
    (
        st.condition_reason("Ready").to_string(),
        st.condition_message("Ready").to_string(),
    )
}

#[test]
fn with_a_required_label_the_operator_uses_only_labelled_secrets() {
    let ns = TestNs::new("e2e-secret-label");
    let queue = ns.name.as_str();
    let spec = json!({"jobs": [{"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}]});
    let a = id_of(&seed(ns.dir.path(), queue, &spec), "a");
    let op = Operator::start(&ns, &["--secret-label", "jobretry.io/redis=true"]);
    assert!(ns.apply_jr(&jobretry("l", queue, &[a.as_str()])).ok);
    let (why, message) = eventually(Duration::from_secs(30), "Ready=False SecretInvalid", || {
        let r = reason(&ns.status("l"));
        (r.0 == "SecretInvalid").then_some(r)
    });
    assert_eq!(why, "SecretInvalid");
    assert!(
        message.contains(&format!("Secret {}/redis", ns.name))
            && message.contains("lacks the label jobretry.io/redis=true"),
        "{message}"
    );
    assert_eq!(
        queue_dump(queue)
            .keys()
            .filter(|k| k.ends_with(":wait"))
            .count(),
        0,
        "nothing was retried with the unlabelled Secret"
    );
    // A label with another value is not the label.
    ns.kubectl(&["label", "secret", "redis", "jobretry.io/redis=false"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reason(&ns.status("l")).0, "SecretInvalid");
    let labelled = ns.kubectl(&[
        "label",
        "--overwrite",
        "secret",
        "redis",
        "jobretry.io/redis=true",
    ]);
    assert!(labelled.ok, "{}", labelled.stderr);
    let waited = ns.wait_condition("l", "Complete", "60s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    assert_eq!(ns.status("l").counts, counts([("Retried", 1)]));
}

/// Applies what the chart renders for release `release` in `ns` with `set`, and returns a
/// kubeconfig impersonating its ServiceAccount, the account's user name and the operator's
/// flags as the rendered Deployment gives them (less the pod's HTTP address).
fn install_chart_rbac(ns: &TestNs, set: &[&str]) -> (std::path::PathBuf, String, Vec<String>) {
    let rendered = render(&ns.name, &ns.name, set);
    let manifests = docs(&rendered);
    let path = ns.dir.path().join("chart.yaml");
    std::fs::write(&path, &rendered).unwrap();
    kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    let sa_name = find(&manifests, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let sa = format!("system:serviceaccount:{}:{sa_name}", ns.name);
    let kubeconfig = impersonating_kubeconfig(ns.dir.path(), "operator.kubeconfig", &sa);
    let args = find(&manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--http-addr"))
        .collect();
    (kubeconfig, sa, args)
}

#[test]
fn a_secret_the_operator_may_not_read_stalls_the_run_saying_what_to_grant() {
    let ns = TestNs::new("e2e-secret-forbidden");
    // The chart grants Secret reads in another namespace only.
    let elsewhere = TestNs::new("e2e-secret-elsewhere");
    let queue = ns.name.as_str();
    let spec = json!({"jobs": [{"key": "a", "name": "charge", "data": {}, "opts": {}, "outcome": "fail"}]});
    let a = id_of(&seed(ns.dir.path(), queue, &spec), "a");
    let (kubeconfig, sa, mut args) = install_chart_rbac(
        &ns,
        &[
            &format!("rbac.secretNamespaces={{{}}}", elsewhere.name),
            "leaderElection.enabled=false",
            "admissionPolicy.enabled=false",
        ],
    );
    // All namespaces' RBAC, as rendered; the watch is narrowed to this test's namespace.
    args.extend(["--watch-namespace".to_string(), ns.name.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start_with_kubeconfig(&ns, &kubeconfig, &args);
    let applied = ns.apply_jr(&jobretry("locked", queue, &[a.as_str()]));
    assert!(applied.ok, "{}", applied.stderr);

    let stalled = eventually(
        Duration::from_secs(30),
        "Stalled=True SecretForbidden",
        || {
            let st = ns.status("locked");
            (st.condition_status("Stalled") == "True"
                && st.condition_reason("Stalled") == "SecretForbidden")
                .then_some(st)
        },
    );
    let message = stalled.condition_message("Stalled");
    let n = &ns.name;
    assert!(
        message.contains(&format!(
            "the operator may not read Secret {n}/redis: add namespace {n} to the chart's rbac.secretNamespaces"
        )),
        "{message}\n{}",
        op.logs()
    );
    assert!(
        message.contains(&sa),
        "names the refused account: {message}"
    );
    assert_eq!(stalled.phase_str(), "Pending");
    assert_eq!(
        reason(&stalled).0,
        "SecretForbidden",
        "Ready=False says why"
    );
    assert_eq!(
        queue_dump(queue)
            .keys()
            .filter(|k| k.ends_with(":wait"))
            .count(),
        0,
        "nothing was retried"
    );

    // Granting what the message asks for lets the run go on by itself (it rechecks).
    let grant = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: operator-reads-secrets, namespace: {n}}}
rules:
  - {{apiGroups: [""], resources: [secrets], verbs: [get]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: operator-reads-secrets, namespace: {n}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: operator-reads-secrets}}
subjects:
  - {{kind: ServiceAccount, name: {account}, namespace: {n}}}
"#,
        account = sa.rsplit(':').next().unwrap()
    );
    let granted = ns.apply("grant.yaml", &grant);
    assert!(granted.ok, "{}", granted.stderr);
    let waited = ns.wait_condition("locked", "Complete", "60s");
    assert!(waited.ok, "{}\n{}", waited.stderr, op.logs());
    let st = ns.status("locked");
    assert_eq!(st.counts, counts([("Retried", 1)]));
    assert_eq!(st.condition_status("Stalled"), "False");
}
