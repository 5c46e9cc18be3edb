//! JobRetry manifests built from the crate's typed spec (`jobretry_operator::crd`), written as
//! JSON for `kubectl apply`, and a set of JobRetries in every phase for the GitOps tests.

use std::time::Duration;

use jobretry_operator::crd::{
    Connection, ConnectionMode, JobRetry, JobRetrySpec, QueueRef, RateLimit, SecretKeyRef,
    Selector, SourceState,
    policy::{JobRetryPolicy, JobRetryPolicySpec, RunTemplateSpec},
};
use serde_json::Value;

use super::{Out, TestNs, eventually};

/// A JobRetry as a user would write it: queue `queue` (prefix `bull`), Secret `redis`, state
/// failed, retrying `ids`; fields not set keep their defaults.
pub fn jobretry<S: AsRef<str>>(name: &str, queue: &str, ids: &[S]) -> JobRetry {
    let mut jr = bare(name, queue);
    jr.spec.job_ids = Some(ids.iter().map(|i| i.as_ref().to_string()).collect());
    jr
}

/// A selector JobRetry over queue `queue`'s failed jobs (Secret `redis`).
pub fn selector_jobretry(name: &str, queue: &str, selector: Selector) -> JobRetry {
    let mut jr = bare(name, queue);
    jr.spec.selector = Some(selector);
    jr
}

/// A selector with only `maxJobs` set (add the filters wanted).
pub fn selector(max_jobs: u64) -> Selector {
    Selector {
        names: None,
        failed_reason_contains: None,
        finished_after: None,
        finished_before: None,
        max_jobs,
    }
}

fn bare(name: &str, queue: &str) -> JobRetry {
    JobRetry::new(
        name,
        JobRetrySpec {
            queue: QueueRef {
                name: queue.to_string(),
                prefix: "bull".to_string(),
                bullmq_version: None,
            },
            connection: Connection {
                secret_ref: SecretKeyRef {
                    name: "redis".to_string(),
                    key: "url".to_string(),
                },
                mode: ConnectionMode::Standalone,
                sentinel_master_name: None,
            },
            state: SourceState::Failed,
            job_ids: None,
            selector: None,
            reset_attempts_made: false,
            reset_attempts_started: false,
            dry_run: false,
            rate_limit: None,
            suspend: false,
            run_key: None,
            reason: None,
            audit: None,
        },
    )
}

/// Builder-style changes to a JobRetry, for one-line manifests in the tests.
pub trait JobRetryExt: Sized {
    fn spec_mut(&mut self) -> &mut JobRetrySpec;
    /// `spec.connection.secretRef.name`.
    fn secret(mut self, name: &str) -> Self {
        self.spec_mut().connection.secret_ref.name = name.to_string();
        self
    }
    fn state(mut self, state: SourceState) -> Self {
        self.spec_mut().state = state;
        self
    }
    fn suspend(mut self) -> Self {
        self.spec_mut().suspend = true;
        self
    }
    fn jobs_per_second(mut self, n: u32) -> Self {
        self.spec_mut().rate_limit = Some(RateLimit { jobs_per_second: n });
        self
    }
    fn bullmq_version(mut self, v: &str) -> Self {
        self.spec_mut().queue.bullmq_version = Some(v.to_string());
        self
    }
    fn reset_attempts_made(mut self) -> Self {
        self.spec_mut().reset_attempts_made = true;
        self
    }
    fn dry_run(mut self) -> Self {
        self.spec_mut().dry_run = true;
        self
    }
    fn namespace(self, ns: &str) -> Self;
    fn run_key(mut self, key: &str) -> Self {
        self.spec_mut().run_key = Some(key.to_string());
        self
    }
}

impl JobRetryExt for JobRetry {
    fn spec_mut(&mut self) -> &mut JobRetrySpec {
        &mut self.spec
    }
    fn namespace(mut self, ns: &str) -> Self {
        self.metadata.namespace = Some(ns.to_string());
        self
    }
}

