//! Room on the disk: the daemon claims no task while the file system under `.agentq/` (the
//! database, the logs) or `.output/` (the results) is full, and resumes by itself when there is
//! room again. No task is lost to a full disk, and none is done without its output files.
//!
//! # How it works
//!
//! Two signals say the disk is full. The soft one: before a claim, at most once per
//! [`LOOK_EVERY`], the free space of both folders' file systems is read (statvfs;
//! `GetDiskFreeSpaceExW` on Windows), and less than [`needed`] (`[daemon] min_free_space`, never
//! under [`FLOOR`]) is full. The hard one: a write on a task's path failed with ENOSPC, EDQUOT or
//! SQLITE_FULL ([`agentq_core::error::Error::is_storage_full`]): the output files, written inside
//! the transaction that records a result (which is then undone, and the runner gives the task
//! back, its attempt not spent), or a claim's or a result's commit.
//!
//! Either one pauses claiming (`Space::pause`): one `disk_full` event (the folder, its free bytes,
//! what is needed and what to do) and an error in the daemon's log. Runners and the pool wait in
//! [`Space::room`]; tasks already running go on. While paused, and only then, free space is read
//! every [`LOOK_EVERY`]; once every folder has what is needed (and, after a failed write, its file
//! system has `needed` more free than it had then, or [`RETRY_AFTER_FAILED_WRITE`] has passed: a
//! disk that gained a few bytes is not tried task after task), a `disk_space_back` event is
//! recorded and every runner is rung. An event the store could not take while its own disk was full
//! is recorded when room returns, with the time it happened.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, OUTPUT_DIR, STATE_DIR};
use agentq_core::error::Error;
use agentq_store::{NewEvent, Store, now_ms};

/// However low `min_free_space` is set, a file system with less than this free counts as full:
/// SQLite's journal, the logs and a task's files need some room to make progress.
pub const FLOOR: u64 = 1 << 20;

/// Free space is read at most this often before claims, and this often while paused.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// After a write failed for a full disk, claiming resumes once that file system has `needed` more
/// free than it had then, or after this long: a quota full (which free space does not show) is
/// tried again this often, and a disk that gained a little room is not tried task after task.
pub const RETRY_AFTER_FAILED_WRITE: Duration = Duration::from_secs(60);

/// What to do about a full disk, in words.
pub const FIX: &str = "free space on that file system (remove files there, or `agentq clean` \
                       finished tasks with their results and logs), or lower [daemon] min_free_space";

/// A folder whose file system has less free than agentq needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Low {
    pub path: PathBuf,
    pub free_bytes: u64,
    pub needed_bytes: u64,
}

impl Low {
    /// What was found, in words.
    pub fn describe(&self) -> String {
        format!(
            "{} has {} free, under the {} agentq needs there ([daemon] min_free_space)",
            self.path.display(),
            human(self.free_bytes),
            human(self.needed_bytes)
        )
    }
}

/// The free space a daemon with `min_free_space` needs on each folder's file system.
pub fn needed(min_free_space: u64) -> u64 {
    min_free_space.max(FLOOR)
}

/// The folders whose file systems are watched: the state folder and the results folder of the
/// project in `root`.
pub fn folders(root: &Path) -> [PathBuf; 2] {
    [root.join(STATE_DIR), root.join(OUTPUT_DIR)]
}

