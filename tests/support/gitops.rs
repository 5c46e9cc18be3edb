//! GitOps health as the tools compute it: the chart's Argo CD health checks (Lua, run by
//! Debian's `lua5.4`) and kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, what Flux's
//! controllers use; `tests/platform/kstatus/main.go`, built and cached by
//! `tests/platform/build-kstatus.sh`, its path in `JOBRETRY_TEST_KSTATUS`, else built here).

use std::{path::Path, path::PathBuf, process::Command};

use serde_json::Value;

use super::{repo, run};

/// A JSON value as a Lua table constructor (null: absent).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'"' | b'\\' => out.push_str(&format!("\\{}", b as char)),
                    0x20..=0x7e => out.push(b as char),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Argo CD's verdict on `obj` by the chart's health check `script` (a file name under
/// charts/jobretry-operator): (status, message).
pub fn argocd_health(dir: &Path, script: &str, obj: &Value) -> (String, String) {
    let file = dir.join("obj.lua");
    std::fs::write(&file, format!("obj = {}\n", lua(obj))).unwrap();
    let script = repo().join("charts/jobretry-operator").join(script);
    let chunk = format!(
        "dofile({:?}); local hs = dofile({:?}); io.write(hs.status, '\\n', hs.message)",
        file.to_str().unwrap(),
        script.to_str().unwrap()
    );
    let out = run(std::process::Command::new("lua5.4").args(["-e", &chunk]));
    assert!(out.ok, "lua5.4: {}", out.stderr);
    let (status, message) = out.stdout.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

fn kstatus_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("JOBRETRY_TEST_KSTATUS") {
        return bin.into();
    }
    let out = run(&mut Command::new(
        repo().join("tests/platform/build-kstatus.sh"),
    ));
    assert!(out.ok, "build-kstatus.sh: {}", out.stderr);
    out.stdout.trim().into()
}

/// kstatus' verdict on `obj`: (status, message).
pub fn kstatus(obj: &Value) -> (String, String) {
    let mut child = Command::new(kstatus_bin())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus-read failed on {obj}");
    let line = String::from_utf8(out.stdout).unwrap();
    let mut cells = line.trim_end().splitn(3, '\t').skip(1);
    let status = cells.next().unwrap_or_default().to_string();
    (status, cells.next().unwrap_or_default().to_string())
}
