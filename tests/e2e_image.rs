//! The container image users install: built by `tests/platform/build-image.sh` (the static
//! musl binary packed by buildah onto an empty base, no Docker daemon), then inspected and run
//! as a user's cluster would run it: `--version` from the image, and the operator from the
//! image's file system, as the image's user, against the test control plane until a JobRetry
//! on real failed BullMQ jobs completes. Also: the two Dockerfiles agree with each other and
//! with Cargo.toml (rust-version, version, license).
//!
//! The image test builds a release binary, so it runs when `JOBRETRY_TEST_IMAGE=1`
//! (`tests/run.sh` sets it).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use support::*;

/// A field of the crate's own Cargo.toml `[package]`.
fn package(field: &str) -> String {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field} = \"")))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("Cargo.toml has no {field}"))
        .to_string()
}

/// The lines of a Dockerfile from its last `FROM` on, without comments and blank lines.
fn final_stage(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[from..]
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn the_dockerfiles_agree_with_each_other_and_with_cargo_toml() {
    let docker = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let rust = format!("FROM rust:{}-", package("rust-version"));
    assert!(
        docker.lines().any(|l| l.starts_with(&rust)),
        "Dockerfile must build with the crate's rust-version: {rust}…"
    );
    let stage = final_stage("Dockerfile");
    let version = format!("ARG VERSION={}", package("version"));
    let license = format!(
        "org.opencontainers.image.licenses=\"{}\"",
        package("license")
    );
    assert_eq!(stage[0], "FROM scratch");
    assert!(stage.contains(&version), "Dockerfile needs {version}");
    assert!(stage.iter().any(|l| l.contains(&license)), "{license}");
    assert!(stage.contains(&"USER 65532:65532".to_string()));
    // The prebuilt variant is the same final stage, copying from the context instead.
    let prebuilt: Vec<String> = final_stage("Dockerfile.prebuilt")
        .into_iter()
        .map(|l| {
            l.replace(
                "COPY jobretry-operator ",
                "COPY --from=builder /jobretry-operator ",
            )
        })
        .collect();
    assert_eq!(
        prebuilt, stage,
        "Dockerfile.prebuilt drifted from Dockerfile"
    );
}

/// buildah on the test's own store (vfs driver, as root, no daemon).
struct Buildah {
    store: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.store.join("root"))
            .arg("--runroot")
            .arg(self.store.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        assert!(out.ok, "buildah {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout.trim().to_string()
    }
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The pid and (real) uid of the running operator process that has `arg` among its
/// arguments, from /proc.
fn operator_process(arg: &str) -> Option<(u32, u32)> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let p = e.ok()?.path();
        let pid: u32 = p.file_name()?.to_str()?.parse().ok()?;
        let cmdline = std::fs::read(p.join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_operator = args.first()?.ends_with(b"/jobretry-operator");
        if !is_operator || !args.contains(&arg.as_bytes()) {
            return None;
        }
        let status = std::fs::read_to_string(p.join("status")).ok()?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((pid, uid))
    })
}

/// `buildah run` of the operator, which watches the namespace `ns`; on drop, that operator
/// process and buildah are killed.
struct Running {
    buildah: Child,
    ns: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((pid, _)) = operator_process(&self.ns) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.buildah.kill();
        let _ = self.buildah.wait();
    }
}

