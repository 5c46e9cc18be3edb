//! Leader election on a `coordination.k8s.io` Lease, and the fence every Redis call and status
//! write of a run passes.
//!
//! Every replica watches JobRetries, but only the holder of the Lease runs retries.
//! kube-lease-manager takes, renews and releases the Lease; one task ([`claim::campaign`]) drives it
//! and keeps this replica's [`Claim`] in one watch channel, from which the [`Gate`] derives:
//!
//! - the fence: open while kube-lease-manager reports this replica elected and the last Lease
//!   write the API server accepted (its client stamps each one, [`claim::stamping`]: the manager
//!   itself reports only changes of holder) is younger than the lease duration minus a margin
//!   for clock skew ([`remaining`]), a clock read on every `holds()`. A leader whose renewals
//!   fail or hang closes it by itself before anyone else may take the Lease, and is lost.
//! - fast takeover: kube-lease-manager's follower sleeps until the expiry it last read, so a
//!   follower also looks at the Lease every `poll`; once it is free (a leader shut down
//!   cleanly) the same manager reads it again and takes it at once.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use kube::Client;
use kube_lease_manager::LeaseManager;
use tokio::{task::JoinHandle, time::timeout};
use tracing::{info, warn};

pub use self::gate::{Claim, Gate, LeaseSettings, may_act, remaining};
use crate::metrics::Metrics;

mod claim;
mod gate;

/// Leader election for this process: the gate and the campaign that keeps it.
pub struct Leader {
    gate: Arc<Gate>,
    manager: Arc<OnceLock<LeaseManager>>,
    campaign: Option<JoinHandle<()>>,
}

impl Leader {
    /// No election: the gate is always open (one replica only).
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        let gate = Arc::new(Gate::always_open(metrics));
        Self {
            gate,
            manager: Arc::default(),
            campaign: None,
        }
    }

    /// Starts campaigning for the Lease in the background.
    pub fn start(client: Client, settings: LeaseSettings, metrics: Arc<Metrics>) -> Self {
        let lease = Duration::from_secs(settings.duration_seconds);
        let gate = Arc::new(Gate::new(metrics, lease, Claim::default()));
        let manager: Arc<OnceLock<LeaseManager>> = Arc::default();
        info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, duration_seconds = settings.duration_seconds, "campaigning for the leader Lease");
        let task = tokio::spawn(claim::campaign(
            client,
            settings,
            gate.clone(),
            manager.clone(),
        ));
        Self {
            gate,
            manager,
            campaign: Some(task),
        }
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Resolves once this replica has led and lost the Lease (it could not renew it in time,
    /// or another replica holds it now): only the campaign closes the fence before `release`.
    pub async fn lost(&self) {
        let _ = self.gate.claim.subscribe().wait_for(|c| c.closed).await;
    }

    /// Closes the fence, then gives the Lease up (if held) so the next leader starts at
    /// once, waiting at most `limit` for the API server.
    pub async fn release(self, limit: Duration) {
        self.gate.close();
        self.campaign.inspect(JoinHandle::abort);
        let Some(manager) = self.manager.get() else {
            return;
        };
        match timeout(limit, manager.release()).await {
            Ok(Ok(())) => info!("released the leader Lease"),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot release the leader Lease; it expires by itself")
            }
            Err(_) => warn!(
                ?limit,
                "releasing the leader Lease timed out; it expires by itself"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
