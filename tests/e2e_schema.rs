//! Invalid manifests are refused by the real API server (OpenAPI + CEL rules of the CRD),
//! with a message a user can act on. One case each.

mod support;

use support::*;

const VALID: &str = "apiVersion: jobretry.io/v1alpha1
kind: JobRetry
metadata:
  name: NAME
spec:
  queue:
    name: payments
  connection:
    secretRef:
      name: redis
  state: failed
  jobIds: [\"1042\", \"1043\"]
";

fn ns() -> &'static TestNs {
    static NS: std::sync::OnceLock<TestNs> = std::sync::OnceLock::new();
    NS.get_or_init(|| TestNs::new("e2e-schema"))
}

/// Applies `yaml` (a variant of VALID) as object `name`; returns the refusal message.
fn refused(name: &str, yaml: &str) -> String {
    let out = ns().apply(&format!("{name}.yaml"), &yaml.replace("NAME", name));
    assert!(
        !out.ok,
        "the API server accepted an invalid manifest:\n{yaml}"
    );
    out.stderr
}

#[test]
fn the_valid_manifest_is_accepted() {
    let out = ns().apply("valid.yaml", &VALID.replace("NAME", "valid"));
    assert!(out.ok, "{}", out.stderr);
}

#[test]
fn refuses_both_job_ids_and_selector() {
    let msg = refused(
        "both",
        &format!("{VALID}  selector:\n    names: [\"charge-*\"]\n"),
    );
    assert!(
        msg.contains("exactly one of spec.jobIds and spec.selector must be set"),
        "{msg}"
    );
}

#[test]
fn refuses_neither_job_ids_nor_selector() {
    let msg = refused(
        "neither",
        &VALID.replace("  jobIds: [\"1042\", \"1043\"]\n", ""),
    );
    assert!(
        msg.contains("exactly one of spec.jobIds and spec.selector must be set"),
        "{msg}"
    );
}

#[test]
fn refuses_a_state_other_than_failed_or_completed() {
    let msg = refused("active", &VALID.replace("state: failed", "state: active"));
    assert!(
        msg.contains("spec.state")
            && msg.contains("\"active\"")
            && msg.contains("\"failed\", \"completed\""),
        "{msg}"
    );
}

#[test]
fn refuses_a_queue_name_with_a_colon() {
    let msg = refused("colon", &VALID.replace("name: payments", "name: pay:ments"));
    assert!(msg.contains("queue.name must not contain ':'"), "{msg}");
}

#[test]
fn refuses_an_empty_job_id() {
    let msg = refused("emptyid", &VALID.replace("\"1043\"", "\"\""));
    assert!(
        msg.contains("spec.jobIds[1]") && msg.contains("at least 1 chars long"),
        "{msg}"
    );
}

#[test]
fn refuses_sentinel_mode_without_a_master_name() {
    let msg = refused(
        "sentinel",
        &VALID.replace(
            "      name: redis\n",
            "      name: redis\n    mode: sentinel\n",
        ),
    );
    assert!(
        msg.contains("sentinelMasterName must be set when mode is sentinel"),
        "{msg}"
    );
}

#[test]
fn refuses_a_later_edit_of_job_ids_but_allows_suspend() {
    let created = ns().apply("edit.yaml", &VALID.replace("NAME", "edit"));
    assert!(created.ok, "{}", created.stderr);
    let suspend = ns().kubectl(&[
        "patch",
        "jobretry",
        "edit",
        "--type=merge",
        "-p",
        "{\"spec\":{\"suspend\":true}}",
    ]);
    assert!(suspend.ok, "suspend must stay editable: {}", suspend.stderr);
    let edited = ns().apply(
        "edit.yaml",
        &VALID
            .replace("NAME", "edit")
            .replace("\"1043\"", "\"1044\""),
    );
    assert!(!edited.ok, "the API server accepted an edit of spec.jobIds");
    assert!(
        edited
            .stderr
            .contains("spec is immutable after creation except spec.suspend"),
        "{}",
        edited.stderr
    );
}

#[test]
fn refuses_a_failed_reason_filter_on_completed_jobs() {
    let yaml = VALID.replace("state: failed", "state: completed").replace(
        "jobIds: [\"1042\", \"1043\"]",
        "selector: {failedReasonContains: ECONNRESET}",
    );
    let msg = refused("completed-reason", &yaml);
    assert!(
        msg.contains("failedReasonContains needs state failed"),
        "{msg}"
    );
}

/// Tried as a new user would: 5,500 schema-valid ids of 256 characters made an object that
/// etcd could store but no status write could ever update. The schema now refuses what
/// cannot fit, and says what to do; the largest list that fits is stored.
#[test]
fn refuses_job_ids_the_object_cannot_store_and_stores_the_largest_that_fit() {
    let create = |name: &str, n: usize, len: usize| {
        let ids: Vec<String> = (0..n).map(|i| format!("\"{i:0len$}\"")).collect();
        let yaml = VALID
            .replace("NAME", name)
            .replace("[\"1042\", \"1043\"]", &format!("[{}]", ids.join(",")));
        let path = ns().dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        // `create`: client-side apply would add its own 256 KiB annotation limit.
        ns().kubectl(&["create", "-f", path.to_str().unwrap()])
    };
    let out = create("too-large", 5_500, 256);
    assert!(!out.ok, "the API server accepted 1.4 MB of job ids");
    assert!(
        out.stderr.contains("more than 400 KiB of ids"),
        "{}",
        out.stderr
    );
    let out = create("largest", 10_000, 40);
    assert!(out.ok, "{}", out.stderr);
}

#[test]
fn refuses_a_reason_over_256_characters_and_a_later_change_of_it() {
    // 257 two-byte characters: the limit counts characters, not bytes.
    let long = "ж".repeat(257);
    let msg = refused("longwhy", &format!("{VALID}  reason: \"{long}\"\n"));
    assert!(
        msg.contains("spec.reason") && msg.contains("may not be more than 256"),
        "{msg}"
    );
    let fits = format!(
        "{VALID}  reason: \"{}\"\n  audit: {{jobLog: true}}\n",
        "ж".repeat(256)
    );
    let created = ns().apply("why.yaml", &fits.replace("NAME", "why"));
    assert!(created.ok, "{}", created.stderr);
    let edited = ns().kubectl(&[
        "patch",
        "jobretry",
        "why",
        "--type=merge",
        "-p",
        "{\"spec\":{\"reason\":\"another\",\"audit\":{\"jobLog\":false}}}",
    ]);
    assert!(
        !edited.ok
            && edited
                .stderr
                .contains("spec is immutable after creation except spec.suspend"),
        "{}",
        edited.stderr
    );
}