/// The manifest as JSON, as `kubectl apply -f` takes it: no status, no null fields.
pub fn manifest_value(obj: &impl serde::Serialize) -> Value {
    fn drop_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(drop_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(obj).unwrap();
    v.as_object_mut().unwrap().remove("status");
    drop_nulls(&mut v);
    v
}

/// [`manifest_value`] as text.
pub fn manifest(obj: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(&manifest_value(obj)).unwrap()
}

/// A JobRetryPolicy as a user would write it: runs over queue `queue`'s failed jobs that
/// `selector` picks (Secret `redis`), on `schedule` (every field not set keeps its default).
pub fn policy(
    name: &str,
    queue: &str,
    selector: Selector,
    schedule: Option<&str>,
) -> JobRetryPolicy {
    let run = bare("unused", queue).spec;
    let template = RunTemplateSpec {
        queue: run.queue,
        connection: run.connection,
        state: run.state,
        selector,
        reset_attempts_made: false,
        reset_attempts_started: false,
        dry_run: false,
        rate_limit: None,
        reason: None,
        audit: None,
    };
    let mut spec: JobRetryPolicySpec = serde_json::from_value(serde_json::json!({
        "jobRetryTemplate": {"spec": template},
    }))
    .unwrap();
    spec.schedule = schedule.map(str::to_string);
    JobRetryPolicy::new(name, spec)
}

/// Several manifests in one file (a `List`, which kubectl applies item by item).
pub fn manifest_list(items: &[JobRetry]) -> String {
    let items: Vec<Value> = items.iter().map(manifest_value).collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

impl TestNs {
    /// Writes the JobRetry to `<name>.json` and `kubectl apply -f`s it, as a user would.
    pub fn apply_jr(&self, jr: &JobRetry) -> Out {
        let name = jr.metadata.name.as_deref().unwrap();
        self.apply(&format!("{name}.json"), &manifest(jr))
    }

    /// As [`TestNs::apply_jr`], which must succeed.
    pub fn apply_jr_ok(&self, jr: &JobRetry) {
        let out = self.apply_jr(jr);
        assert!(out.ok, "{}", out.stderr);
    }

    /// Writes the policy to `<name>.json` and `kubectl apply -f`s it, as a user would.
    pub fn apply_policy(&self, p: &JobRetryPolicy) -> Out {
        let name = p.metadata.name.as_deref().unwrap();
        self.apply(&format!("{name}.json"), &manifest(p))
    }
}

/// For the GitOps health tests: one JobRetry in each phase the operator writes, in `ns`
/// (whose operator must run), on queue `queue` whose failed jobs are `ids` (at least 4):
/// `done` (Succeeded), `partial` (PartiallySucceeded), `paused` (Suspended), `unknown`
/// (Failed), `nosecret` (stalled), each waited for; returns `slow` as read while Running.
pub fn one_of_each_phase(ns: &TestNs, queue: &str, ids: &[String]) -> Value {
    ns.apply_jr_ok(&jobretry("done", queue, &[&ids[0]]));
    ns.apply_jr_ok(&jobretry("partial", queue, &[&ids[1], "no-such-job"]));
    ns.apply_jr_ok(&jobretry("slow", queue, &ids[2..]).jobs_per_second(1));
    ns.apply_jr_ok(&jobretry("paused", queue, &[&ids[3]]).suspend());
    ns.apply_jr_ok(&jobretry("unknown", queue, &["1"]).bullmq_version("4.0.0"));
    ns.apply_jr_ok(&jobretry("nosecret", queue, &["1"]).secret("missing"));
    let wait =
        |name: &str, cond: &str| assert!(ns.wait_condition(name, cond, "60s").ok, "{name} {cond}");
    wait("done", "Complete");
    wait("partial", "Complete");
    wait("unknown", "Failed");
    wait("paused", "Suspended");
    wait("nosecret", "Stalled");
    eventually(Duration::from_secs(30), "the slow run is running", || {
        let jr = ns.get("slow");
        (jr["status"]["phase"] == "Running").then_some(jr)
    })
}
