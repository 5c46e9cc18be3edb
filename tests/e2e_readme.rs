//! Tried as a new user would: the README's own commands, read from README.md itself and run
//! as written (in namespace `payments`, queue `payments`, Secret `payments-redis`, as the
//! README names them) against the test control plane, Redis and real BullMQ failed jobs:
//! the quick start (the first manifest and the `$` lines after it, whose `kubectl get jr`
//! output must read as the README shows it), the kubectl plugin's commands, and the install
//! commands (the chart installed by helm into the API server). `tests/demo.sh` and
//! `tests/run.sh` are the two commands `.ci/run` runs; `tests/e2e_image.rs` runs the image's
//! build script. Not tried: `docker build` (no Docker engine or registry here).
//!
//! The test fails when a command block changes in a way it does not know how to run, so a
//! new README command cannot go untried.

mod support;

use std::{path::Path, process::Command};

use serde_json::json;
use support::*;

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The fenced code blocks of `text` as (info string, body).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((info.trim().to_string(), body.join("\n")));
        }
    }
    out
}

/// The commands of a shell block: comment lines dropped, `\` continuations joined, trailing
/// `# ...` comments cut; in a console block only the `$ ` lines.
fn commands(info: &str, body: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in body.lines() {
        let line = if info == "console" {
            match line.strip_prefix("$ ") {
                Some(cmd) => cmd,
                None => continue,
            }
        } else {
            line
        };
        let line = line.split(" # ").next().unwrap().trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                out.push(format!("{pending}{line}").trim().to_string());
                pending.clear();
            }
        }
    }
    out
}

/// Runs `cmd` with `sh -c` in `dir`, with the test cluster and PATH (for the plugin and helm).
fn shell(dir: &Path, path: &str, cmd: &str) -> Out {
    run(Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig())
        .env("PATH", path))
}

