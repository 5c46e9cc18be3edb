//! End to end, the Helm chart: a real `helm` (built by tests/platform/build-helm.sh) lints and
//! renders `charts/jobretry-operator`; the rendered manifests are applied to the real
//! kube-apiserver (1.34); and the operator binary runs with nothing but the chart's RBAC —
//! its kubeconfig impersonates the chart's ServiceAccount — and must still finish a real
//! JobRetry, events included.
//!
//! No kubelet runs, so the Deployment's pod never starts; the operator runs as a local process
//! with the flags the rendered Deployment would give it.

mod support;

use std::{path::Path, process::Command, sync::Mutex, time::Duration};

use serde_json::{Value, json};
use support::{helm::*, *};

/// The operator runs watching all namespaces in one of the tests below; the RBAC tests run
/// one at a time so that operator never sees another test's JobRetry.
static OPERATOR_TESTS: Mutex<()> = Mutex::new(());

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

fn kubectl_apply(dir: &Path, file: &str, yaml: &str) {
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=helm-chart-test",
        "-f",
        path.to_str().unwrap(),
    ]);
}

/// The container args the rendered Deployment gives the operator.
fn deployment_args(docs: &[Value]) -> Vec<String> {
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn chart_lints_and_renders_both_rbac_modes() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let version = helm_ok(&["version", "--short"]);
    assert!(version.starts_with("v3."), "helm v3 expected: {version}");

    helm_ok(&["lint", "--strict", chart]);
    helm_ok(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "operator.watchNamespace=team-a",
        "--set",
        "networkPolicy.enabled=true",
    ]);

    let all = docs(&render("jr", "operators", &[]));
    assert_eq!(
        kinds(&all),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    assert_eq!(
        deployment_args(&all),
        [
            "--ledger-retention-seconds=604800",
            "--batch-size=500",
            "--status-row-limit=1000",
            "--status-interval-ms=1000",
            "--log-format=json",
            "--max-concurrent-runs=16",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--http-addr=0.0.0.0:8080",
            "--shutdown-timeout-seconds=5",
            "--leader-elect=true",
            "--lease-name=jr-jobretry-operator",
            "--lease-namespace=operators",
            "--lease-duration-seconds=15",
        ]
    );
    // Leader election: a Role on Leases in the release namespace, nothing more.
    let lease_role = find(&all, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "operators");
    assert_eq!(
        lease_role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "create", "update", "patch"]}])
    );
    let binding = find(&all, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "jr-jobretry-operator", "namespace": "operators"}])
    );

    let one = docs(&render(
        "jr",
        "operators",
        &[
            "operator.watchNamespace=team-a",
            "operator.logFormat=text",
            "operator.batchSize=50",
        ],
    ));
    assert_eq!(
        kinds(&one),
        [
            "Deployment",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    for kind in ["Role", "RoleBinding"] {
        assert_eq!(
            find(&one, kind)["metadata"]["namespace"],
            "team-a",
            "{kind}"
        );
    }
    assert_eq!(
        find(&one, "ServiceAccount")["metadata"]["namespace"],
        "operators"
    );
    let args = deployment_args(&one);
    assert!(
        args.contains(&"--watch-namespace=team-a".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--log-format=text".to_string()), "{args:?}");
    assert!(args.contains(&"--batch-size=50".to_string()), "{args:?}");
    // The rules are the same in both modes.
    assert_eq!(
        find(&one, "Role")["rules"],
        find(&all, "ClusterRole")["rules"]
    );

    // An existing ServiceAccount: none rendered, the binding and the pod use it.
    let existing = docs(&render(
        "jr",
        "operators",
        &["serviceAccount.create=false", "serviceAccount.name=ops-sa"],
    ));
    assert_eq!(
        kinds(&existing),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    assert_eq!(
        find(&existing, "ClusterRoleBinding")["subjects"][0]["name"],
        "ops-sa"
    );
    assert_eq!(
        find(&existing, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "ops-sa"
    );
    let unnamed = helm(&[
        "template",
        "jr",
        chart,
        "--set",
        "serviceAccount.create=false",
    ]);
    assert!(
        !unnamed.ok && unnamed.stderr.contains("serviceAccount.name is required"),
        "{}",
        unnamed.stderr
    );

    // Two replicas or more: RollingUpdate and a PodDisruptionBudget; one replica gets none
    // (it would block every node drain), and without leader election only one may run.
    let two = docs(&render("jr", "operators", &["replicaCount=2"]));
    let pdb = find(&two, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"],
        find(&two, "Deployment")["spec"]["selector"]
    );
    assert!(!kinds(&all).contains(&"PodDisruptionBudget".to_string()));
    for (set, why) in [
        (
            "leaderElection.enabled=false,replicaCount=2",
            "replicaCount above 1 needs leaderElection.enabled",
        ),
        (
            "terminationGracePeriodSeconds=7",
            "terminationGracePeriodSeconds must exceed",
        ),
    ] {
        let out = helm(&["template", "jr", chart, "--set", set]);
        assert!(!out.ok && out.stderr.contains(why), "{set}: {}", out.stderr);
    }
    let single = docs(&render(
        "jr",
        "operators",
        &["leaderElection.enabled=false"],
    ));
    assert_eq!(
        find(&single, "Deployment")["spec"]["strategy"],
        json!({"type": "Recreate"})
    );
    assert!(deployment_args(&single).contains(&"--leader-elect=false".to_string()));
    assert!(!kinds(&single).contains(&"Role".to_string()));
    // Secret reads narrowed to two namespaces: the ClusterRole reads no Secret, a Role per
    // namespace does; the required label reaches the operator; no admission policy if off.
    let narrowed = docs(&render(
        "jr",
        "operators",
        &[
            "rbac.secretNamespaces={team-a,team-b}",
            "operator.secretLabel=jobretry.io/redis=true",
            "admissionPolicy.enabled=false",
        ],
    ));
    let reads_secrets = |d: &Value| d["rules"].to_string().contains("\"secrets\"");
    assert!(!reads_secrets(find(&narrowed, "ClusterRole")));
    // Roles: one per listed namespace for Secrets, and the leader election's on Leases.
    let (roles, others): (Vec<&Value>, Vec<&Value>) = narrowed
        .iter()
        .filter(|d| d["kind"] == "Role")
        .partition(|r| reads_secrets(r));
    assert_eq!(roles.len(), 2);
    assert_eq!(others.len(), 1);
    assert!(others[0]["rules"].to_string().contains("\"leases\""));
    assert_eq!(
        roles
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["team-a", "team-b"]
    );
    assert!(
        deployment_args(&narrowed).contains(&"--secret-label=jobretry.io/redis=true".to_string())
    );
    assert!(!kinds(&narrowed).contains(&"ValidatingAdmissionPolicy".to_string()));

    // The requester's MutatingAdmissionPolicy: rendered where the cluster serves its API
    // (`auto`), or when asked; its exemption is the operator's ServiceAccount.
    let map_api = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy";
    let mutating = |extra: &[&str]| {
        let mut args = vec!["template", "jr", chart, "--namespace", "operators"];
        args.extend_from_slice(extra);
        let d = docs(&helm_ok(&args));
        d.into_iter()
            .filter(|d| {
                d["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("MutatingAdmissionPolicy"))
            })
            .collect::<Vec<Value>>()
    };
    assert!(
        mutating(&[]).is_empty(),
        "no MutatingAdmissionPolicy API, none rendered"
    );
    let with_api = mutating(&["--api-versions", map_api]);
    assert_eq!(with_api.len(), 2, "the policy and its binding");
    assert_eq!(
        with_api[0]["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username != \"system:serviceaccount:operators:jr-jobretry-operator\""
    );
    assert!(
        mutating(&[
            "--api-versions",
            map_api,
            "--set",
            "admissionPolicy.recordRequester=false"
        ])
        .is_empty()
    );
    assert_eq!(
        mutating(&["--set", "admissionPolicy.recordRequester=true"]).len(),
        2
    );

    // values.schema.json refuses what the operator cannot run with.
    for bad in [
        "replicaCount=-1",
        "leaderElection.leaseDurationSeconds=2",
        "operator.batchSize=0",
        "operator.statusRowLimit=5001",
        "operator.watchNamespace=Not_A_Namespace",
        "image.pullPolicy=Sometimes",
        "operator.logFormat=xml",
        "metrics.prometheusRule.stalledFor=15 minutes",
        "operator.secretLabel=a=b=c",
        "operator.maxConcurrentRuns=-1",
        "noSuchValue=1",
        "admissionPolicy.recordRequester=sometimes",
    ] {
        let out = helm(&["template", "jr", chart, "--set", bad]);
        assert!(!out.ok, "helm template --set {bad} should fail");
        assert!(out.stderr.contains("schema"), "--set {bad}: {}", out.stderr);
    }
}

#[test]
fn rendered_manifests_apply_to_the_real_api_server() {
    let ns = TestNs::new("chart-apply");
    // Release names (and so the cluster-scoped ClusterRole's name) unique per run.
    let (release, release_ns) = (ns.name.clone(), format!("{}-ns", ns.name));
    let (full, full_ns) = (
        format!("{release}-jobretry-operator"),
        format!("{release_ns}-jobretry-operator"),
    );
    // Default values plus a few, with the NetworkPolicy and the chart's CRD (crds/).
    let chart = chart();
    let mut args = vec![
        "template",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &ns.name,
        "--include-crds",
    ];
    for set in [
        "replicaCount=2",
        "networkPolicy.enabled=true",
        "networkPolicy.redis.to[0].ipBlock.cidr=10.1.0.0/16",
        "networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus",
        "podAnnotations.example\\.com/team=payments",
        "nodeSelector.kubernetes\\.io/os=linux",
    ] {
        args.extend(["--set", set]);
    }
    let cluster = helm_ok(&args);
    assert_eq!(
        find(&docs(&cluster), "CustomResourceDefinition")["metadata"]["name"],
        "jobretries.jobretry.io"
    );
    kubectl_apply(ns.dir.path(), "cluster.yaml", &cluster);
    // One namespace: Role + RoleBinding (another release, same namespace).
    let namespaced = render(
        &release_ns,
        &ns.name,
        &[&format!("operator.watchNamespace={}", ns.name)],
    );
    kubectl_apply(ns.dir.path(), "namespaced.yaml", &namespaced);

    let metrics_service = format!("{full}-metrics");
    for (kind, name) in [
        ("service", &metrics_service),
        ("deployment", &full),
        ("serviceaccount", &full),
        ("networkpolicy", &full),
        ("poddisruptionbudget", &full),
        ("role", &format!("{full}-leader-election")),
        ("rolebinding", &format!("{full}-leader-election")),
        ("deployment", &full_ns),
        ("serviceaccount", &full_ns),
        ("role", &full_ns),
        ("rolebinding", &full_ns),
    ] {
        let out = ns.kubectl(&["get", kind, name, "-o", "name"]);
        assert!(out.ok, "{kind}/{name} not created: {}", out.stderr);
    }
    for kind in ["clusterrole", "clusterrolebinding"] {
        kubectl_ok(&["get", kind, &full]);
    }

    // The Deployment as the API server stored it (after defaulting).
    let out = ns.kubectl(&["get", "deployment", &full, "-o", "json"]);
    assert!(out.ok, "{}", out.stderr);
    let deploy: Value = serde_json::from_str(&out.stdout).unwrap();
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["serviceAccountName"], full.as_str());
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(
        spec["template"]["metadata"]["annotations"]["example.com/team"],
        "payments"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "jobretry-operator:0.1.0");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let env = c["env"].as_array().unwrap();
    let pod_name = env.iter().find(|e| e["name"] == "POD_NAME").unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let pod_ns = env.iter().find(|e| e["name"] == "POD_NAMESPACE").unwrap();
    assert_eq!(
        pod_ns["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }

    let np_out = ns.kubectl(&["get", "networkpolicy", &full, "-o", "json"]);
    let np: Value = serde_json::from_str(&np_out.stdout).unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"protocol": "TCP", "port": "http"}],
                "from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}]),
        "ingress only to the HTTP port, from the listed peers"
    );
    assert_eq!(np["spec"]["egress"].as_array().unwrap().len(), 3);
    assert_eq!(
        np["spec"]["egress"][1]["to"],
        json!([{"ipBlock": {"cidr": "10.1.0.0/16"}}])
    );
    // The admission policies are cluster-wide and name this release's ServiceAccount as the
    // operator: take them away again, so that they judge no other test's objects.
    for r in [&release, &release_ns] {
        kubectl_ok(&[
            "delete",
            "validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-l",
            &format!("app.kubernetes.io/instance={r}"),
        ]);
    }
}

/// `kubectl auth can-i` as `user`; exits 1 for "no", so the answer is read from stdout.
fn can_i(user: &str, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    let out = kubectl(&all);
    let answer = out.stdout.trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl {all:?}: {}{}",
        out.stdout,
        out.stderr
    );
    answer
}

fn job(key: &str, outcome: &str) -> Value {
    json!({"key": key, "name": format!("charge-{key}"), "data": {"key": key}, "opts": {}, "outcome": outcome})
}

/// Installs the chart's RBAC (and ServiceAccount, Deployment) for `ns`, runs the operator with
/// the rendered Deployment's flags under that ServiceAccount's identity, and retries a real
/// failed BullMQ job. Returns the ServiceAccount's user name.
fn operator_runs_with_chart_rbac_only(ns: &TestNs, set: &[&str]) -> String {
    let n = ns.name.as_str();
    let set = [set, &["replicaCount=2"]].concat();
    let rendered = render(&ns.name, &ns.name, &set);
    let manifests = docs(&rendered);
    let sa_name = find(&manifests, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let sa = format!("system:serviceaccount:{}:{sa_name}", ns.name);
    kubectl_apply(ns.dir.path(), "chart.yaml", &rendered);

    let kubeconfig = impersonating_kubeconfig(ns.dir.path(), "operator.kubeconfig", &sa);
    let whoami = run(Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]));
    assert_eq!(whoami.stdout, sa, "impersonation: {}", whoami.stderr);

    let queue = ns.name.as_str();
    let jobs = seed(
        ns.dir.path(),
        queue,
        &json!({"jobs": [job("failed", "fail"), job("done", "complete")]}),
    );
    let (failed, done) = (id_of(&jobs, "failed"), id_of(&jobs, "done"));

    // The rendered flags, except the HTTP address: the helper gives each operator a free
    // loopback port instead of the pod's 0.0.0.0:8080.
    let rendered_args = deployment_args(&manifests);
    assert!(rendered_args.contains(&"--http-addr=0.0.0.0:8080".to_string()));
    let args: Vec<&str> = rendered_args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--http-addr"))
        .collect();
    // Both replicas of replicaCount=2, each with its identity (POD_NAME in a pod) and port.
    let replicas: Vec<(Operator, String)> = ["replica-0", "replica-1"]
        .into_iter()
        .map(|id| {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut args = args.clone();
            args.extend(["--lease-identity", id, "--http-addr", &addr]);
            (
                Operator::start_with_kubeconfig(ns, &kubeconfig, &args),
                addr,
            )
        })
        .collect();
    let leader = eventually(
        Duration::from_secs(30),
        "one replica to lead and both to be ready",
        || {
            let leads: Vec<bool> = replicas
                .iter()
                .map(|(_, a)| metric(a, "jobretry_leader") == Some(1.0))
                .collect();
            let ready = replicas
                .iter()
                .all(|(_, a)| http_get(a, "/readyz").0 == 200);
            (ready && leads.iter().filter(|l| **l).count() == 1)
                .then(|| leads.iter().position(|l| *l).unwrap())
        },
    );
    let op = &replicas[leader].0;
    let holder = ns.kubectl(&[
        "get",
        "lease",
        &format!("{n}-jobretry-operator"),
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(
        holder.stdout,
        format!("replica-{leader}"),
        "{}",
        holder.stderr
    );

    let applied = ns.apply_jr(&jobretry("incident", queue, &[&failed, &done]));
    assert!(applied.ok, "{}", applied.stderr);
    let waited = ns.wait_condition("incident", "Complete", "60s");
    assert!(
        waited.ok,
        "kubectl wait failed: {}\noperator log:\n{}",
        waited.stderr,
        op.logs()
    );
    let st = ns.status("incident");
    let rows: Vec<(&str, &str, Option<i64>)> = st
        .jobs
        .iter()
        .map(|r| (r.id.as_str(), r.result.as_str(), r.code))
        .collect();
    assert_eq!(
        rows,
        [
            (failed.as_str(), "Retried", Some(1)),
            (done.as_str(), "NotInState", Some(-3))
        ]
    );
    assert_eq!(st.retried, Some(1));
    assert_eq!(st.phase.as_deref(), Some("PartiallySucceeded"));

    // Events are published through events.k8s.io/v1 by this operator; a refused event is only
    // a warning in the log, so look for the event itself and for the absence of the warning.
    let events = eventually(Duration::from_secs(20), "the Completed event", || {
        let out = ns.kubectl(&["get", "events.v1.events.k8s.io", "-o", "json"]);
        let list: Value = serde_json::from_str(&out.stdout).ok()?;
        let items = list["items"].as_array()?.clone();
        items
            .iter()
            .any(|e| e["reason"] == "Completed" && e["regarding"]["name"] == "incident")
            .then_some(items)
    });
    let completed = events.iter().find(|e| e["reason"] == "Completed").unwrap();
    assert_eq!(completed["reportingController"], "jobretry-operator");
    assert_eq!(completed["reportingInstance"], format!("{n}-operator"));
    let log = op.logs();
    assert!(!log.contains("cannot publish event"), "{log}");
    for (replica, _) in &replicas {
        let log = replica.logs();
        assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    }
    // The follower retried nothing.
    let follower = &replicas[1 - leader].1;
    assert_eq!(metric(follower, "jobretry_reconciles_total"), Some(0.0));

    // The grants, as the API server's authorizer answers them: what the run above needed,
    // and nothing more.
    // (resource and flags, the verbs granted, the verbs refused)
    // JobRetries: the policy controller creates a policy's runs and deletes old ones.
    const GRANTS: [(&str, &str, &str); 10] = [
        (
            "jobretries.jobretry.io",
            "get list watch create delete",
            "update patch",
        ),
        (
            "jobretries.jobretry.io --subresource=status",
            "patch",
            "update",
        ),
        (
            "jobretrypolicies.jobretry.io",
            "get list watch",
            "delete update patch create",
        ),
        (
            "jobretrypolicies.jobretry.io --subresource=status",
            "patch",
            "update",
        ),
        ("secrets", "get", "list watch"),
        ("events.events.k8s.io", "create patch", ""),
        ("events", "", "create"),
        ("pods", "", "create"),
        ("configmaps", "", "get"),
        (
            "leases.coordination.k8s.io",
            "get create update patch",
            "list delete",
        ),
    ];
    for (resource, granted, refused) in GRANTS {
        let answers = [(granted, "yes"), (refused, "no")];
        for (verb, expected) in answers
            .iter()
            .flat_map(|&(verbs, answer)| verbs.split_whitespace().map(move |verb| (verb, answer)))
        {
            let mut args = vec![verb];
            args.extend(resource.split_whitespace());
            args.extend(["-n", n]);
            assert_eq!(can_i(&sa, &args), expected, "can-i {args:?}");
        }
    }
    sa
}

#[test]
fn operator_needs_nothing_beyond_the_charts_cluster_rbac() {
    let _serial = OPERATOR_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("chart-rbac-cluster");
    // Default values: all namespaces, ClusterRole. The operator runs without
    // --watch-namespace, exactly as the rendered Deployment says.
    let sa = operator_runs_with_chart_rbac_only(&ns, &[]);
    assert_eq!(
        can_i(&sa, &["list", "jobretries.jobretry.io", "--all-namespaces"]),
        "yes"
    );
    assert_eq!(can_i(&sa, &["list", "secrets", "--all-namespaces"]), "no");
}

#[test]
fn operator_needs_nothing_beyond_the_charts_namespaced_rbac() {
    let _serial = OPERATOR_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNs::new("chart-rbac-ns");
    let sa =
        operator_runs_with_chart_rbac_only(&ns, &[&format!("operator.watchNamespace={}", ns.name)]);
    // Nothing outside the watched namespace.
    for args in [
        &["list", "jobretries.jobretry.io", "--all-namespaces"][..],
        &["get", "secrets", "-n", "default"],
        &["get", "jobretries.jobretry.io", "-n", "default"],
    ] {
        assert_eq!(can_i(&sa, args), "no", "{args:?}");
    }
}

#[test]
fn impersonation_is_effective_an_unbound_service_account_is_refused() {
    // Guards the tests above: were `as:` ignored, the operator would run as admin and any
    // RBAC would pass. Under an account without bindings the operator must be refused.
    let ns = TestNs::new("chart-rbac-none");
    let user = format!("system:serviceaccount:{}:nobody", ns.name);
    let kubeconfig = impersonating_kubeconfig(ns.dir.path(), "nobody.kubeconfig", &user);
    let op = Operator::start_with_kubeconfig(&ns, &kubeconfig, &["--watch-namespace", &ns.name]);
    eventually(
        Duration::from_secs(30),
        "the operator's watch to be forbidden",
        || op.logs().contains("forbidden").then_some(()),
    );
    assert!(op.logs().contains(&user), "{}", op.logs());
}
