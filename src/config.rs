//! Operator settings, from command-line flags or environment variables.

use std::time::Duration;

use clap::Parser;

use crate::leader::LeaseSettings;

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
    /// Most job ids per script call (one atomic Redis call) of an id run; within it, each
    /// call is sized by what the run's recent calls cost Redis (a few ms, never 10 ms).
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
    /// Elect a leader on a Lease, so that several replicas can run and only one retries.
    /// Turn off (`--leader-elect=false`) only when exactly one replica runs.
    #[arg(long, env = "JOBRETRY_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease (coordination.k8s.io).
    #[arg(long, env = "JOBRETRY_LEASE_NAME", default_value = "jobretry-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else --watch-namespace, else
    /// `default`).
    #[arg(long, env = "JOBRETRY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease binds its holder after its last renewal; the most a crash of the
    /// leader delays the next one. The holder renews halfway through.
    #[arg(long, env = "JOBRETRY_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,
    /// This replica's identity in the Lease (default: $POD_NAME, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// On SIGTERM/SIGINT, how long running slices get to finish their batch and write status
    /// before they are abandoned; releasing the Lease then takes at most 2 s more.
    #[arg(long, env = "JOBRETRY_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub shutdown_timeout_seconds: u64,
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
    /// Log format: `json` (one JSON object a line, for log collectors) or `text` (for people).
    #[arg(long, env = "JOBRETRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, with the fields of the run's span.
    Json,
    /// Human-readable lines; coloured only on a terminal.
    Text,
}

impl Config {
    pub fn ledger_retention(&self) -> Duration {
        Duration::from_secs(self.ledger_retention_seconds)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }

    /// The Lease to elect a leader on; `env` reads the environment (POD_NAMESPACE, HOSTNAME).
    pub fn lease_settings(&self, env: impl Fn(&str) -> Option<String>) -> LeaseSettings {
        let namespace = self
            .lease_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .or_else(|| self.watch_namespace.clone())
            .unwrap_or_else(|| "default".into());
        let identity = self.lease_identity.clone().unwrap_or_else(|| {
            let host = env("HOSTNAME").unwrap_or_else(|| "jobretry-operator".into());
            format!("{host}-{}", std::process::id())
        });
        LeaseSettings {
            name: self.lease_name.clone(),
            namespace,
            identity,
            duration_seconds: self.lease_duration_seconds,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["jobretry-operator"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("jobretry-operator").chain(args.iter().copied()))
    }

    #[test]
    fn the_lease_namespace_falls_back_to_the_pod_then_the_watched_namespace() {
        let none = |_: &str| None;
        let pod = |k: &str| (k == "POD_NAMESPACE").then(|| "ops".to_string());
        let flag = parse(&["--lease-namespace", "leases", "--watch-namespace", "team"]);
        assert_eq!(flag.lease_settings(pod).namespace, "leases");
        let watched = parse(&["--watch-namespace", "team"]);
        assert_eq!(watched.lease_settings(pod).namespace, "ops");
        assert_eq!(watched.lease_settings(none).namespace, "team");
        assert_eq!(parse(&[]).lease_settings(none).namespace, "default");
    }

    #[test]
    fn election_is_on_by_default_and_can_be_turned_off() {
        assert!(parse(&[]).leader_elect);
        assert!(!parse(&["--leader-elect=false"]).leader_elect);
        let s = parse(&["--lease-identity", "pod-a", "--lease-duration-seconds", "5"])
            .lease_settings(|_| None);
        assert_eq!((s.identity.as_str(), s.duration_seconds), ("pod-a", 5));
        assert!(Config::try_parse_from(["x", "--lease-duration-seconds", "2"]).is_err());
    }
}
