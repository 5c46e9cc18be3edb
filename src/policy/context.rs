//! Shared state of the policy controller's reconciles.

use std::sync::Arc;

use kube::{
    Client,
    runtime::{events::Recorder, reflector::Store},
};

use crate::{
    config::Config,
    controller::{Connections, secret::SecretCache},
    crd::JobRetry,
    leader::Gate,
    metrics::Metrics,
};

/// What every policy reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The runs of every policy (JobRetries with the policy label), as the watch last saw them.
    pub runs: Store<JobRetry>,
    /// Connection Secrets read in the last seconds (for the failure count).
    pub secrets: SecretCache,
    /// Open Redis connections by target.
    pub connections: Connections,
    /// Whether this replica leads: asked before every write.
    pub gate: Arc<Gate>,
    /// Where the clock stands: the system clock, shifted in tests (see [`Clock`]).
    pub clock: Clock,
    /// When this replica last read each policy's failure count (by uid).
    checks: std::sync::Mutex<std::collections::HashMap<String, k8s_openapi::jiff::Timestamp>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        runs: Store<JobRetry>,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            recorder: crate::controller::recorder(&client),
            clock: Clock::from_env(),
            client,
            config,
            metrics,
            runs,
            secrets: SecretCache::default(),
            connections: Connections::default(),
            gate,
            checks: Default::default(),
        }
    }

    /// When this replica last read policy `uid`'s failure count.
    pub fn last_check(&self, uid: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .copied()
    }

    /// Remembers that policy `uid`'s failure count was read at `at`.
    pub fn checked(&self, uid: &str, at: k8s_openapi::jiff::Timestamp) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.insert(uid.to_string(), at);
    }
}

/// The policy controller's clock: the system clock, plus, in end-to-end tests only, the
/// seconds written in the file `JOBRETRY_TEST_CLOCK_SKEW_FILE` names (read at every
/// reconcile), so a test can step through schedule ticks without waiting for them.
pub struct Clock {
    skew_file: Option<std::path::PathBuf>,
}

impl Clock {
    fn from_env() -> Self {
        let skew_file = std::env::var_os("JOBRETRY_TEST_CLOCK_SKEW_FILE").map(Into::into);
        Self { skew_file }
    }

    /// Now.
    pub fn now(&self) -> k8s_openapi::jiff::Timestamp {
        let now = k8s_openapi::jiff::Timestamp::now();
        let skew = self
            .skew_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(skew))
            .unwrap_or(now)
    }
}
