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
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kube::Client;
use kube_lease_manager::LeaseManager;
use tokio::{sync::watch, task::JoinHandle, time::timeout};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The fence closes this long before the Lease expires as others see it (clock skew).
const SKEW: Duration = Duration::from_secs(1);
/// Pause after a failed Lease request, before the next one.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Where the Lease is and who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// leaseDurationSeconds (at least 3).
    pub duration_seconds: u64,
}

impl LeaseSettings {
    /// How long before expiry the holder renews: half the duration, rounded up.
    pub fn grace_seconds(&self) -> u64 {
        self.duration_seconds.div_ceil(2)
    }

    /// How often a follower looks at the Lease; also the bound of one look.
    pub fn poll(&self) -> Duration {
        (Duration::from_secs(self.duration_seconds) / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
}

/// This replica's claim on the Lease: what the fence is derived from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// kube-lease-manager reports this replica as the holder.
    pub elected: bool,
    /// When the last Lease write that the API server accepted was sent.
    pub renewed: Option<Instant>,
    /// Closed for good: the process is releasing the Lease or has lost it.
    pub closed: bool,
}

/// How much longer a replica with `claim` may act at `now`, the Lease binding its holder for
/// `lease` after each renewal: `None` unless elected, not closed, and more than the skew
/// margin left.
pub fn remaining(claim: &Claim, now: Instant, lease: Duration) -> Option<Duration> {
    if claim.closed || !claim.elected {
        return None;
    }
    let age = now.saturating_duration_since(claim.renewed?);
    lease
        .checked_sub(SKEW)?
        .checked_sub(age)
        .filter(|d| !d.is_zero())
}

/// Whether a replica with `claim` may call Redis or write status at `now`.
pub fn may_act(claim: &Claim, now: Instant, lease: Duration) -> bool {
    remaining(claim, now, lease).is_some()
}

/// What the controller asks before each batch, page and status write.
pub struct Gate {
    claim: watch::Sender<Claim>,
    lease: Duration,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Gate {
    fn new(metrics: Arc<Metrics>, lease: Duration, claim: Claim) -> Self {
        let (claim, draining) = (watch::channel(claim).0, AtomicBool::new(false));
        let gate = Self {
            claim,
            lease,
            draining,
            metrics,
        };
        gate.update(|_| {});
        gate
    }

    /// A gate that is always open (leader election off): a single replica.
    pub fn always_open(metrics: Arc<Metrics>) -> Self {
        let forever = Duration::from_secs(100 * 365 * 24 * 3600);
        let renewed = Some(Instant::now());
        Self::new(
            metrics,
            forever,
            Claim {
                elected: true,
                renewed,
                closed: false,
            },
        )
    }

    /// Whether this replica holds the Lease now and may call Redis or write status.
    pub fn holds(&self) -> bool {
        may_act(&self.claim.borrow(), Instant::now(), self.lease)
    }

    /// Whether a running slice should end after its current batch: the Lease is gone or the
    /// process is shutting down.
    pub fn should_pause(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || !self.holds()
    }

    /// The process is shutting down: running slices end after their current batch.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Closes the fence for good: from now on nothing calls Redis or writes status.
    pub fn close(&self) {
        self.update(|c| c.closed = true);
    }

    /// Yields each time this replica starts to lead (and at first if it leads already): the
    /// controller then reconciles every object.
    pub fn acquired(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let (mut rx, lease) = (self.claim.subscribe(), self.lease);
        rx.mark_changed();
        futures::stream::unfold((rx, false), move |(mut rx, mut led)| async move {
            loop {
                rx.changed().await.ok()?;
                let was = std::mem::replace(
                    &mut led,
                    may_act(&rx.borrow_and_update(), Instant::now(), lease),
                );
                if led && !was {
                    return Some(((), (rx, led)));
                }
            }
        })
    }

    fn claim(&self) -> Claim {
        *self.claim.borrow()
    }

    /// Changes the claim, and sets the `jobretry_leader` gauge to what it allows now.
    fn update(&self, f: impl FnOnce(&mut Claim)) {
        self.claim.send_modify(f);
        self.metrics.set_leader(self.holds());
    }

    /// Records a Lease write the API server accepted, sent at `sent`.
    fn renewed(&self, sent: Instant) {
        self.update(|c| c.renewed = c.renewed.max(Some(sent)));
    }
}

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

mod claim;
#[cfg(test)]
mod tests;
