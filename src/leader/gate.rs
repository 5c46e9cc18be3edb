//! This replica's claim on the Lease and the fence derived from it (see the `leader` module).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::metrics::Metrics;

/// The fence closes this long before the Lease expires as others see it (clock skew).
pub(super) const SKEW: Duration = Duration::from_secs(1);
/// Pause after a failed Lease request, before the next one.
pub(super) const RETRY_PAUSE: Duration = Duration::from_secs(1);

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
    pub(super) claim: watch::Sender<Claim>,
    pub(super) lease: Duration,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub(super) fn new(metrics: Arc<Metrics>, lease: Duration, claim: Claim) -> Self {
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

    pub(super) fn claim(&self) -> Claim {
        *self.claim.borrow()
    }

    /// Changes the claim, and sets the `jobretry_leader` gauge to what it allows now.
    pub(super) fn update(&self, f: impl FnOnce(&mut Claim)) {
        self.claim.send_modify(f);
        self.metrics.set_leader(self.holds());
    }

    /// Records a Lease write the API server accepted, sent at `sent`.
    pub(super) fn renewed(&self, sent: Instant) {
        self.update(|c| c.renewed = c.renewed.max(Some(sent)));
    }
}