/// The first of `root`'s folders whose file system has less than `needed` free. `None`: room
/// everywhere, or free space could not be read (which is not taken for a full disk: the hard
/// signal still catches one).
pub fn look(root: &Path, needed: u64) -> Option<Low> {
    folders(root)
        .into_iter()
        .find_map(|path| match agentq_platform::fs::free_space(&path) {
            Ok(free) if free < needed => Some(Low {
                path,
                free_bytes: free,
                needed_bytes: needed,
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!("cannot read the free space of {}: {e}", path.display());
                None
            }
        })
}

/// Bytes for people: KiB, MiB or GiB, to one decimal above a KiB.
pub fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB * KIB {
        format!("{} KiB", bytes.div_ceil(1024))
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

/// The daemon's view of the disk: whether claiming is paused for a full one, and the watch that
/// ends the pause.
pub struct Space {
    root: PathBuf,
    needed: u64,
    store: Arc<dyn Store>,
    /// `true` while claiming is paused.
    full: watch::Sender<bool>,
    /// When free space was last read before a claim.
    looked: Mutex<Option<Instant>>,
    /// Events the store could not take (its own disk was full), recorded when room returns.
    unrecorded: Mutex<Vec<NewEvent>>,
    /// The pause followed a failed write: where, and how much free that file system needs
    /// before claiming resumes (see [`RETRY_AFTER_FAILED_WRITE`]).
    failed_write: Mutex<Option<(PathBuf, u64, Instant)>>,
    /// Wakes every runner and the pool when claiming resumes.
    resume: Box<dyn Fn() + Send + Sync>,
    stopping: CancellationToken,
}

impl Space {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        resume: impl Fn() + Send + Sync + 'static,
        stopping: CancellationToken,
    ) -> Arc<Space> {
        Arc::new(Space {
            root: config.root.clone(),
            needed: needed(config.daemon.min_free_space),
            store,
            full: watch::Sender::new(false),
            looked: Mutex::new(None),
            unrecorded: Mutex::new(Vec::new()),
            failed_write: Mutex::new(None),
            resume: Box::new(resume),
            stopping,
        })
    }

    /// Whether claiming is paused for a full disk.
    pub fn is_full(&self) -> bool {
        *self.full.borrow()
    }

    /// Whether a task may be claimed now: not while paused; otherwise free space is read (at most
    /// once per [`LOOK_EVERY`]), and a folder with less than is needed pauses claiming.
    pub async fn may_claim(self: &Arc<Self>) -> bool {
        if self.is_full() {
            return false;
        }
        {
            let mut looked = self.looked.lock().unwrap_or_else(PoisonError::into_inner);
            if looked.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
                return true;
            }
            *looked = Some(Instant::now());
        }
        match self.look().await {
            None => true,
            Some(low) => {
                let message = format!("the disk is full: {}", low.describe());
                self.pause(low, message, false).await;
                false
            }
        }
    }

    /// Takes note of a failed write: a full disk (or quota) pauses claiming. Returns whether it
    /// was one.
    pub async fn hit(self: &Arc<Self>, e: &Error) -> bool {
        if !e.is_storage_full() {
            return false;
        }
        let path = e
            .path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.join(STATE_DIR));
        let free_bytes = agentq_platform::fs::free_space(&path).unwrap_or(0);
        let low = Low {
            path,
            free_bytes,
            needed_bytes: self.needed,
        };
        let message = format!(
            "the disk is full: {e}; {} free there now, {} needed",
            human(low.free_bytes),
            human(low.needed_bytes)
        );
        self.pause(low, message, true).await;
        true
    }

    /// Waits until claiming may resume, or the daemon stops.
    pub async fn room(&self) {
        let mut full = self.full.subscribe();
        tokio::select! {
            _ = full.wait_for(|full| !*full) => {}
            _ = self.stopping.cancelled() => {}
        }
    }

    /// Pauses claiming, says so once, and watches for room; a pause already on is left as it is.
    /// `failed_write`: a write failed (the hard signal), so room enough is more than there was.
    async fn pause(self: &Arc<Self>, low: Low, what: String, failed_write: bool) {
        if failed_write {
            let want = low.free_bytes.saturating_add(self.needed);
            *self
                .failed_write
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some((low.path.clone(), want, Instant::now()));
        }
        if self.full.send_replace(true) {
            return;
        }
        let message = format!(
            "{what}. No task is claimed until there is room again (running tasks go on; one whose \
             results cannot be written goes back to the queue, its attempt not spent): {FIX}. \
             Claiming resumes by itself."
        );
        error!("{message}");
        self.record(NewEvent {
            task_id: None,
            worker: None,
            kind: "disk_full".into(),
            message,
            data: Some(serde_json::json!({
                "path": low.path,
                "free_bytes": low.free_bytes,
                "needed_bytes": low.needed_bytes,
            })),
            now: now_ms(),
        })
        .await;
        tokio::spawn(self.clone().watch());
    }

    /// While paused: reads free space every [`LOOK_EVERY`], and resumes claiming once every
    /// folder has what is needed.
    async fn watch(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = self.stopping.cancelled() => return,
            }
            if self.look().await.is_some() || !self.room_since_failed_write().await {
                continue;
            }
            *self
                .failed_write
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            let waiting = std::mem::take(
                &mut *self
                    .unrecorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            for event in waiting {
                self.record(event).await;
            }
            let free: Vec<String> = folders(&self.root)
                .iter()
                .filter_map(|p| {
                    let free = agentq_platform::fs::free_space(p).ok()?;
                    Some(format!("{} has {} free", p.display(), human(free)))
                })
                .collect();
            let message = format!(
                "there is room on the disk again ({}; {} needed): claiming resumes",
                free.join(", "),
                human(self.needed)
            );
            info!("{message}");
            self.record(NewEvent {
                task_id: None,
                worker: None,
                kind: "disk_space_back".into(),
                message,
                data: Some(serde_json::json!({ "needed_bytes": self.needed })),
                now: now_ms(),
            })
            .await;
            *self.looked.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.full.send_replace(false);
            (self.resume)();
            return;
        }
    }

    /// After a failed write: whether its file system has the room asked for since, or it is time
    /// to try again anyway. True when no write failed.
    async fn room_since_failed_write(&self) -> bool {
        let failed = self
            .failed_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((path, want, since)) = failed else {
            return true;
        };
        if since.elapsed() >= RETRY_AFTER_FAILED_WRITE {
            return true;
        }
        tokio::task::spawn_blocking(move || agentq_platform::fs::free_space(&path))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|free| free >= want)
    }

    /// Reads free space off the runtime's threads (a network file system may be slow to answer).
    async fn look(&self) -> Option<Low> {
        let (root, needed) = (self.root.clone(), self.needed);
        tokio::task::spawn_blocking(move || look(&root, needed))
            .await
            .ok()
            .flatten()
    }

    /// Records an event, or keeps it for when the store has room.
    async fn record(&self, event: NewEvent) {
        if let Err(e) = self.store.record_event(&event).await {
            warn!(
                "cannot record the {} event now ({e}); it is recorded when there is room",
                event.kind
            );
            self.unrecorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them_and_the_floor_holds() {
        assert_eq!(human(0), "0 KiB");
        assert_eq!(human(1500), "2 KiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
        assert_eq!(needed(0), FLOOR);
        assert_eq!(needed(64 << 20), 64 << 20);
    }

    #[test]
    fn a_folder_is_low_only_under_what_is_needed() {
        let d = tempfile::tempdir().unwrap();
        // Neither folder exists yet: their file system is the project's.
        assert_eq!(look(d.path(), FLOOR), None);
        let low = look(d.path(), u64::MAX).expect("no disk has that much");
        assert_eq!(low.path, d.path().join(STATE_DIR));
        assert!(low.free_bytes > 0);
        let said = low.describe();
        assert!(
            said.contains(".agentq has") && said.contains("min_free_space"),
            "{said}"
        );
    }
}
