//! GitOps health: the chart's Argo CD health check (`charts/jobretry-operator/argocd-health.lua`)
//! run by Debian's `lua5.4` on statuses the operator really produced, one object per phase,
//! through the real API server and Redis.

mod support;

use serde_json::{Value, json};
use support::*;

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

/// Argo CD's verdict on `obj`: (status, message).
fn health(dir: &std::path::Path, obj: &Value) -> (String, String) {
    let file = dir.join("obj.lua");
    std::fs::write(&file, format!("obj = {}\n", lua(obj))).unwrap();
    let script = repo().join("charts/jobretry-operator/argocd-health.lua");
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

#[test]
fn the_argocd_health_check_reads_every_phase_the_operator_writes() {
    let ns = TestNs::new("e2e-gitops");
    let queue = ns.name.as_str();
    let ids = failed_ids(&ns, 24);
    let _op = Operator::start(&ns, &[]);
    let running = one_of_each_phase(&ns, queue, &ids);
    let cases = [
        (
            "done",
            "Healthy",
            "1 retried, 0 skipped, 0 errors of 1 matched",
        ),
        (
            "partial",
            "Healthy",
            "partially succeeded: 1 retried, 1 skipped",
        ),
        (
            "unknown",
            "Degraded",
            "IncompatibleQueue: BullMQ 4.0.0 is not supported",
        ),
        ("paused", "Suspended", "suspended after 0 of"),
        ("nosecret", "Degraded", "SecretInvalid: Secret"),
    ];
    for (name, status, message) in cases {
        let (s, m) = health(ns.dir.path(), &ns.get(name));
        assert_eq!(s, status, "{name}: {m}");
        assert!(m.contains(message), "{name}: {m:?} lacks {message:?}");
    }
    let (s, m) = health(ns.dir.path(), &running);
    assert_eq!(s, "Progressing", "{m}");
    assert!(m.contains("processed"), "{m}");
    let fresh = json!({"apiVersion": "jobretry.io/v1alpha1", "kind": "JobRetry", "metadata": {"name": "x"}});
    assert_eq!(health(ns.dir.path(), &fresh).0, "Progressing");
}
