//! Leader election on a `coordination.k8s.io` Lease, and the fence every Redis call and status
//! write of a run passes.
//!
//! Every replica watches JobRetries (so followers are ready once their cache has synced), but
//! only the replica holding the Lease runs retries. Taking, renewing and releasing the Lease is
//! kube-lease-manager's; this module adds what a fenced writer needs on top of it:
//!
//! - its own look at the Lease every `poll` (a GET bounded by a timeout). The fence is open
//!   only while the last successful look showed this replica as the holder and the Lease, as
//!   others will judge it (renewTime + leaseDurationSeconds), has not expired, minus a margin
//!   for clock skew. A leader cut off from the API server therefore closes its fence by
//!   itself before anyone else may take the Lease, without waiting to be told.
//! - fast takeover: kube-lease-manager's follower sleeps until the Lease's expiry; when the
//!   look shows the Lease released (a leader that shut down cleanly), the follower starts a
//!   fresh manager, which takes it at once.
//! - a [`Gate`] for the controller: `holds()` before every batch/page and status write;
//!   `should_pause()` also ends a slice early when the process drains on SIGTERM.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use tokio::{sync::watch, task::JoinHandle, time::timeout};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Margin for clock skew between this replica and the others: the fence closes this long
/// before the Lease expires as others see it.
const SKEW: Duration = Duration::from_secs(1);
/// Pause after a failed attempt to set up the lease manager.
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
    /// How long before expiry the holder renews: half the duration (rounded up), so a
    /// renewal has that long to get through and be seen before the fence closes.
    pub fn grace_seconds(&self) -> u64 {
        self.duration_seconds.div_ceil(2)
    }

    /// How often this replica looks at the Lease; also the bound of one look.
    pub fn poll(&self) -> Duration {
        (Duration::from_secs(self.duration_seconds) / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
}

/// What one look at the Lease showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<SystemTime>,
    pub duration: Option<Duration>,
}

impl LeaseView {
    pub fn of(lease: &Lease) -> Self {
        let Some(spec) = &lease.spec else {
            return Self::default();
        };
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renewed: spec.renew_time.as_ref().map(|t| SystemTime::from(t.0)),
            duration: spec
                .lease_duration_seconds
                .and_then(|d| u64::try_from(d).ok())
                .map(Duration::from_secs),
        }
    }

    /// When the Lease stops binding its holder, as every replica judges it.
    fn expiry(&self) -> Option<SystemTime> {
        self.renewed?.checked_add(self.duration?)
    }
}

/// How much longer `me` may act as leader according to `view`, looked at (wall clock) `now`:
/// `None` unless `me` holds the Lease and it has more than the skew margin left.
pub fn remaining(view: &LeaseView, me: &str, now: SystemTime) -> Option<Duration> {
    if view.holder.as_deref() != Some(me) {
        return None;
    }
    let left = view.expiry()?.duration_since(now).ok()?;
    left.checked_sub(SKEW).filter(|d| !d.is_zero())
}

/// Whether nobody holds the Lease at `now`: released, never taken, or expired.
pub fn is_free(view: &LeaseView, now: SystemTime) -> bool {
    view.holder.is_none() || view.expiry().is_none_or(|e| e <= now)
}

/// The fence's state; [`may_act`] is its decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceState {
    /// kube-lease-manager reports this replica as the holder.
    pub elected: bool,
    /// Until when the last look at the Lease lets this replica act.
    pub valid_until: Option<Instant>,
    /// Closed for good: the process is releasing the Lease or has lost it.
    pub closed: bool,
}

/// Whether a replica in `state` may call Redis or write status at `now`.
pub fn may_act(state: &FenceState, now: Instant) -> bool {
    !state.closed && state.elected && state.valid_until.is_some_and(|t| now < t)
}

/// What the controller asks before each batch, page and status write.
pub struct Gate {
    fence: Mutex<FenceState>,
    draining: AtomicBool,
    /// Whether this replica may act, as last published (for `acquired` and the gauge).
    leading: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Gate {
    fn new(metrics: Arc<Metrics>, state: FenceState) -> Self {
        let gate = Self {
            fence: Mutex::new(state),
            draining: AtomicBool::new(false),
            leading: watch::channel(false).0,
            metrics,
        };
        gate.publish();
        gate
    }

    /// A gate that is always open (leader election off): a single replica.
    pub fn always_open(metrics: Arc<Metrics>) -> Self {
        let forever = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        Self::new(
            metrics,
            FenceState {
                elected: true,
                valid_until: Some(forever),
                closed: false,
            },
        )
    }

    /// Whether this replica holds the Lease now and may call Redis or write status.
    pub fn holds(&self) -> bool {
        may_act(&self.state(), Instant::now())
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
        self.update(|s| s.closed = true);
    }

    /// A stream that yields each time this replica starts to lead (and once at first if it
    /// leads already): the controller then reconciles every object.
    pub fn acquired(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let mut rx = self.leading.subscribe();
        rx.mark_changed();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }

    fn state(&self) -> FenceState {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut FenceState)) {
        f(&mut self.fence.lock().unwrap_or_else(|e| e.into_inner()));
        self.publish();
    }

