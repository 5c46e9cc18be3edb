//! Prometheus metrics of the operator. Labels are low-cardinality by construction: result
//! names, phases, script names and error categories, never a job id, queue or object name.
//!
//! What a run does is counted where it happens (`batch_done`, `redis_failed`, ...); the
//! number of JobRetry objects by phase is read from the controller's cache at each scrape
//! (`observe_runs`), so it is right on every replica, leader or not.

use std::{collections::BTreeMap, fmt, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
        text::encode,
    },
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};
use strum::IntoEnumIterator;

use crate::{
    bullmq::Category,
    crd::{JobResult, Phase, Reason, policy::RunCause},
    error::{ErrorCategory, SecretCategory},
};

/// A label value from an enum of fixed names (strum's `IntoStaticStr`).
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
                let name: &'static str = (*self).into();
                fmt::Write::write_str(encoder, name)
            }
        }
    )*};
}

label_value!(
    JobResult,
    RunCause,
    Phase,
    Reason,
    Script,
    ErrorCategory,
    SecretCategory,
    Category
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: JobResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: Phase,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: RunCause,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileErrorLabel {
    category: ErrorCategory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretErrorLabel {
    category: SecretCategory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisErrorLabel {
    category: Category,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabel {
    script: Script,
}

/// Which of our Lua scripts a Redis script call ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Script {
    /// `retry.lua`: one batch of ids.
    Retry,
    /// `select.lua`: one selector page.
    Select,
}

/// Script calls take from a millisecond (small batch) to a second or more (a large batch on
/// a busy server).
#[derive(Clone)]
struct ScriptBuckets;

impl MetricConstructor<Histogram> for ScriptBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
    }
}

/// JobRetry objects by phase, as the controller's cache holds them now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Objects by phase; every phase is listed (0 too), so each series always exists.
    pub by_phase: BTreeMap<&'static str, i64>,
    /// Objects not in a terminal phase whose `Stalled` condition is True: waiting for
    /// someone to fix a Secret, an ACL or the queue's data.
    pub stalled: i64,
    /// Objects not in a terminal phase held by an error (waiting or stalled), by the reason
    /// their conditions show; every reason is listed (0 too).
    pub held: BTreeMap<Reason, i64>,
}

type CountRuns = Box<dyn Fn() -> RunCounts + Send + Sync>;

/// Reads [`RunCounts`] at each scrape.
struct RunsCollector(CountRuns);

impl fmt::Debug for RunsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunsCollector")
    }
}

impl Collector for RunsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counts = (self.0)();
        let help = "JobRetry objects by phase (objects not yet started count as Pending)";
        let gauge = prometheus_client::metrics::MetricType::Gauge;
        let mut family = encoder.encode_descriptor("runs", help, None, gauge)?;
        for (phase, n) in &counts.by_phase {
            let Ok(phase) = phase.parse::<Phase>() else {
                continue;
            };
            ConstGauge::new(*n).encode(family.encode_family(&PhaseLabel { phase })?)?;
        }
        let help = "JobRetry objects not finished whose Stalled condition is True";
        let stalled = ConstGauge::new(counts.stalled);
        let descriptor = encoder.encode_descriptor("runs_stalled", help, None, gauge)?;
        stalled.encode(descriptor)?;
        let help = "JobRetry objects not finished that wait or are stalled, by the reason of their conditions";
        let mut family = encoder.encode_descriptor("runs_held", help, None, gauge)?;
        for (reason, n) in &counts.held {
            let label = ReasonLabel { reason: *reason };
            ConstGauge::new(*n).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// One gauge read at each scrape.
struct GaugeCollector {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl fmt::Debug for GaugeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for GaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauge = prometheus_client::metrics::MetricType::Gauge;
        let descriptor = encoder.encode_descriptor(self.name, self.help, None, gauge)?;
        ConstGauge::new((self.read)()).encode(descriptor)
    }
}

/// The operator's metrics; [`Metrics::default`] registers every one of them, each error
/// category declared at 0.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    families: Families,
}

