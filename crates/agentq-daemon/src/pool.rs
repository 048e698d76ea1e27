//! The ephemeral pool: tasks that run in a fresh, isolated agent process each, up to
//! `[pool] max_workers` at once.
//!
//! The pool keeps no queue either: it claims from the store (`Store::claim_pool`, whose running
//! limit is checked in the same statement that claims), and hands each claim to a pool [`Runner`]
//! for the task's worker — the pool's own settings for worker `pool`, else that worker's, with the
//! pool's `max_memory` where the worker sets none. A pool runner never touches the worker's
//! long-lived process or its conversation: Claude runs in exec mode with a new session id, recorded
//! on the task only. Each attempt is its own tokio task with its own process group, watchdogs and
//! fenced finish, so a task that crashes, hangs or outgrows its memory is stopped alone.
//!
//! With nothing to claim, or every slot taken, it sleeps until rung (a submit, a cancel, intake),
//! until an attempt ends, or until its earliest retry is due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::worker::Runner;
use agentq_store::{Store, now_ms};

pub struct Pool {
    /// One pool runner per worker whose tasks may run here, and one for `pool` itself.
    pub runners: HashMap<String, Arc<Runner>>,
    pub store: Arc<dyn Store>,
    pub owner: String,
    pub max_workers: u32,
    pub lease: Duration,
    /// Rung when the pool may have new work.
    pub wake: Arc<Notify>,
    /// Told when a claim (and so a lease) starts, for the lease keeper.
    pub leased: Arc<Notify>,
    pub stopping: CancellationToken,
    /// Room on the disk: no claim while `.agentq/` or `.output/` is full.
    pub space: Arc<crate::space::Space>,
}

impl Pool {
    pub async fn run(self) {
        let names: Vec<String> = self.runners.keys().cloned().collect();
        let mut running: JoinSet<()> = JoinSet::new();
        let mut pause = Duration::from_millis(100);
        while !self.stopping.is_cancelled() {
            let room = running.len() < self.max_workers as usize;
            // A full disk pauses claiming; running attempts go on.
            let paused = room && !self.space.may_claim().await;
            if room && !paused {
                let claimed = self
                    .store
                    .claim_pool(&self.owner, now_ms(), self.lease, self.max_workers, &names)
                    .await;
                match claimed {
                    Ok(Some(claim)) => {
                        pause = Duration::from_millis(100);
                        self.leased.notify_one();
                        let runner = self.runners[&claim.task.worker].clone();
                        running.spawn(async move { runner.attempt(claim).await });
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) if e.is_storage_full() => {
                        self.space.hit(&e).await;
                        continue;
                    }
                    Err(e) => {
                        error!("cannot claim a pool task: {e}; trying again in {pause:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.stopping.cancelled() => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            // A full pool looks again when an attempt ends; one with room, when a task is due.
            let nap = match room && !paused {
                true => self.nap(&names).await,
                false => None,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = joined {
                        error!("a pool task failed: {e}");
                    }
                }
                _ = async { tokio::time::sleep(nap.unwrap_or_default()).await }, if nap.is_some() => {}
                _ = self.space.room(), if paused => {}
                _ = self.stopping.cancelled() => {}
            }
        }
        // Running attempts finish, or are stopped and given back when the daemon hurries.
        while let Some(joined) = running.join_next().await {
            if let Err(e) = joined {
                error!("a pool task failed: {e}");
            }
        }
    }

    /// How long until the earliest queued pool task is due; `None` with none queued.
    async fn nap(&self, names: &[String]) -> Option<Duration> {
        let due = match self.store.next_due_pool(names).await {
            Ok(due) => due,
            Err(e) => {
                warn!("cannot read the pool's queue: {e}");
                Some(now_ms() + (self.lease / 3).as_millis() as i64)
            }
        };
        due.map(|t| {
            let ms = t - now_ms();
            // Due yet not claimed: the running limit counts another daemon's tasks too.
            let nap = if ms <= 0 {
                self.lease / 3
            } else {
                Duration::from_millis(ms as u64)
            };
            // A pause may run for days: look now and then anyway.
            nap.min(Duration::from_secs(3600))
        })
    }
}