/// A directory holding `kubectl-jobretry` and `helm`, then the usual PATH.
fn user_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, target) in [
        (
            "kubectl-jobretry",
            env!("CARGO_BIN_EXE_kubectl-jobretry").to_string(),
        ),
        ("helm", helm::helm_bin()),
    ] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Namespace `payments`, made once per control plane (a deleted namespace never finishes
/// terminating here, so it is kept), emptied of JobRetries of an earlier run.
fn payments() -> TestNs {
    ensure_crd();
    let created = kubectl(&["create", "namespace", "payments"]);
    assert!(
        created.ok || created.stderr.contains("AlreadyExists"),
        "{}",
        created.stderr
    );
    let ns = TestNs {
        name: "payments".into(),
        dir: tempfile::tempdir().unwrap(),
    };
    assert!(ns.kubectl(&["delete", "jobretries", "--all"]).ok);
    assert!(ns.kubectl(&["delete", "jobretrypolicies", "--all"]).ok);
    let _ = ns.kubectl(&["delete", "secret", "payments-redis"]);
    ns.secret("payments-redis", &redis_url());
    drop_queue("payments");
    ns
}

/// Whitespace-separated columns of a table line, without the AGE column (the last).
fn columns(line: &str) -> Vec<String> {
    let mut cols: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    cols.pop();
    cols
}

#[test]
fn the_readme_commands_run_as_written() {
    let text = readme();
    let all = blocks(&text);
    let shells: Vec<&(String, String)> = all
        .iter()
        .filter(|(info, _)| matches!(info.as_str(), "sh" | "console" | "bash" | "shell"))
        .collect();
    let ns = payments();
    let path = user_path(ns.dir.path());
    let mut ran = Vec::new();

    // ---- quick start: the first manifest, as incident.yaml, and the console lines after it.
    let (_, manifest) = all.iter().find(|(i, _)| i == "yaml").unwrap();
    assert!(
        manifest.contains("name: incident-4711-payments"),
        "{manifest}"
    );
    std::fs::write(ns.dir.path().join("incident.yaml"), manifest).unwrap();
    // Job 1042 failed (a real Worker failed it); 1043 does not exist: the README's output.
    // BullMQ numbers jobs from the queue's `id` counter (custom ids may not be integers).
    let _: () = redis::cmd("SET")
        .arg("bull:payments:id")
        .arg(1041)
        .query(&mut db_conn(0))
        .unwrap();
    let spec = json!({"jobs": [{"key": "k", "name": "charge", "data": {}, "opts": {},
                                "outcome": "fail"}]});
    let seeded = seed(ns.dir.path(), "payments", &spec);
    assert_eq!(seeded[0]["id"], "1042");
    let _op = Operator::start(&ns, &["--status-interval-ms", "200"]);
    let (_, console) = shells.iter().find(|(i, _)| i == "console").unwrap();
    let shown: Vec<&str> = console.lines().filter(|l| !l.starts_with("$ ")).collect();
    for cmd in commands("console", console) {
        let out = shell(ns.dir.path(), &path, &cmd);
        assert!(out.ok, "{cmd}: {}{}", out.stdout, out.stderr);
        if cmd.ends_with("get jr") {
            let got: Vec<&str> = out.stdout.lines().collect();
            assert_eq!(got.len(), shown.len(), "{cmd}:\n{}", out.stdout);
            for (g, s) in got.iter().zip(&shown) {
                assert_eq!(columns(g), columns(s), "{cmd}:\n{}", out.stdout);
            }
        }
        if cmd.ends_with("-o yaml") {
            assert!(
                out.stdout.contains("result: Retried") && out.stdout.contains("result: NotFound"),
                "{}",
                out.stdout
            );
        }
        ran.push(cmd);
    }

    // ---- the two commands: CI runs both (.ci/run).
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let two = shells
        .iter()
        .find(|(_, b)| b.contains("tests/demo.sh"))
        .unwrap();
    for cmd in commands(&two.0, &two.1) {
        assert!(ci.contains(&cmd), ".ci/run does not run {cmd}");
        ran.push(cmd);
    }

    // A real Worker now processes the retried job, and only it.
    let processed = node(
        "process.mjs",
        &[
            "--redis",
            &redis_url(),
            "--queue",
            "payments",
            "--expect",
            "1",
            "--settle-ms",
            "500",
        ],
    );
    assert_eq!(processed["processed"][0]["id"], "1042", "{processed}");

    // ---- the kubectl plugin, on failed jobs whose reason has ECONNRESET.
    let jobs: Vec<_> = (0..8)
        .map(|i| {
            let reason = if i % 4 == 3 {
                "card declined"
            } else {
                "read ECONNRESET"
            };
            json!({"key": format!("p{i}"), "name": "charge", "data": {"reason": reason},
                   "opts": {}, "outcome": "fail"})
        })
        .collect();
    seed(ns.dir.path(), "payments", &json!({ "jobs": jobs }));
    // The policy the block's last three commands name: the ECONNRESET failures, each night.
    let mut sel = selector(1000);
    sel.failed_reason_contains = Some("ECONNRESET".into());
    let mut transient = policy("payments-transient", "payments", sel, Some("0 3 * * *"));
    transient
        .spec
        .job_retry_template
        .spec
        .connection
        .secret_ref
        .name = "payments-redis".into();
    let applied = ns.apply_policy(&transient);
    assert!(applied.ok, "{}", applied.stderr);
    let plugin = shells
        .iter()
        .find(|(_, b)| b.contains("kubectl jobretry preview"))
        .unwrap();
    for cmd in commands(&plugin.0, &plugin.1) {
        let out = shell(ns.dir.path(), &path, &cmd);
        assert!(out.ok, "{cmd}: {}{}", out.stdout, out.stderr);
        let o = &out.stdout;
        if cmd.contains(" preview ") {
            assert!(
                o.contains("Matched:  6 failed jobs of queue payments"),
                "{o}"
            );
        } else if cmd.contains("--wait") {
            assert!(
                o.contains("Succeeded: matched 6, retried 6, skipped 0, errors 0"),
                "{o}"
            );
        } else if cmd.contains("-o yaml") {
            assert!(
                o.contains("kind: JobRetry") && o.contains("ECONNRESET"),
                "{o}"
            );
        } else if cmd.contains(" trigger ") {
            assert!(
                o.contains("jobretry.jobretry.io/payments-transient-manual-")
                    && o.contains("created (a run of policy payments-transient)"),
                "{o}"
            );
        } else if cmd.contains("--policy") {
            assert!(
                o.contains("Name:      payments-transient")
                    && o.contains("Schedule:  0 3 * * *")
                    && o.contains("payments-transient-manual-"),
                "{o}"
            );
        } else if cmd.contains(" resume ") {
            assert!(
                o.contains("jobretrypolicy.jobretry.io/payments-transient resumed at"),
                "{o}"
            );
            let stamp = ns.kubectl(&[
                "get",
                "jrp",
                "payments-transient",
                "-o",
                "jsonpath={.metadata.annotations.jobretry\\.io/resume-at}",
            ]);
            assert!(
                stamp.ok && !stamp.stdout.trim().is_empty(),
                "{}",
                stamp.stderr
            );
        } else if cmd.contains(" status ") {
            assert!(
                o.contains("Succeeded") && o.matches("Retried").count() >= 6,
                "{o}"
            );
        } else {
            panic!("the test does not know what `{cmd}` should print; teach it");
        }
        ran.push(cmd);
    }

    // ---- install: the CRD, and the chart into the API server (no kubelet runs its pod here).
    let install = shells
        .iter()
        .find(|(_, b)| b.contains("helm install"))
        .unwrap();
    let _ = shell(
        &repo(),
        &path,
        "helm uninstall jobretry-operator -n jobretry-system",
    );
    for cmd in commands(&install.0, &install.1) {
        let runnable = cmd.replace("<your registry>", "registry.example.com");
        let out = shell(&repo(), &path, &runnable);
        assert!(out.ok, "{runnable}: {}{}", out.stdout, out.stderr);
        ran.push(cmd);
    }
    let deployed = kubectl(&[
        "-n",
        "jobretry-system",
        "get",
        "deployment",
        "jobretry-operator",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(
        deployed.stdout, "registry.example.com/jobretry-operator:0.1.0",
        "{}",
        deployed.stderr
    );
    // The chart's admission policy is cluster-wide: take it away again.
    let out = shell(
        &repo(),
        &path,
        "helm uninstall jobretry-operator -n jobretry-system",
    );
    assert!(out.ok, "{}", out.stderr);

    // ---- the image: tests/e2e_image.rs runs the build script (with a store of its own) and
    // the image it builds. `docker build` cannot run here (no Docker engine, and no registry
    // to pull the Dockerfile's rust:1.89 builder from): the one README command not tried.
    let image = shells
        .iter()
        .find(|(_, b)| b.contains("build-image.sh"))
        .unwrap();
    let image_test = std::fs::read_to_string(repo().join("tests/e2e_image.rs")).unwrap();
    for cmd in commands(&image.0, &image.1) {
        if cmd.starts_with("tests/platform/build-image.sh ") {
            assert!(image_test.contains("tests/platform/build-image.sh"));
        } else {
            assert!(cmd.starts_with("docker build "), "untried: {cmd}");
        }
        ran.push(cmd);
    }

    // Every command of every shell block was run above (or is run by CI).
    for (info, body) in &shells {
        for cmd in commands(info, body) {
            assert!(
                ran.contains(&cmd),
                "README command not tried by this test: {cmd}"
            );
        }
    }
}