    /// Publishes whether this replica leads now, to `acquired` and the `jobretry_leader` gauge.
    fn publish(&self) {
        let now = self.holds();
        self.metrics.set_leader(now);
        self.leading
            .send_if_modified(|l| std::mem::replace(l, now) != now);
    }
}

/// Leader election for this process: the gate and the tasks that keep it.
pub struct Leader {
    gate: Arc<Gate>,
    manager: Arc<Mutex<Option<Arc<LeaseManager>>>>,
    tasks: Vec<JoinHandle<()>>,
    lost: watch::Receiver<bool>,
}

impl Leader {
    /// No election: the gate is always open (one replica only).
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self {
            gate: Arc::new(Gate::always_open(metrics)),
            manager: Arc::default(),
            tasks: Vec::new(),
            lost: watch::channel(false).1,
        }
    }

    /// Starts campaigning for the Lease in the background.
    pub fn start(client: Client, settings: LeaseSettings, metrics: Arc<Metrics>) -> Self {
        let gate = Arc::new(Gate::new(metrics, FenceState::default()));
        let manager: Arc<Mutex<Option<Arc<LeaseManager>>>> = Arc::default();
        let (view_tx, view_rx) = watch::channel(LeaseView::default());
        let (lost_tx, lost) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
        info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, duration_seconds = settings.duration_seconds, "campaigning for the leader Lease");
        let observer = tokio::spawn(observe(
            api,
            settings.clone(),
            gate.clone(),
            view_tx,
            lost_tx.clone(),
        ));
        let campaign = tokio::spawn(campaign(
            client,
            settings,
            gate.clone(),
            manager.clone(),
            view_rx,
            lost_tx,
        ));
        Self {
            gate,
            manager,
            tasks: vec![observer, campaign],
            lost,
        }
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Resolves once this replica has led and lost the Lease (it could not renew it in time,
    /// or another replica holds it now).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|l| *l).await;
        // With election off the sender is gone at once: never resolve then.
        if !*rx.borrow() {
            std::future::pending::<()>().await;
        }
    }

    /// Closes the fence, then gives the Lease up (if held) so the next leader starts at
    /// once, waiting at most `limit` for the API server.
    pub async fn release(self, limit: Duration) {
        self.gate.close();
        for t in &self.tasks {
            t.abort();
        }
        let manager = self
            .manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(manager) = manager else { return };
        match timeout(limit, manager.release()).await {
            Ok(Ok(())) => info!("released the leader Lease"),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot release the leader Lease; it expires by itself")
            }
            Err(_) => {
                warn!(
                    ?limit,
                    "releasing the leader Lease timed out; it expires by itself"
                )
            }
        }
    }
}

/// Looks at the Lease every `poll`: keeps the fence's validity, tells the campaign when the
/// Lease is free, and reports a lost lead.
async fn observe(
    api: Api<Lease>,
    settings: LeaseSettings,
    gate: Arc<Gate>,
    views: watch::Sender<LeaseView>,
    lost: watch::Sender<bool>,
) {
    let poll = settings.poll();
    let mut led = false;
    loop {
        let asked = Instant::now();
        if let Some(view) = look(&api, &settings, &gate).await {
            views.send_replace(view);
        }
        gate.publish();
        let leads = gate.holds();
        if led && !leads && !gate.state().closed {
            warn!(lease = %settings.name, "lost the leader Lease: stopping before the next Redis call");
            gate.close();
            lost.send_replace(true);
            return;
        }
        led |= leads;
        tokio::time::sleep(poll.saturating_sub(asked.elapsed())).await;
    }
}

/// One look at the Lease (bounded by `poll`): sets how long the fence stays open.
async fn look(api: &Api<Lease>, settings: &LeaseSettings, gate: &Gate) -> Option<LeaseView> {
    let asked = Instant::now();
    let wall = SystemTime::now();
    match timeout(settings.poll(), api.get_opt(&settings.name)).await {
        Ok(Ok(lease)) => {
            let view = lease.as_ref().map(LeaseView::of).unwrap_or_default();
            let until = remaining(&view, &settings.identity, wall).map(|d| asked + d);
            gate.update(|s| s.valid_until = until);
            Some(view)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read the leader Lease");
            None
        }
        Err(_) => {
            tracing::debug!("reading the leader Lease timed out");
            None
        }
    }
}