/// Every metric the operator updates.
#[derive(Debug)]
struct Families {
    jobs: Family<ResultLabel, Counter>,
    runs_finished: Family<PhaseLabel, Counter>,
    reconcile_errors: Family<ReconcileErrorLabel, Counter>,
    redis_errors: Family<RedisErrorLabel, Counter>,
    secret_errors: Family<SecretErrorLabel, Counter>,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    script_seconds: Family<ScriptLabel, Histogram, ScriptBuckets>,
    leader: Gauge,
    policy_runs: Family<CauseLabel, Counter>,
    guard_trips: Counter,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            runs_finished: Family::default(),
            reconcile_errors: Family::default(),
            redis_errors: Family::default(),
            secret_errors: Family::default(),
            reconciles: Counter::default(),
            reconcile_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            script_seconds: Family::new_with_constructor(ScriptBuckets),
            leader: Gauge::default(),
            policy_runs: Family::default(),
            guard_trips: Counter::default(),
        }
    }
}

impl Families {
    /// Registers every metric in `r`, and declares every error category at 0, so each series
    /// exists before its first error (`increase()` then counts that first error too).
    fn register(&self, r: &mut Registry) {
        r.register("jobs", "Jobs processed, by result", self.jobs.clone());
        let help = "Runs that reached a terminal phase, by phase";
        r.register("runs_finished", help, self.runs_finished.clone());
        let help = "Reconciles that ended in an error, by category";
        r.register("reconcile_errors", help, self.reconcile_errors.clone());
        let help = "Redis errors (connecting or running a script), by category";
        r.register("redis_errors", help, self.redis_errors.clone());
        let help = "Connection Secrets that could not be read or used, by category";
        r.register("secret_errors", help, self.secret_errors.clone());
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        let help = "Duration of one reconcile (at most about one status interval of batches)";
        r.register(
            "reconcile_duration_seconds",
            help,
            self.reconcile_seconds.clone(),
        );
        let help = "Duration of one call of our Redis scripts, by script (retry: a batch of ids, select: a selector page)";
        r.register(
            "redis_script_duration_seconds",
            help,
            self.script_seconds.clone(),
        );
        let help = "1 while this replica holds the leader Lease (and runs retries), else 0";
        r.register("leader", help, self.leader.clone());
        let help = "JobRetry runs the policy controller created, by cause (schedule, failures)";
        r.register("policy_runs_created", help, self.policy_runs.clone());
        let help = "Times a policy's loop guard suspended it";
        r.register("policy_guard_trips", help, self.guard_trips.clone());
        for cause in RunCause::iter() {
            let _ = self.policy_runs.get_or_create(&CauseLabel { cause });
        }
        for category in ErrorCategory::iter() {
            let _ = self
                .reconcile_errors
                .get_or_create(&ReconcileErrorLabel { category });
        }
        for category in SecretCategory::iter() {
            let _ = self
                .secret_errors
                .get_or_create(&SecretErrorLabel { category });
        }
        for category in Category::iter().filter(|c| c.is_redis()) {
            let _ = self
                .redis_errors
                .get_or_create(&RedisErrorLabel { category });
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let families = Families::default();
        let mut registry = Registry::with_prefix("jobretry");
        families.register(&mut registry);
        Self {
            registry: Mutex::new(registry),
            families,
        }
    }
}

impl Metrics {
    pub fn reconcile_started(&self) {
        self.families.reconciles.inc();
    }

    /// A reconcile that took `seconds`, whatever its outcome.
    pub fn reconcile_done(&self, seconds: f64) {
        self.families.reconcile_seconds.observe(seconds);
    }

    pub fn reconcile_failed(&self, category: ErrorCategory) {
        let label = ReconcileErrorLabel { category };
        self.families.reconcile_errors.get_or_create(&label).inc();
    }

    /// A Redis error of `category` (a fixed label: `bullmq::Category`).
    pub fn redis_failed(&self, category: Category) {
        let label = RedisErrorLabel { category };
        self.families.redis_errors.get_or_create(&label).inc();
    }

    /// A connection Secret that could not be used.
    pub fn secret_failed(&self, category: SecretCategory) {
        let label = SecretErrorLabel { category };
        self.families.secret_errors.get_or_create(&label).inc();
    }

