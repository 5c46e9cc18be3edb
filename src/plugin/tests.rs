use clap::Parser;
use k8s_openapi::jiff::Timestamp;

use super::{render, *};
use crate::crd::{JobResultRow, JobRetryStatus, Preview, SelectionStatus, ValueCount};

fn now() -> Timestamp {
    "2026-11-30T12:00:00Z".parse().unwrap()
}

fn cli(args: &str) -> Cli {
    Cli::try_parse_from(std::iter::once("kubectl-jobretry").chain(args.split_whitespace())).unwrap()
}

fn built(args: &str) -> Result<JobRetry, PluginError> {
    match cli(args).command {
        Command::Run(r) => jobretry(&r.select, Some(&r), Some("payments"), now()),
        Command::Preview(p) => jobretry(&p.select, None, Some("payments"), now()),
        _ => panic!("not a create command"),
    }
}

#[test]
fn preview_flags_make_a_dry_run_selector() {
    let jr = built("preview -n payments --queue payments --reason ECONNRESET --since 2h --name charge-* --name refund-?").unwrap();
    let sel = jr.spec.selector.as_ref().unwrap();
    assert!(jr.spec.dry_run);
    assert_eq!(sel.failed_reason_contains.as_deref(), Some("ECONNRESET"));
    assert_eq!(sel.names, Some(vec!["charge-*".into(), "refund-?".into()]));
    assert_eq!(
        sel.finished_after.as_ref().unwrap().0,
        "2026-11-30T10:00:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!((sel.finished_before.clone(), sel.max_jobs), (None, 10_000));
    assert_eq!(jr.spec.connection.secret_ref.name, "payments-redis");
    assert_eq!(
        jr.metadata.name.as_deref(),
        Some("payments-preview-20261130-120000")
    );
    assert_eq!(jr.metadata.namespace.as_deref(), Some("payments"));
}

#[test]
fn run_flags_carry_the_run_options_and_the_same_selector() {
    let args = "--queue q --secret redis --state failed --before 2026-11-30T11:00:00Z --since 1d --max-jobs 50";
    let run = built(&format!(
        "run --wait --rate 20 --reset-attempts-made --run-key k {args}"
    ))
    .unwrap();
    let dry = built(&format!("preview {args}")).unwrap();
    assert!(!run.spec.dry_run && run.spec.reset_attempts_made && !run.spec.reset_attempts_started);
    assert_eq!(run.spec.rate_limit.as_ref().unwrap().jobs_per_second, 20);
    assert_eq!(run.spec.run_key.as_deref(), Some("k"));
    assert_eq!(
        run.spec.selector, dry.spec.selector,
        "preview shows what run retries"
    );
    let sel = run.spec.selector.unwrap();
    assert_eq!(
        sel.finished_after.unwrap().0.to_string(),
        "2026-11-29T12:00:00Z"
    );
    assert_eq!(
        sel.finished_before.unwrap().0.to_string(),
        "2026-11-30T11:00:00Z"
    );
    assert_eq!(sel.max_jobs, 50);
    assert_eq!(run.spec.connection.secret_ref.name, "redis");
}

#[test]
fn flags_the_api_would_refuse_are_refused_with_the_flag_named() {
    let cases = [
        ("preview --queue q --since 1h --before 2h", "--since"),
        ("preview --queue q --state completed --reason x", "--reason"),
        ("preview --queue q --since yesterday", "--since"),
        ("preview --queue q --mode sentinel", "--sentinel-master"),
        ("preview --queue q --sentinel-master m", "--sentinel-master"),
    ];
    for (args, flag) in cases {
        let e = built(args).unwrap_err();
        assert!(matches!(e, PluginError::InvalidFlag(_)), "{args}: {e}");
        assert!(e.to_string().contains(flag), "{args}: {e}");
        assert_eq!(e.exit_code(), 2);
    }
}

#[test]
fn durations_read_as_a_user_writes_them() {
    let secs = |t: &str| parse_duration(t).unwrap().as_secs();
    assert_eq!(
        (
            secs("90s"),
            secs("30m"),
            secs("2h"),
            secs("1d"),
            secs("1h30m")
        ),
        (90, 1800, 7200, 86_400, 5400)
    );
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-5m").is_err());
}

#[test]
fn default_names_are_valid_kubernetes_names() {
    assert_eq!(
        default_name("Payments_EU:1", "retry", now()),
        "payments-eu-1-retry-20261130-120000"
    );
    let long = default_name(&"q".repeat(300), "preview", now());
    assert_eq!(long.len(), 63);
    assert!(long.ends_with("-preview-20261130-120000"));
    assert_eq!(
        default_name("::", "retry", now()),
        "jobretry-retry-20261130-120000"
    );
}

#[test]
fn the_manifest_is_what_a_user_commits() {
    let jr = built("run --queue q --name a* -o yaml").unwrap();
    let yaml = manifest(&jr, "yaml").unwrap();
    assert!(
        yaml.starts_with("apiVersion: jobretry.io/v1alpha1\nkind: JobRetry\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("status"), "{yaml}");
    let back: JobRetry = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(back.spec, jr.spec);
    let json: JobRetry = serde_json::from_str(&manifest(&jr, "json").unwrap()).unwrap();
    assert_eq!(json.spec, jr.spec);
}

fn with_status(status: JobRetryStatus) -> JobRetry {
    let mut jr = built("run --queue payments --name charge-*").unwrap();
    jr.metadata.name = Some("incident".into());
    jr.status = Some(status);
    jr
}

#[test]
fn a_table_aligns_columns_like_kubectl_get() {
    let t = render::table(
        &["ID", "RESULT"],
        &[
            vec!["1042".into(), "Retried".into()],
            vec!["7".into(), "NotFound".into()],
        ],
    );
    assert_eq!(t, "ID     RESULT\n1042   Retried\n7      NotFound\n");
}

#[test]
fn the_preview_shows_counts_times_names_and_reasons() {
    let jr = with_status(JobRetryStatus {
        phase: Some("Succeeded".into()),
        selection: Some(SelectionStatus {
            scanned: 108,
            ..Default::default()
        }),
        preview: Some(Preview {
            matched: 42,
            oldest: Some(Time("2026-11-30T10:00:00Z".parse().unwrap())),
            newest: Some(Time("2026-11-30T11:00:00Z".parse().unwrap())),
            names: vec![ValueCount {
                value: "charge-card".into(),
                count: 40,
            }],
            reasons: vec![ValueCount {
                value: "read ECONNRESET\nat x".into(),
                count: 42,
            }],
        }),
        ..Default::default()
    });
    let text = render::preview(&jr);
    assert!(
        text.contains("Matched:  42 failed jobs of queue payments (of 108 scanned)"),
        "{text}"
    );
    assert!(text.contains("Oldest:   2026-11-30T10:00:00Z"), "{text}");
    assert!(
        text.contains("COUNT   NAME\n40      charge-card\n"),
        "{text}"
    );
    assert!(text.contains("42      read ECONNRESET at x\n"), "{text}");
}

#[test]
fn the_status_prints_phase_counts_and_rows() {
    let row = |id: &str, result: &str, code: Option<i64>, m: Option<&str>| JobResultRow {
        id: id.into(),
        result: result.into(),
        code,
        message: m.map(Into::into),
    };
    let jr = with_status(JobRetryStatus {
        phase: Some("PartiallySucceeded".into()),
        matched: Some(2),
        processed: Some(2),
        retried: Some(1),
        skipped: Some(1),
        errors: Some(0),
        jobs: vec![
            row("1042", "Retried", Some(1), None),
            row("1043", "NotFound", Some(-1), Some("job does not exist")),
        ],
        ..Default::default()
    });
    let text = render::status(&jr);
    assert!(text.contains("Phase:    PartiallySucceeded\n"), "{text}");
    assert!(
        text.contains("Matched:  2  Retried: 1  Skipped: 1  Errors: 0"),
        "{text}"
    );
    assert!(
        text.contains("ID     RESULT     CODE   MESSAGE\n1042   Retried    1\n1043   NotFound   -1     job does not exist\n"),
        "{text}"
    );
    assert_eq!(
        render::summary(&jr),
        "jobretry/incident PartiallySucceeded: matched 2, retried 1, skipped 1, errors 0\n"
    );
}

#[test]
fn progress_is_scanned_of_the_estimate_for_a_selector_run() {
    let jr = with_status(JobRetryStatus {
        phase: Some("Running".into()),
        matched: Some(40),
        retried: Some(38),
        selection: Some(SelectionStatus {
            scanned: 120,
            remaining: 880,
            ..Default::default()
        }),
        ..Default::default()
    });
    let p = render::progress(&jr);
    assert_eq!((p.position, p.length), (120, 1000));
    assert_eq!(
        p.message,
        "Running: scanned 120/1000, matched 40, retried 38, skipped 0, errors 0"
    );
    assert!(!render::is_done(&jr));
    let fresh = with_status(JobRetryStatus::default());
    assert_eq!(
        render::progress(&fresh).message,
        "Pending: scanned 0/0, matched 0, retried 0, skipped 0, errors 0"
    );
}

/// A failed request as kube returns it, from the Status JSON the API server sends.
fn api_refusal(status: serde_json::Value) -> kube::Error {
    kube::Error::Api(Box::new(serde_json::from_value(status).unwrap()))
}

/// An error with a cause, as hyper's client errors come.
#[derive(Debug)]
struct Wrapped(&'static str, std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

#[test]
fn api_errors_read_as_one_line_about_the_object() {
    let not_found = api_refusal(serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
        "reason": "NotFound", "message": "jobretries.jobretry.io \"foo\" not found",
        "details": {"name": "foo", "group": "jobretry.io", "kind": "jobretries"},
    }));
    let no_namespace = api_refusal(serde_json::json!({
        "status": "Failure", "code": 404, "reason": "NotFound",
        "message": "namespaces \"bar\" not found", "details": {"name": "bar", "kind": "namespaces"},
    }));
    let no_crd = api_refusal(serde_json::json!({
        "status": "Failure", "code": 404, "reason": "NotFound",
        "message": "the server could not find the requested resource", "details": {},
    }));
    let forbidden_text = "jobretries.jobretry.io \"foo\" is forbidden: User \"alice\" cannot get resource \"jobretries\" in API group \"jobretry.io\" in the namespace \"bar\"";
    let forbidden = api_refusal(serde_json::json!({
        "status": "Failure", "code": 403, "reason": "Forbidden", "message": forbidden_text,
        "details": {"name": "foo", "group": "jobretry.io", "kind": "jobretries"},
    }));
    let exists = api_refusal(serde_json::json!({
        "status": "Failure", "code": 409, "reason": "AlreadyExists",
        "message": "jobretries.jobretry.io \"foo\" already exists",
        "details": {"name": "foo", "group": "jobretry.io", "kind": "jobretries"},
    }));
    let refused = std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "Connection refused (os error 111)",
    );
    let unreachable = kube::Error::Service(Box::new(Wrapped("client error (Connect)", refused)));
    let said = |e, name| api_error(e, "bar", name).to_string();
    let cases = [
        (
            said(not_found, Some("foo")),
            "jobretry foo not found in namespace bar".to_string(),
        ),
        (said(no_namespace, None), "namespace bar not found".into()),
        (
            said(exists, Some("foo")),
            "jobretry foo already exists in namespace bar: give the new run another name, or see it with `kubectl jobretry status -n bar foo`".into(),
        ),
        (said(forbidden, Some("foo")), forbidden_text.into()),
        (
            said(unreachable, Some("foo")),
            "cannot reach the API server: client error (Connect): Connection refused (os error 111)"
                .into(),
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let crd = said(no_crd, Some("foo"));
    assert!(
        crd.starts_with("the API server does not serve JobRetries")
            && crd.contains("install the CRD"),
        "{crd}"
    );
}

#[test]
fn no_error_is_a_debug_dump_or_spans_lines() {
    let multi = api_refusal(serde_json::json!({
        "status": "Failure", "code": 422, "reason": "Invalid",
        "message": "JobRetry.jobretry.io \"foo\" is invalid:\n  spec.queue.name: Invalid value",
    }));
    let text = api_error(multi, "bar", Some("foo")).to_string();
    assert_eq!(
        text,
        "JobRetry.jobretry.io \"foo\" is invalid: spec.queue.name: Invalid value"
    );
    assert!(
        !text.contains("Status {") && !text.contains("ApiError"),
        "{text}"
    );
    let bare = api_refusal(serde_json::json!({"code": 500, "reason": "InternalError"}));
    assert_eq!(
        api_error(bare, "bar", None).to_string(),
        "the API server answered 500 InternalError"
    );
}

#[test]
fn every_suggested_command_names_the_namespace() {
    assert_eq!(
        status_command("payments", "incident-4712"),
        "kubectl jobretry status -n payments incident-4712"
    );
    let timeout = PluginError::Timeout {
        after: "30s".into(),
        name: "incident-4712".into(),
        namespace: "payments".into(),
    };
    assert_eq!(
        timeout.to_string(),
        "timed out after 30s; the run goes on: follow it with `kubectl jobretry status -n payments incident-4712`"
    );
    assert_eq!(timeout.exit_code(), 1);
}

#[test]
fn trigger_makes_a_manual_run_of_the_policy_and_resume_stamps_now() {
    let policy: crate::crd::policy::JobRetryPolicy = serde_norway::from_str(
        "apiVersion: jobretry.io/v1alpha1\nkind: JobRetryPolicy\nmetadata: {name: p, namespace: payments, uid: u-1}\nspec:\n  jobRetryTemplate: {spec: {queue: {name: payments}, connection: {secretRef: {name: r}}, selector: {maxJobs: 7}}}\n  schedule: '@hourly'\n",
    )
    .unwrap();
    assert!(matches!(cli("trigger p -n payments").command, Command::Trigger(a) if a.name == "p"));
    let run = triggered(&policy, now());
    let stamp = now().as_second();
    assert_eq!(run.metadata.name, Some(format!("p-manual-{stamp}")));
    assert_eq!(run.spec.run_key, Some(format!("payments/p/manual-{stamp}")));
    assert_eq!(run.spec.selector.unwrap().max_jobs, 7);
    assert_eq!(run.metadata.owner_references.unwrap()[0].uid, "u-1");
    assert_eq!(
        resume_patch(now())["metadata"]["annotations"][RESUME_AT_ANNOTATION],
        "2026-11-30T12:00:00Z"
    );
    assert!(matches!(cli("status --policy p").command, Command::Status(a) if a.policy));
}
