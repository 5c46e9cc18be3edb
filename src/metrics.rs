//! Prometheus metrics of the operator. Labels are low-cardinality by construction: result
//! names, phases and error categories, never a job id, queue or object name.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
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

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<ResultLabel, Counter>,
    runs: Family<PhaseLabel, Counter>,
    errors: Family<CategoryLabel, Counter>,
    redis_errors: Family<CategoryLabel, Counter>,
    reconciles: Counter,
    batch_seconds: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("jobretry");
        let jobs = Family::<ResultLabel, Counter>::default();
        let runs = Family::<PhaseLabel, Counter>::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        let redis_errors = Family::<CategoryLabel, Counter>::default();
        let reconciles = Counter::default();
        let batch_seconds = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]);
        registry.register("jobs", "Jobs processed, by result", jobs.clone());
        registry.register(
            "runs_finished",
            "Runs that reached a terminal phase, by phase",
            runs.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors, by category",
            errors.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis errors (connecting or retrying), by category",
            redis_errors.clone(),
        );
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "batch_duration_seconds",
            "Duration of one retry script call",
            batch_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (and runs retries), else 0",
            leader.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            jobs,
            runs,
            errors,
            redis_errors,
            reconciles,
            batch_seconds,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }

    pub fn reconcile_failed(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.into(),
            })
            .inc();
    }

    /// A Redis error of `category` (a fixed label from `bullmq::engine::classify`).
    pub fn redis_failed(&self, category: &'static str) {
        self.redis_errors
            .get_or_create(&CategoryLabel {
                category: category.into(),
            })
            .inc();
    }

    /// One retry script call that took `seconds` and produced these row results.
    pub fn batch_done<'a>(&self, seconds: f64, results: impl Iterator<Item = &'a str>) {
        self.batch_seconds.observe(seconds);
        for r in results {
            self.jobs
                .get_or_create(&ResultLabel { result: r.into() })
                .inc();
        }
    }

    pub fn run_finished(&self, phase: &str) {
        self.runs
            .get_or_create(&PhaseLabel {
                phase: phase.into(),
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_low_cardinality_labels() {
        let m = Metrics::default();
        m.batch_done(0.002, ["Retried", "Retried", "NotFound"].into_iter());
        m.run_finished("Succeeded");
        m.redis_failed("auth");
        let text = m.render();
        assert!(text.contains("jobretry_leader 0"), "{text}");
        m.set_leader(true);
        assert!(m.render().contains("jobretry_leader 1"));
        assert!(
            text.contains("jobretry_jobs_total{result=\"Retried\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("jobretry_jobs_total{result=\"NotFound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jobretry_runs_finished_total{phase=\"Succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jobretry_redis_errors_total{category=\"auth\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jobretry_batch_duration_seconds_count 1"),
            "{text}"
        );
    }
}