    /// One call of `script` that took `seconds` and produced these results (each with its
    /// number of jobs).
    pub fn batch_done(
        &self,
        script: Script,
        seconds: f64,
        results: impl Iterator<Item = (JobResult, u64)>,
    ) {
        let f = &self.families;
        f.script_seconds
            .get_or_create(&ScriptLabel { script })
            .observe(seconds);
        for (result, n) in results {
            f.jobs.get_or_create(&ResultLabel { result }).inc_by(n);
        }
    }

    pub fn run_finished(&self, phase: Phase) {
        self.families
            .runs_finished
            .get_or_create(&PhaseLabel { phase })
            .inc();
    }

    /// Exports the objects by phase as `count` reports them at each scrape.
    pub fn observe_runs(&self, count: impl Fn() -> RunCounts + Send + Sync + 'static) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(RunsCollector(Box::new(count))));
    }

    /// A policy created a run for `cause`.
    pub fn policy_run_created(&self, cause: RunCause) {
        let label = CauseLabel { cause };
        self.families.policy_runs.get_or_create(&label).inc();
    }

    /// A policy's loop guard tripped.
    pub fn guard_tripped(&self) {
        self.families.guard_trips.inc();
    }

    /// Exports how many policies their loop guard holds now, as `count` reports it at each
    /// scrape (from the policy controller's cache: right on every replica).
    pub fn observe_policies(&self, count: impl Fn() -> i64 + Send + Sync + 'static) {
        let help = "JobRetryPolicies their loop guard holds suspended now";
        let collector = GaugeCollector {
            name: "policies_guard_tripped",
            help,
            read: Box::new(count),
        };
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(collector));
    }

    /// Whether this replica leads (holds the Lease and may run retries).
    pub fn set_leader(&self, leads: bool) {
        self.families.leader.set(i64::from(leads));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_low_cardinality_labels() {
        let m = Metrics::default();
        m.batch_done(
            Script::Retry,
            0.002,
            [(JobResult::Retried, 2), (JobResult::NotFound, 1)].into_iter(),
        );
        m.batch_done(Script::Select, 0.02, std::iter::empty());
        m.run_finished(Phase::Succeeded);
        m.redis_failed(Category::Auth);
        m.secret_failed(SecretCategory::NotFound);
        m.reconcile_done(0.3);
        let text = m.render();
        for line in [
            "jobretry_jobs_total{result=\"Retried\"} 2",
            "jobretry_jobs_total{result=\"NotFound\"} 1",
            "jobretry_runs_finished_total{phase=\"Succeeded\"} 1",
            "jobretry_redis_errors_total{category=\"auth\"} 1",
            "jobretry_secret_errors_total{category=\"not_found\"} 1",
            "jobretry_redis_script_duration_seconds_count{script=\"retry\"} 1",
            "jobretry_redis_script_duration_seconds_count{script=\"select\"} 1",
            "jobretry_redis_script_duration_seconds_bucket{le=\"0.0025\",script=\"retry\"} 1",
            "jobretry_reconcile_duration_seconds_count 1",
            "jobretry_reconcile_duration_seconds_bucket{le=\"0.25\"} 0",
            "jobretry_reconcile_duration_seconds_bucket{le=\"0.5\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(text.contains("jobretry_leader 0"), "{text}");
        m.set_leader(true);
        assert!(m.render().contains("jobretry_leader 1"));
        assert!(
            !text.contains("jobretry_runs{"),
            "no collector yet:\n{text}"
        );
    }

    #[test]
    fn runs_by_phase_are_read_at_each_scrape() {
        let m = Metrics::default();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(2));
        let seen = n.clone();
        m.observe_runs(move || RunCounts {
            by_phase: [("Running", seen.load(std::sync::atomic::Ordering::Relaxed))].into(),
            stalled: 1,
            held: [(Reason::QueueBusy, 3)].into(),
        });
        let text = m.render();
        assert!(text.contains("# TYPE jobretry_runs gauge"), "{text}");
        assert!(
            text.contains("jobretry_runs{phase=\"Running\"} 2"),
            "{text}"
        );
        assert!(text.contains("jobretry_runs_stalled 1"), "{text}");
        assert!(
            text.contains("jobretry_runs_held{reason=\"QueueBusy\"} 3"),
            "{text}"
        );
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render().contains("jobretry_runs{phase=\"Running\"} 5"));
    }
}
