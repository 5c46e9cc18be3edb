//! The jobretry-operator binary: parse settings, set up logging, serve health and metrics,
//! elect a leader, run the controller, and shut down within bounded time.
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use clap::Parser;
use jobretry_operator::{
    client, config::Config, controller, http, leader::Leader, metrics::Metrics, policy, telemetry,
};
use tokio::{signal::unix, sync::watch, time::timeout};
use tracing::{error, info, warn};

/// The most releasing the Lease may take on the way out.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    let config = Config::parse();
    telemetry::init(config.log_format);
    std::process::exit(match run(config).await {
        Ok(()) => 0,
        Err(e) => {
            error!(error = %e, "jobretry-operator stopped");
            1
        }
    })
}

/// Why the operator stops.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("cannot serve the HTTP endpoint: {0}")]
    Http(#[from] std::io::Error),
    #[error("{0}")]
    Client(#[from] client::ClientError),
    #[error("lost the leader Lease; restarting as a follower")]
    LeaseLost,
    #[error("the controller stopped")]
    ControllerEnded,
}

async fn run(config: Config) -> Result<(), Stop> {
    let mut signals = Signals::listen()?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(http::Health::new(metrics.clone()));
    let mut server = tokio::spawn(http::serve(config.http_addr, health.clone()));
    let client = tokio::select! {
        c = client::kube_client(config.kube_api_qps, config.kube_api_burst) => c?,
        () = signals.next() => return Ok(()),
    };
    let leader = if config.leader_elect {
        let settings = config.lease_settings(|k| std::env::var(k).ok());
        Leader::start(client.clone(), settings, metrics)
    } else {
        Leader::disabled(metrics)
    };
    let gate = leader.gate();
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let mut policy_drain = drain_rx.clone();
    let drain = async move {
        let _ = drain_rx.wait_for(|d| *d).await;
    };
    let policy_drain = async move {
        let _ = policy_drain.wait_for(|d| *d).await;
    };
    let drain_limit = config.shutdown_timeout();
    // The policy controller (JobRetryPolicy: recurring runs) beside the JobRetry controller,
    // behind the same gate; it only creates and deletes JobRetries and writes its status.
    let policies = policy::run(
        client.clone(),
        config.clone(),
        health.clone(),
        gate.clone(),
        policy_drain,
    );
    let policies = tokio::spawn(policies);
    let mut controller = tokio::spawn(controller::run(client, config, health, gate.clone(), drain));
    let outcome = tokio::select! {
        () = signals.next() => Ok(()),
        () = leader.lost() => Err(Stop::LeaseLost),
        served = &mut server => Err(match served {
            Ok(Err(e)) => Stop::Http(e),
            _ => Stop::ControllerEnded,
        }),
        _ = &mut controller => Err(Stop::ControllerEnded),
    };
    if let Err(Stop::LeaseLost) = outcome {
        // The fence is closed already: nothing may write status, so there is nothing to
        // finish, and the Lease is no longer ours to release.
        return outcome;
    }
    // Shutdown, each step bounded: running slices finish their batch and write status, then
    // the fence closes and the Lease is released for the next leader. A second signal ends
    // the process at once.
    info!(limit = ?drain_limit, "shutting down: finishing running batches");
    gate.start_draining();
    let _ = drain_tx.send(true);
    let drained = tokio::select! {
        done = timeout(drain_limit, &mut controller) => done.is_ok(),
        () = signals.next() => {
            warn!("second signal: exiting now");
            std::process::exit(130);
        }
    };
    let _ = timeout(RELEASE_TIMEOUT, policies).await;
    if drained {
        info!("running slices ended and wrote their status");
    } else {
        warn!(limit = ?drain_limit, "running slices did not end in time; abandoning them (their batches are in the Redis record)");
    }
    leader.release(RELEASE_TIMEOUT).await;
    info!("stopped");
    outcome
}

/// SIGTERM and SIGINT.
struct Signals {
    term: unix::Signal,
    int: unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        Ok(Self {
            term: unix::signal(unix::SignalKind::terminate())?,
            int: unix::signal(unix::SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}