/// Runs kube-lease-manager: takes the Lease when it is free, renews it while held.
async fn campaign(
    client: Client,
    settings: LeaseSettings,
    gate: Arc<Gate>,
    slot: Arc<Mutex<Option<Arc<LeaseManager>>>>,
    mut views: watch::Receiver<LeaseView>,
    lost: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let params = LeaseParams::new(
        settings.identity.clone(),
        settings.duration_seconds,
        settings.grace_seconds(),
    );
    loop {
        let built = timeout(
            settings.poll() * 5,
            LeaseManager::new(
                client.clone(),
                &settings.name,
                &settings.namespace,
                params.clone(),
                LeaseCreateMode::AutoCreate,
            ),
        )
        .await;
        let manager = match built {
            Ok(Ok(m)) => Arc::new(m),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot set up the leader Lease; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(_) => {
                warn!("setting up the leader Lease timed out; trying again");
                continue;
            }
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(manager.clone());
        let mut was_free = is_free(&views.borrow_and_update(), SystemTime::now());
        loop {
            let elected = gate.state().elected;
            tokio::select! {
                changed = manager.changed() => match changed {
                    Ok(true) => {
                        info!(identity = %settings.identity, "took the leader Lease");
                        gate.update(|s| s.elected = true);
                        // Open the fence now rather than at the observer's next look.
                        look(&api, &settings, &gate).await;
                    }
                    Ok(false) => {
                        gate.update(|s| s.elected = false);
                        if elected {
                            warn!("kube-lease-manager reports the leader Lease lost");
                            gate.close();
                            lost.send_replace(true);
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "leader Lease request failed; trying again");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                },
                seen = views.changed(), if !elected => {
                    if seen.is_err() {
                        return;
                    }
                    let free = is_free(&views.borrow_and_update(), SystemTime::now());
                    let newly = free && !was_free;
                    was_free = free;
                    // kube-lease-manager's follower sleeps until the expiry it last saw; a
                    // fresh manager reads the released Lease and takes it now.
                    if newly {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        holder: Option<&str>,
        renewed_secs_ago: u64,
        duration: u64,
        now: SystemTime,
    ) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_string),
            renewed: Some(now - Duration::from_secs(renewed_secs_ago)),
            duration: Some(Duration::from_secs(duration)),
        }
    }

    #[test]
    fn the_holder_may_act_until_the_lease_expires_minus_the_skew_margin() {
        let now = SystemTime::now();
        assert_eq!(
            remaining(&view(Some("a"), 2, 10, now), "a", now),
            Some(Duration::from_secs(7))
        );
        // Another holder, or none: never.
        assert_eq!(remaining(&view(Some("b"), 0, 10, now), "a", now), None);
        assert_eq!(remaining(&view(None, 0, 10, now), "a", now), None);
        // Within the margin of expiry, or past it: no longer.
        assert_eq!(remaining(&view(Some("a"), 9, 10, now), "a", now), None);
        assert_eq!(remaining(&view(Some("a"), 30, 10, now), "a", now), None);
        // A Lease without renewTime binds nobody.
        let bare = LeaseView {
            holder: Some("a".into()),
            ..LeaseView::default()
        };
        assert_eq!(remaining(&bare, "a", now), None);
    }

    #[test]
    fn a_lease_is_free_when_released_or_expired() {
        let now = SystemTime::now();
        assert!(is_free(&LeaseView::default(), now));
        assert!(is_free(&view(None, 0, 10, now), now));
        assert!(is_free(&view(Some("b"), 11, 10, now), now));
        assert!(!is_free(&view(Some("b"), 3, 10, now), now));
    }

    #[test]
    fn the_fence_opens_only_for_an_elected_unexpired_open_holder() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let open = FenceState {
            elected: true,
            valid_until: Some(later),
            closed: false,
        };
        assert!(may_act(&open, now));
        assert!(!may_act(&open, later), "expired at valid_until");
        assert!(!may_act(
            &FenceState {
                closed: true,
                ..open
            },
            now
        ));
        assert!(!may_act(
            &FenceState {
                elected: false,
                ..open
            },
            now
        ));
        assert!(!may_act(
            &FenceState {
                valid_until: None,
                ..open
            },
            now
        ));
    }

    #[test]
    fn renewal_and_polling_fit_inside_the_lease() {
        for d in [3, 4, 5, 15, 60, 300] {
            let s = LeaseSettings {
                name: "l".into(),
                namespace: "n".into(),
                identity: "i".into(),
                duration_seconds: d,
            };
            let renew_every = Duration::from_secs(d - s.grace_seconds());
            // The holder renews and a look sees it before its fence closes.
            assert!(
                renew_every + s.poll() * 2 < Duration::from_secs(d) - SKEW,
                "duration {d}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_gate_stays_closed_and_tells_slices_to_pause() {
        let gate = Gate::always_open(Arc::new(Metrics::default()));
        assert!(gate.holds() && !gate.should_pause());
        gate.start_draining();
        assert!(gate.holds() && gate.should_pause());
        gate.close();
        assert!(!gate.holds());
        gate.update(|s| s.elected = true);
        assert!(!gate.holds(), "closing is for good");
    }
}
