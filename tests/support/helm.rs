//! `helm` for the tests: a real helm v3 (built by tests/platform/build-helm.sh and named by
//! `JOBRETRY_TEST_HELM`) rendering `charts/jobretry-operator`, and the rendered documents.

use std::{path::PathBuf, process::Command};

use serde::Deserialize;
use serde_json::Value;

use super::{Out, repo, run};

pub fn helm_bin() -> String {
    std::env::var("JOBRETRY_TEST_HELM").unwrap_or_else(|_| {
        panic!(
            "JOBRETRY_TEST_HELM is not set: it must name a helm v3 binary. tests/run.sh builds one \
             with tests/platform/build-helm.sh and exports it; by hand: \
             export JOBRETRY_TEST_HELM=$(tests/platform/build-helm.sh)"
        )
    })
}

pub fn chart() -> PathBuf {
    repo().join("charts/jobretry-operator")
}

pub fn helm(args: &[&str]) -> Out {
    // A private helm home, so the test neither reads nor writes the user's helm config.
    let home = std::env::temp_dir().join("jobretry-test-helm-home");
    run(Command::new(helm_bin())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", "/dev/null")
        .args(args))
}

pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.ok,
        "helm {args:?} failed:\n{}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// `helm template <release> <chart> --namespace <ns> --set <set>...`.
pub fn render(release: &str, ns: &str, set: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    helm_ok(&args)
}

/// The documents of a multi-document YAML stream, as JSON.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}
