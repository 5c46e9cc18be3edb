//! Prometheus metrics of the operator. Labels are low-cardinality by construction: result
//! names, phases, script names and error categories, never a job id, queue or object name.
//!
//! What a run does is counted where it happens (`batch_done`, `redis_failed`, ...); the
//! number of JobRetry objects by phase is read from the controller's cache at each scrape
//! (`observe_runs`), so it is right on every replica, leader or not.

use std::{collections::BTreeMap, fmt, sync::Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabel {
    script: String,
}

/// Which of our Lua scripts a Redis script call ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// `retry.lua`: one batch of ids.
    Retry,
    /// `select.lua`: one selector page.
    Select,
}

impl Script {
    fn label(self) -> &'static str {
        match self {
            Script::Retry => "retry",
            Script::Select => "select",
        }
    }
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
        let mut family = encoder.encode_descriptor(
            "runs",
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (phase, n) in &counts.by_phase {
            let label = PhaseLabel {
                phase: (*phase).to_string(),
            };
            ConstGauge::new(*n).encode(family.encode_family(&label)?)?;
        }
        let help = "JobRetry objects not finished whose Stalled condition is True";
        let stalled = ConstGauge::new(counts.stalled);
        stalled.encode(encoder.encode_descriptor(
            "runs_stalled",
            help,
            None,
            stalled.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<ResultLabel, Counter>,
    runs_finished: Family<PhaseLabel, Counter>,
    reconcile_errors: Family<CategoryLabel, Counter>,
    redis_errors: Family<CategoryLabel, Counter>,
    secret_errors: Family<CategoryLabel, Counter>,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    script_seconds: Family<ScriptLabel, Histogram, ScriptBuckets>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("jobretry");
        let m = Self {
            registry: Mutex::default(),
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
        };
        let r = &mut registry;
        r.register("jobs", "Jobs processed, by result", m.jobs.clone());
        r.register(
            "runs_finished",
            "Runs that reached a terminal phase, by phase",
            m.runs_finished.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by category",
            m.reconcile_errors.clone(),
        );
        r.register(
            "redis_errors",
            "Redis errors (connecting or running a script), by category",
            m.redis_errors.clone(),
        );
        r.register(
            "secret_errors",
            "Connection Secrets that could not be read or used, by category",
            m.secret_errors.clone(),
        );
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile (at most about one status interval of batches)",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "redis_script_duration_seconds",
            "Duration of one call of our Redis scripts, by script (retry: a batch of ids, select: a selector page)",
            m.script_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease (and runs retries), else 0",
            m.leader.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }
}

impl Metrics {
    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }

    /// A reconcile that took `seconds`, whatever its outcome.
    pub fn reconcile_done(&self, seconds: f64) {
        self.reconcile_seconds.observe(seconds);
    }

    pub fn reconcile_failed(&self, category: &'static str) {
        inc(&self.reconcile_errors, category);
    }

    /// A Redis error of `category` (a fixed label: `bullmq::Category`).
    pub fn redis_failed(&self, category: &'static str) {
        inc(&self.redis_errors, category);
    }

    /// A connection Secret that could not be used, of `category` (a fixed label from
    /// `controller::load`).
    pub fn secret_failed(&self, category: &'static str) {
        inc(&self.secret_errors, category);
    }

    /// One call of `script` that took `seconds` and produced these row results.
    pub fn batch_done<'a>(
        &self,
        script: Script,
        seconds: f64,
        results: impl Iterator<Item = &'a str>,
    ) {
        self.script_seconds
            .get_or_create(&ScriptLabel {
                script: script.label().into(),
            })
            .observe(seconds);
        for r in results {
            self.jobs
                .get_or_create(&ResultLabel { result: r.into() })
                .inc();
        }
    }

    pub fn run_finished(&self, phase: &str) {
        self.runs_finished
            .get_or_create(&PhaseLabel {
                phase: phase.into(),
            })
            .inc();
    }

    /// Declares every category of each error counter at 0, so each series exists before its
    /// first error (`increase()` then counts that first error too).
    pub fn declare_error_categories(
        &self,
        reconcile: &[&'static str],
        redis: &[&'static str],
        secret: &[&'static str],
    ) {
        for (family, categories) in [
            (&self.reconcile_errors, reconcile),
            (&self.redis_errors, redis),
            (&self.secret_errors, secret),
        ] {
            for c in categories {
                let _ = family.get_or_create(&CategoryLabel {
                    category: (*c).into(),
                });
            }
        }
    }

    /// Exports the objects by phase as `count` reports them at each scrape.
    pub fn observe_runs(&self, count: impl Fn() -> RunCounts + Send + Sync + 'static) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(RunsCollector(Box::new(count))));
    }

    /// Whether this replica leads (holds the Lease and may run retries).
    pub fn set_leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
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

fn inc(family: &Family<CategoryLabel, Counter>, category: &'static str) {
    family
        .get_or_create(&CategoryLabel {
            category: category.into(),
        })
        .inc();
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
            ["Retried", "Retried", "NotFound"].into_iter(),
        );
        m.batch_done(Script::Select, 0.02, std::iter::empty());
        m.run_finished("Succeeded");
        m.redis_failed("auth");
        m.secret_failed("not_found");
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
        });
        let text = m.render();
        assert!(text.contains("# TYPE jobretry_runs gauge"), "{text}");
        assert!(
            text.contains("jobretry_runs{phase=\"Running\"} 2"),
            "{text}"
        );
        assert!(text.contains("jobretry_runs_stalled 1"), "{text}");
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render().contains("jobretry_runs{phase=\"Running\"} 5"));
    }
}
