//! Operator settings, from command-line flags or environment variables.

use std::time::Duration;

use clap::Parser;

/// Settings of the jobretry-operator process.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "jobretry-operator",
    version,
    about = "Retries BullMQ jobs declared by JobRetry objects"
)]
pub struct Config {
    /// How long the exactly-once ledger of a run key is kept in Redis after its last write.
    #[arg(long, env = "JOBRETRY_LEDGER_RETENTION_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub ledger_retention_seconds: u64,
    /// Jobs per script call (one atomic Redis call); bounds how long Redis is busy at once.
    #[arg(long, env = "JOBRETRY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub batch_size: u64,
    /// Runs with at most this many jobs keep a status row for every job; larger runs keep only
    /// the rows of jobs that were not retried, up to this many.
    #[arg(long, env = "JOBRETRY_STATUS_ROW_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub status_row_limit: u64,
    /// Longest stretch of batches between two status writes (and progress updates), in ms.
    #[arg(long, env = "JOBRETRY_STATUS_INTERVAL_MS", default_value_t = 1000)]
    pub status_interval_ms: u64,
    /// Only reconcile JobRetry objects in this namespace (default: all namespaces).
    #[arg(long, env = "JOBRETRY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of the health (/healthz, /readyz) and metrics (/metrics) endpoint.
    #[arg(long, env = "JOBRETRY_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "JOBRETRY_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Reconciles running at once, across all JobRetry objects: bounds the Redis runs (and
    /// connections' load) in flight; the others wait in the controller's queue. 0: no bound.
    #[arg(long, env = "JOBRETRY_MAX_CONCURRENT_RUNS", default_value_t = 16)]
    pub max_concurrent_runs: u16,
    /// Average Kubernetes API requests per second, at most (client-side, all requests).
    #[arg(long, env = "JOBRETRY_KUBE_API_QPS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_qps: u32,
    /// Requests that may go out at once above the average rate (the window's allowance).
    #[arg(long, env = "JOBRETRY_KUBE_API_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_burst: u32,
    /// Only Secrets carrying this label (`KEY` or `KEY=VALUE`) may be named in a JobRetry's
    /// spec.connection.secretRef; a run naming another waits with Ready=False SecretInvalid.
    #[arg(long, env = "JOBRETRY_SECRET_LABEL", value_parser = crate::client::SecretLabel::parse)]
    pub secret_label: Option<crate::client::SecretLabel>,
}

impl Config {
    pub fn ledger_retention(&self) -> Duration {
        Duration::from_secs(self.ledger_retention_seconds)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["jobretry-operator"])
    }
}