#[test]
fn the_image_is_small_static_non_root_and_runs_the_operator() {
    if std::env::var("JOBRETRY_TEST_IMAGE").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set JOBRETRY_TEST_IMAGE=1 (tests/run.sh does) to build and run the image"
        );
        return;
    }
    let ns = TestNs::new("e2e-image");
    let store = ns.dir.path().join("store");
    let built = run(Command::new(repo().join("tests/platform/build-image.sh")).arg(&store));
    assert!(built.ok, "build-image.sh failed:\n{}", built.stderr);
    let image = built.stdout.trim().to_string();
    assert_eq!(image, format!("jobretry-operator:{}", package("version")));
    let b = Buildah { store };

    // The image's configuration: labels, user, entrypoint.
    let inspect: Value =
        serde_json::from_str(&b.ok(&["inspect", "--type", "image", &image])).unwrap();
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(config["Entrypoint"], json!(["/jobretry-operator"]));
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        package("version")
    );
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        package("license")
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );

    // Its file system: the binary and nothing else (no shell, no libc, no CA bundle), with
    // the Mozilla CA roots compiled in.
    let container = b.ok(&["from", "--quiet", &image]);
    let root = PathBuf::from(b.ok(&["mount", &container]));
    assert_eq!(files_under(&root), vec!["jobretry-operator".to_string()]);
    let binary = std::fs::read(root.join("jobretry-operator")).unwrap();
    let size = binary.len() as f64 / (1024.0 * 1024.0);
    let listed = b.ok(&["images", "--format", "{{.Size}}", &image]);
    println!(
        "image {image}: {listed} as buildah lists it; its one file, the static binary, is {size:.1} MiB"
    );
    assert!(size <= 20.0, "the image is {size:.1} MiB, more than 20 MiB");
    let has = |needle: &[u8]| binary.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ISRG Root X1"), "no compiled-in CA roots");

    // `--version` from the image: with nothing else in it, this also proves it static.
    let version = b.ok(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "/jobretry-operator",
        "--version",
    ]);
    assert_eq!(version, format!("jobretry-operator {}", package("version")));

    // The operator from the image, as the image's user, against the control plane.
    let queue = ns.name.as_str();
    let spec = json!({"jobs": [
        {"key": "a", "name": "charge", "data": {"reason": "ECONNRESET"}, "opts": {}, "outcome": "fail"},
        {"key": "b", "name": "charge", "data": {"reason": "ECONNRESET"}, "opts": {}, "outcome": "fail"},
    ]});
    let jobs = seed(ns.dir.path(), queue, &spec);
    let (a, b_id) = (id_of(&jobs, "a"), id_of(&jobs, "b"));
    // The test's kubeconfig, readable by the image's user (65532).
    let readable = ns.dir.path().join("kubeconfig");
    std::fs::copy(kubeconfig(), &readable).unwrap();
    std::fs::set_permissions(
        &readable,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let log = std::fs::File::create(ns.dir.path().join("operator.log")).unwrap();
    let _op = Running {
        ns: queue.to_string(),
        buildah: b
            .cmd()
            .args([
                "run",
                "--isolation",
                "chroot",
                "--env",
                "KUBECONFIG=/kubeconfig",
            ])
            .arg("--volume")
            .arg(format!("{}:/kubeconfig:ro", readable.display()))
            .args([
                &container,
                "--",
                "/jobretry-operator",
                "--watch-namespace",
                queue,
            ])
            .args(["--http-addr", "127.0.0.1:0"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("buildah run"),
    };
    let applied = ns.apply_jr(&jobretry("from-image", queue, &[&a, &b_id]).reset_attempts_made());
    assert!(applied.ok, "{}", applied.stderr);
    let logs = || std::fs::read_to_string(ns.dir.path().join("operator.log")).unwrap_or_default();
    let uid = eventually(
        Duration::from_secs(30),
        "the operator process from the image",
        || operator_process(queue).map(|(_, uid)| uid),
    );
    assert_eq!(uid, 65532, "the operator runs as the image's user");
    let waited = ns.wait_condition("from-image", "Complete", "120s");
    assert!(waited.ok, "{}\n{}", waited.stderr, logs());
    let st = ns.status("from-image");
    assert_eq!(st.phase_str(), "Succeeded", "{st:?}");
    assert_eq!(st.counts, counts([("Retried", 2)]), "{st:?}");
    // A real Worker processes the two retried jobs.
    let processed = node(
        "process.mjs",
        &["--redis", &redis_url(), "--queue", queue, "--expect", "2"],
    );
    assert_eq!(
        processed["processed"].as_array().unwrap().len(),
        2,
        "{processed}"
    );
}
