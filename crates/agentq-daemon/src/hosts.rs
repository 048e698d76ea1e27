//! Several daemons, one queue: which daemon runs which named worker.
//!
//! On a shared store (PostgreSQL) every daemon has a host id (`[daemon] host`, `run --host`, the
//! machine's name by default), announced with [`Store::join_host`], which refuses a second live
//! daemon under the same id. Pool tasks run on any daemon with room (`[pool] max_workers` is per
//! daemon). A named worker runs on one daemon at a time: its runner first takes the worker's lease
//! ([`Leases::hold`]), and the claim query itself refuses a worker whose lease row names another
//! owner (live, lapsed or released), so a daemon that lost a lease (it stalled past the lease)
//! cannot claim for it again before it takes the lease again, which records the move.
//! [`Leases::keep`] renews the host row and every held lease each third of the lease; a clean
//! shutdown releases them, ringing the worker, so another host takes it over at once; a killed
//! daemon's leases lapse. A runner that finds its worker held elsewhere sleeps until that lease
//! would expire, or until a ring for the worker (a release) wakes it.
//!
//! A worker that moves to another host has a conversation in the old host's Claude session store
//! (`~/.claude`). Unless `[daemon] shared_sessions` says every host reads the same store, the new
//! host forgets it and starts a new one (`session_reset`, naming both hosts). Command workers have
//! no conversation: their move is only recorded (`worker_moved`, as for every move).
//!
//! A worker pinned with `host = "name"` is never leased by a daemon of another host id, nor its
//! tasks taken by that daemon's pool. On SQLite (one daemon) none of this runs: the lease is
//! trivially the daemon's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::WorkerConfig;
use crate::daemon::Shutdown;
use agentq_store::{LeaseTake, Store, now_ms};

/// The worker leases of one daemon run.
pub struct Leases {
    pub store: Arc<dyn Store>,
    pub host: String,
    pub owner: String,
    pub lease: Duration,
    /// Every host's Claude reads one session store: a moved worker resumes its conversation.
    pub shared_sessions: bool,
    /// The workers this run holds, as far as it knows (the claim query has the last word), with
    /// when each was taken.
    held: Mutex<HashMap<String, Instant>>,
}

impl Leases {
    pub fn new(
        store: Arc<dyn Store>,
        host: String,
        owner: String,
        lease: Duration,
        shared_sessions: bool,
    ) -> Leases {
        Leases {
            store,
            host,
            owner,
            lease,
            shared_sessions,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this run holds `worker`'s lease (as of its last renewal).
    pub fn holds(&self, worker: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(worker)
    }

    /// Returns once this daemon holds `worker` (true), or when stopping (false). While another
    /// daemon holds it, sleeps until that lease would expire or until `wake` rings.
    pub async fn hold(
        &self,
        worker: &WorkerConfig,
        wake: &Notify,
        stopping: &CancellationToken,
    ) -> bool {
        let name = &worker.name;
        let mut logged = None;
        loop {
            if stopping.is_cancelled() {
                return false;
            }
            if self.holds(name) {
                return true;
            }
            let wait = match self
                .store
                .take_worker_lease(name, &self.host, &self.owner, now_ms(), self.lease)
                .await
            {
                Ok(LeaseTake::Held { moved_from }) => {
                    self.held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), Instant::now());
                    match moved_from {
                        Some(from) => {
                            info!(worker = %name, "took the worker over from host {from}");
                            self.moved(worker, &from).await;
                        }
                        None => info!(worker = %name, "holds the worker"),
                    }
                    return true;
                }
                Ok(LeaseTake::Busy {
                    host, expires_in, ..
                }) => {
                    if logged.as_ref() != Some(&host) {
                        info!(worker = %name, "runs on host {host}; taking it over if that lease lapses");
                        logged = Some(host);
                    }
                    // A little past the expiry, so the holder's last renewal has surely failed.
                    expires_in + Duration::from_millis(20)
                }
                Err(e) => {
                    warn!(worker = %name, "cannot take the worker's lease: {e}; trying again in 1s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = stopping.cancelled() => return false,
            }
        }
    }

    /// The worker came from `from`: its conversation stays there unless sessions are shared.
    async fn moved(&self, worker: &WorkerConfig, from: &str) {
        let driver = worker.agent.driver();
        if self.shared_sessions || driver.conversation().is_none() {
            return;
        }
        let agent = driver.name();
        let agent = agent[..1].to_uppercase() + &agent[1..];
        let why = format!(
            "worker moved from host {from} to host {}, and {agent}'s session store is not shared between hosts ([daemon] shared_sessions)",
            self.host
        );
        if let Err(e) = self
            .store
            .reset_worker_session(&worker.name, &why, now_ms())
            .await
        {
            // Then the resume fails on this host, and that attempt starts a new conversation.
            warn!(worker = %worker.name, "cannot reset the worker's session: {e}");
        }
    }

    /// Gives `worker` up (a clean shutdown): another daemon takes it at once.
    pub async fn release(&self, worker: &str) {
        let was = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(worker);
        if was.is_none() {
            return;
        }
        if let Err(e) = self
            .store
            .release_worker_lease(worker, &self.owner, now_ms())
            .await
        {
            warn!(worker = %worker, "cannot release the worker's lease: {e}; another daemon takes it when it expires");
        }
    }

    /// Renews the host row and the held leases every third of the lease, until `stop`; a lease
    /// found lost is forgotten, so its runner asks again before it claims. The host id is held
    /// too: a broken connection holding it is replaced ([`Store::hold_host`]). If another daemon
    /// took the id meanwhile, it has recovered this run's tasks and may run its workers: this run
    /// stops at once (`shutdown`, stopping and hurrying) and the error is returned.
    pub async fn keep(
        self: Arc<Self>,
        stop: CancellationToken,
        shutdown: Shutdown,
    ) -> Result<(), agentq_core::error::Error> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.lease / 3) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            // Renewed first: taking the host id again may wait on a slow connection.
            let asked = Instant::now();
            match self
                .store
                .renew_leases(&self.host, &self.owner, now_ms(), self.lease)
                .await
            {
                Ok(renewed) => {
                    let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                    // One taken while the renewal ran may not be in its answer.
                    let lost: Vec<String> = held
                        .iter()
                        .filter(|(w, taken)| **taken < asked && !renewed.contains(w))
                        .map(|(w, _)| w.clone())
                        .collect();
                    for w in lost {
                        warn!(worker = %w, "lost the worker's lease: another daemon took it (this one was not renewed in time)");
                        held.remove(&w);
                    }
                }
                Err(e) => warn!("cannot renew this daemon's leases: {e}"),
            }
            match self.store.hold_host(&self.host).await {
                Ok(false) => {}
                Ok(true) => {
                    info!(host = %self.host, "took this daemon's host id again on a new connection")
                }
                Err(e @ agentq_core::error::Error::HostInUse { .. }) => {
                    error!(
                        "lost this daemon's host id: {e}; stopping its agents now (their tasks were taken back by the other daemon)"
                    );
                    self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    shutdown.stopping.cancel();
                    shutdown.hurry.cancel();
                    return Err(e);
                }
                Err(e) => warn!(
                    "cannot take this daemon's host id again: {e}; trying again in {:?}",
                    self.lease / 3
                ),
            }
        }
    }
}
