//! Schema rules checked without a cluster (kube's client-side CEL evaluation), fixtures
//! written as the YAML a user would apply; plus the staleness check of the committed CRD.

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

const VALID: &str = "
queue: {name: payments}
connection: {secretRef: {name: payments-redis}}
jobIds: ['1042', '1043']
";

fn spec(yaml: &str) -> Value {
    serde_norway::from_str(yaml).unwrap()
}

#[test]
fn committed_crds_match_the_rust_types() {
    let kinds = [
        ("jobretries.jobretry.io.yaml", crd_yaml().unwrap(), ""),
        (
            "jobretrypolicies.jobretry.io.yaml",
            policy::crd_yaml().unwrap(),
            " -- --policy",
        ),
    ];
    for (file, generated, flag) in kinds {
        let read = |dir: &str| {
            std::fs::read_to_string(format!("{}/{dir}/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_default()
        };
        let committed = read("crds");
        assert!(
            committed == generated,
            "crds/{file} is stale: regenerate it with `cargo run --bin crdgen{flag} > crds/{file}` \
             (and copy it to charts/jobretry-operator/crds/)"
        );
        assert!(
            read("charts/jobretry-operator/crds") == committed,
            "the chart's CRD differs: cp crds/{file} charts/jobretry-operator/crds/"
        );
    }
}

#[test]
fn names_match_the_contract() {
    let crd = JobRetry::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("jobretries.jobretry.io"));
    assert_eq!(crd.spec.names.short_names, Some(vec!["jr".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["bullmq".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let cols: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        cols,
        [
            "QUEUE",
            "STATE",
            "PHASE",
            "MATCHED",
            "RETRIED",
            "SKIPPED",
            "ERRORS",
            "SCANNED",
            "REMAINING",
            "REQUESTER",
            "REASON",
            "AGE"
        ]
    );
}

#[test]
fn valid_spec_passes_cel_and_defaults_apply() {
    assert!(JobRetrySpec::validate_cel(&spec(VALID), None).is_ok());
    let parsed: JobRetrySpec = serde_norway::from_str(VALID).unwrap();
    assert_eq!(parsed.queue.prefix, "bull");
    assert_eq!(parsed.connection.secret_ref.key, "url");
    assert_eq!(parsed.state, SourceState::Failed);
    assert_eq!(parsed.connection.mode, ConnectionMode::Standalone);
}

#[test]
fn exactly_one_of_job_ids_and_selector() {
    let both = format!("{VALID}selector: {{names: ['charge-*']}}\n");
    let err = JobRetrySpec::validate_cel(&spec(&both), None).unwrap_err();
    assert!(
        format!("{err:?}").contains("exactly one of spec.jobIds and spec.selector"),
        "{err:?}"
    );
    let neither = "queue: {name: q}\nconnection: {secretRef: {name: s}}\n";
    assert!(JobRetrySpec::validate_cel(&spec(neither), None).is_err());
}

#[test]
fn queue_name_must_not_contain_a_colon() {
    let bad = VALID.replace("name: payments}", "name: 'pay:ments'}");
    let err = QueueRef::validate_cel(&spec(&bad)["queue"], None).unwrap_err();
    assert!(
        format!("{err:?}").contains("must not contain ':'"),
        "{err:?}"
    );
}

#[test]
fn sentinel_needs_a_master_name_and_only_sentinel_has_one() {
    let ok = spec("secretRef: {name: s}\nmode: sentinel\nsentinelMasterName: mymaster\n");
    assert!(Connection::validate_cel(&ok, None).is_ok());
    let missing = spec("secretRef: {name: s}\nmode: sentinel\n");
    assert!(Connection::validate_cel(&missing, None).is_err());
    let stray = spec("secretRef: {name: s}\nmode: standalone\nsentinelMasterName: mymaster\n");
    assert!(Connection::validate_cel(&stray, None).is_err());
}

#[test]
fn finished_after_must_precede_finished_before() {
    let ok =
        spec("finishedAfter: '2026-11-28T10:00:00Z'\nfinishedBefore: '2026-11-28T12:00:00Z'\n");
    let r = Selector::validate_cel(&ok, None);
    assert!(r.is_ok(), "{r:?}");
    let bad =
        spec("finishedAfter: '2026-11-28T12:00:00Z'\nfinishedBefore: '2026-11-28T10:00:00Z'\n");
    let err = Selector::validate_cel(&bad, None).unwrap_err();
    assert!(
        format!("{err:?}").contains("finishedAfter must be before"),
        "{err:?}"
    );
}

#[test]
fn spec_is_immutable_except_suspend() {
    let old = spec(VALID);
    let suspended = spec(&format!("{VALID}suspend: true\n"));
    assert!(
        JobRetrySpec::validate_cel(&suspended, Some(&old)).is_ok(),
        "suspend must stay editable"
    );
    for edit in [
        VALID.replace("'1043'", "'1044'"),
        format!("{VALID}dryRun: true\n"),
        format!("{VALID}resetAttemptsMade: true\n"),
        VALID.replace("payments-redis", "other"),
    ] {
        let err = JobRetrySpec::validate_cel(&spec(&edit), Some(&old)).unwrap_err();
        assert!(
            format!("{err:?}").contains("spec is immutable"),
            "{edit}: {err:?}"
        );
    }
}

#[test]
fn failed_reason_filter_needs_state_failed() {
    let sel = "queue: {name: q}\nconnection: {secretRef: {name: s}}\nselector: {failedReasonContains: ECONNRESET}\n";
    assert!(JobRetrySpec::validate_cel(&spec(sel), None).is_ok());
    let failed = format!("{sel}state: failed\n");
    assert!(JobRetrySpec::validate_cel(&spec(&failed), None).is_ok());
    let completed = format!("{sel}state: completed\n");
    let err = JobRetrySpec::validate_cel(&spec(&completed), None).unwrap_err();
    assert!(format!("{err:?}").contains("needs state failed"), "{err:?}");
    let names = "queue: {name: q}\nconnection: {secretRef: {name: s}}\nselector: {names: [a]}\nstate: completed\n";
    assert!(JobRetrySpec::validate_cel(&spec(names), None).is_ok());
}

#[test]
fn job_ids_that_cannot_fit_in_the_object_are_refused() {
    let ids = |n: usize, len: usize| {
        let list: Vec<String> = (0..n).map(|i| format!("'{i:0len$}'")).collect();
        format!(
            "queue: {{name: q}}\nconnection: {{secretRef: {{name: s}}}}\njobIds: [{}]\n",
            list.join(",")
        )
    };
    // 10,000 ids of 40 bytes (390 KiB) fit; 5,500 ids of 256 bytes (1.3 MiB) cannot.
    assert!(JobRetrySpec::validate_cel(&spec(&ids(10_000, 40)), None).is_ok());
    let err = JobRetrySpec::validate_cel(&spec(&ids(5_500, 256)), None).unwrap_err();
    assert!(format!("{err:?}").contains("400 KiB"), "{err:?}");
}

#[test]
fn run_key_defaults_to_namespace_and_name() {
    let object = |run_key: &str| -> JobRetry {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "jobretry.io/v1alpha1", "kind": "JobRetry",
            "metadata": {"name": "incident", "namespace": "payments"},
            "spec": {"queue": {"name": "q"}, "connection": {"secretRef": {"name": "s"}},
                     "jobIds": ["1"], "runKey": run_key}
        }))
        .unwrap()
    };
    assert_eq!(object("").run_key(), "payments/incident");
    assert_eq!(object("inc-4711").run_key(), "inc-4711");
}

#[test]
fn every_name_of_the_api_is_one_derived_list() {
    use strum::IntoEnumIterator;
    let reasons: Vec<&str> = Reason::iter().map(Reason::as_str).collect();
    assert!(reasons.contains(&"RunStateLost") && reasons.contains(&"QueueBusy"));
    assert_eq!(
        "SecretForbidden".parse::<Reason>(),
        Ok(Reason::SecretForbidden)
    );
    let phases: Vec<&str> = Phase::iter().map(Phase::as_str).collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Running",
            "Suspended",
            "Succeeded",
            "PartiallySucceeded",
            "Failed"
        ]
    );
    let terminal: Vec<Phase> = Phase::iter().filter(|p| p.is_terminal()).collect();
    assert_eq!(
        terminal,
        [Phase::Succeeded, Phase::PartiallySucceeded, Phase::Failed]
    );
    let results: Vec<&str> = JobResult::iter().map(JobResult::as_str).collect();
    assert_eq!(
        results,
        [
            "Retried",
            "WouldRetry",
            "NotFound",
            "NotInState",
            "AlreadyProcessed",
            "Error",
            "Parked"
        ]
    );
    assert!(JobResult::Retried.is_success() && !JobResult::NotFound.is_success());
}
