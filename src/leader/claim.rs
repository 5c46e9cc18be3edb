//! The one loop that keeps this replica's [`Claim`]: it runs kube-lease-manager, learns from
//! the manager's own client when each Lease write got through, and, while following, looks
//! for a Lease set free.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use axum::http::{Method, Request};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, api::PostParams, client::Body};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use super::gate::{Gate, LeaseSettings, RETRY_PAUSE, remaining};

/// Whether nobody holds `lease` at `now`: released, never taken, or expired.
pub fn is_free(lease: &Lease, now: SystemTime) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let renewed = spec.renew_time.as_ref().map(|t| SystemTime::from(t.0));
    let duration = spec
        .lease_duration_seconds
        .and_then(|d| u64::try_from(d).ok());
    let expiry = renewed
        .zip(duration)
        .and_then(|(r, d)| r.checked_add(Duration::from_secs(d)));
    spec.holder_identity.as_deref().is_none_or(str::is_empty) || expiry.is_none_or(|e| e <= now)
}

/// `client`, calling `on_write` with the instant each PATCH was sent once the API server has
/// accepted it. kube-lease-manager's PATCHes take and renew the Lease, stamping renewTime just
/// before: the Lease expires for others no later than its duration after that instant.
pub(super) fn stamping(
    client: Client,
    on_write: impl Fn(Instant) + Clone + Send + 'static,
) -> Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: Request<Body>| {
        let (client, on_write) = (client.clone(), on_write.clone());
        async move {
            let (write, sent) = (request.method() == Method::PATCH, Instant::now());
            let response = client.send(request).await?;
            if write && response.status().is_success() {
                on_write(sent);
            }
            Ok::<_, kube::Error>(response)
        }
    });
    Client::new(service, namespace)
}

/// The one loop: runs kube-lease-manager and keeps the claim.
pub(super) async fn campaign(
    client: Client,
    settings: LeaseSettings,
    gate: Arc<Gate>,
    slot: Arc<OnceLock<LeaseManager>>,
) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let stamps = gate.clone();
    let client = stamping(client, move |sent| stamps.renewed(sent));
    let built = build(client, &settings).await;
    let manager = slot.get_or_init(|| built);
    let mut pause = Duration::ZERO;
    loop {
        let wait = std::mem::take(&mut pause);
        match next_change(manager, &api, &settings, &gate, wait).await {
            Some(Ok(true)) => {
                info!(identity = %settings.identity, "took the leader Lease");
                gate.update(|c| c.elected = true);
            }
            Some(Ok(false)) if gate.claim().elected => {
                warn!(lease = %settings.name, "lost the leader Lease: stopping before the next Redis call");
                return gate.update(|c| (c.elected, c.closed) = (false, true));
            }
            Some(Ok(false)) => {}
            Some(Err(e)) => {
                warn!(error = %e, "leader Lease request failed; trying again");
                pause = RETRY_PAUSE;
            }
            // The manager, holding nothing, only reads the Lease again: its next `changed()`
            // takes it now rather than at the expiry it last read.
            None => match timeout(settings.poll(), manager.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "cannot read the free leader Lease"),
                Err(_) => debug!("reading the free leader Lease timed out"),
            },
        }
    }
}

/// Waits (after `pause`) for kube-lease-manager's next change of holder, as it takes or renews
/// the Lease. Meanwhile, if elected, watches the fence's deadline: its passing is a loss too
/// (`Ok(false)`); if following, looks for a free Lease every `poll` (`None`).
async fn next_change(
    manager: &LeaseManager,
    api: &Api<Lease>,
    settings: &LeaseSettings,
    gate: &Gate,
    pause: Duration,
) -> Option<kube_lease_manager::Result<bool>> {
    let changed = async {
        sleep(pause).await;
        manager.changed().await
    };
    tokio::pin!(changed);
    loop {
        let claim = gate.claim();
        let left = remaining(&claim, Instant::now(), gate.lease);
        tokio::select! {
            changed = &mut changed => return Some(changed),
            () = sleep(left.unwrap_or_default()), if claim.elected => if left.is_none() {
                return Some(Ok(false));
            },
            () = sleep(settings.poll()), if !claim.elected => if look_free(api, settings).await {
                return None;
            },
        }
    }
}

/// Sets up kube-lease-manager on the Lease (creating it if missing), trying until it works.
async fn build(client: Client, settings: &LeaseSettings) -> LeaseManager {
    let (name, namespace) = (&settings.name, &settings.namespace);
    let params = LeaseParams::new(
        &settings.identity,
        settings.duration_seconds,
        settings.grace_seconds(),
    );
    loop {
        let made = LeaseManager::new(
            client.clone(),
            name,
            namespace,
            params.clone(),
            LeaseCreateMode::AutoCreate,
        );
        match timeout(settings.poll() * 5, made).await {
            Ok(Ok(manager)) => return manager,
            Ok(Err(e)) => warn!(error = %e, "cannot set up the leader Lease; trying again"),
            Err(_) => warn!("setting up the leader Lease timed out; trying again"),
        }
        sleep(RETRY_PAUSE).await;
    }
}

/// One look at the Lease (each request bounded by `poll`): whether it is free. A Lease deleted
/// since is created again, empty, for kube-lease-manager to take.
async fn look_free(api: &Api<Lease>, settings: &LeaseSettings) -> bool {
    let looked = timeout(settings.poll(), api.get_opt(&settings.name)).await;
    match looked
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(Some(lease)) => is_free(&lease, SystemTime::now()),
        Ok(None) => {
            let mut lease = Lease::default();
            lease.metadata.name = Some(settings.name.clone());
            let params = PostParams::default();
            let created = timeout(settings.poll(), api.create(&params, &lease)).await;
            matches!(created, Ok(Ok(_)))
        }
        Err(e) => {
            debug!(error = %e, "cannot read the leader Lease");
            false
        }
    }
}
