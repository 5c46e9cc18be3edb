//! The control plane through `kubectl`: the CRD, a namespace per test with its Redis Secret,
//! applying manifests and waiting for conditions, kubeconfigs, the platform's processes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;

use super::{Out, env, eventually, nanos, redis_url, repo, run};

static KUBECONFIG: OnceLock<String> = OnceLock::new();

/// Makes every `kubectl` of this process (and [`kubeconfig`]) use `path` instead of
/// `JOBRETRY_TEST_KUBECONFIG` (the benchmark's own control plane). Call it before any of them.
pub fn use_kubeconfig(path: &str) {
    KUBECONFIG
        .set(path.to_string())
        .expect("use_kubeconfig is called once, before any kubectl");
}

pub fn kubeconfig() -> String {
    KUBECONFIG
        .get_or_init(|| env("JOBRETRY_TEST_KUBECONFIG"))
        .clone()
}

/// `kubectl <args>` against the test control plane.
pub fn kubectl(args: &[&str]) -> Out {
    run(Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args))
}

/// `kubectl <args>` that must succeed; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.ok,
        "kubectl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// `kubectl <args> -o json` that must succeed, parsed.
pub fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?}: {e}: {out}"))
}

/// Installs the committed CRDs (JobRetry, JobRetryPolicy) once per process and waits until
/// they are served.
pub fn ensure_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("crds");
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ]);
        // Right after the CRD is created its status has no conditions yet, and `kubectl
        // wait` then fails at once ("status.conditions accessor error") instead of waiting:
        // seen on a brand-new API server. Ask again until it answers.
        for crd in [
            "crd/jobretries.jobretry.io",
            "crd/jobretrypolicies.jobretry.io",
        ] {
            eventually(Duration::from_secs(60), "the CRD is established", || {
                kubectl(&["wait", "--for=condition=Established", "--timeout=10s", crd])
                    .ok
                    .then_some(())
            });
        }
        // Established is not yet served: a brand-new API server may still answer a create
        // with "Resource kind ... not found" (ServiceUnavailable) for a moment.
        eventually(Duration::from_secs(60), "the CRDs are served", || {
            let kinds = "jobretries.jobretry.io,jobretrypolicies.jobretry.io";
            let dry = kubectl(&["get", kinds, "-A", "-o", "name"]);
            dry.ok.then_some(())
        });
    });
}

/// A namespace of its own for one test, with the Redis Secret `redis` in it.
pub struct TestNs {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl TestNs {
    /// A fresh namespace `<base>-<suffix>` (unique per run: without a controller-manager a
    /// deleted namespace never finishes terminating, so names are never reused), whose
    /// Secret `redis` names the test Redis.
    pub fn new(base: &str) -> Self {
        Self::with_redis(base, &redis_url())
    }

    /// As [`TestNs::new`], with the Secret `redis` naming `url`.
    pub fn with_redis(base: &str, url: &str) -> Self {
        ensure_crd();
        let name = format!(
            "{base}-{:x}",
            (nanos() as u64 ^ u64::from(std::process::id())) & 0xffffff
        );
        kubectl_ok(&["create", "namespace", &name]);
        let ns = Self {
            name,
            dir: tempfile::tempdir().unwrap(),
        };
        ns.secret("redis", url);
        ns
    }

    pub fn secret(&self, name: &str, url: &str) {
        let _ = kubectl(&[
            "-n",
            &self.name,
            "delete",
            "secret",
            name,
            "--ignore-not-found",
        ]);
        kubectl_ok(&[
            "-n",
            &self.name,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=url={url}"),
        ]);
    }

    /// Writes `text` (YAML or JSON) to a file and `kubectl apply -f`s it, as a user would.
    pub fn apply(&self, file: &str, text: &str) -> Out {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        kubectl(&["-n", &self.name, "apply", "-f", path.to_str().unwrap()])
    }

    /// `kubectl <args>` in this namespace as the user of `kubeconfig` (e.g. an
    /// [`impersonating_kubeconfig`]).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Out {
        run(std::process::Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .args(["-n", self.name.as_str()])
            .args(args))
    }

    /// `kubectl <args>` in this namespace.
    pub fn kubectl(&self, args: &[&str]) -> Out {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        kubectl(&all)
    }

    /// `kubectl wait --for=condition=<cond>` on a JobRetry.
    pub fn wait_condition(&self, jr: &str, cond: &str, timeout: &str) -> Out {
        self.kubectl(&[
            "wait",
            &format!("--for=condition={cond}"),
            &format!("--timeout={timeout}"),
            &format!("jobretry/{jr}"),
        ])
    }

    /// The JobRetry as JSON.
    pub fn get(&self, jr: &str) -> Value {
        let out = self.kubectl(&["get", "jobretry", jr, "-o", "json"]);
        assert!(out.ok, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }
}

/// Writes `<dir>/<file>`: a copy of the admin kubeconfig whose users impersonate `user`
/// (kubeconfig `as:`, honoured by kubectl and kube-rs alike). The admin is in
/// system:masters, so the API server allows the impersonation; every request is then
/// authorized as `user`.
pub fn impersonating_kubeconfig(dir: &Path, file: &str, user: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig()).unwrap();
    let mut config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let users = config["users"]
        .as_sequence_mut()
        .expect("kubeconfig has users");
    for u in users {
        u["user"]
            .as_mapping_mut()
            .expect("kubeconfig user")
            .insert("as".into(), user.into());
    }
    let path = dir.join(file);
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    // It holds the admin's client key, like the original.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// The pid of the platform process `name` (`kube-apiserver`, `etcd`, ...), from the pid file
/// tests/platform/up.sh writes into its state directory `state`.
pub fn platform_pid(state: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(state.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}
