//! One named worker's runner: claim the next task, run it, record the result, repeat.
//!
//! The runner keeps no queue of its own; it asks the store for the next task every time, so what
//! the store says is what runs. With nothing due it sleeps until it is woken (a submit rang the
//! doorbell, intake took a file) or until the earliest retry becomes due, and uses no CPU meanwhile.
//! While an attempt runs, a heartbeat renews the claim's lease every third of its length; a heartbeat
//! that finds the claim gone (the task was cancelled, or its lease expired and it was recovered)
//! stops the agent at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, WorkerConfig};
use agentq_agents::agent::{self, Outcome};
use agentq_agents::memory;
use agentq_agents::persistent;
use agentq_agents::procs::Book;
use agentq_core::domain::{AttemptEnd, Backoff, Cause, Next, after_attempt};
use agentq_core::error::Error;
use agentq_core::logfile::{EventLog, LogEvent};
use agentq_store::{Claim, EndHook, Event, Fence, Finish, NewEvent, Store, Task, Usage, now_ms};

pub struct Runner {
    pub worker: WorkerConfig,
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub owner: String,
    /// Rung when this worker may have new work, or when its running task may have been cancelled.
    pub wake: Arc<Notify>,
    /// Told when a claim (and so a lease) starts, for the lease keeper.
    pub leased: Arc<Notify>,
    /// Stop claiming new tasks.
    pub stopping: CancellationToken,
    /// Stop running agents now.
    pub hurry: CancellationToken,
    /// The worker's long-lived Claude process, between tasks (persistent mode).
    pub persistent: persistent::Slot,
    /// Where agents' process groups are recorded while they live.
    pub book: Arc<Book>,
    /// Where each attempt's processes are held (settled at the daemon's start).
    pub contained: crate::config::Contained,
    /// The JSON-lines event log (memory reports go only there).
    pub log: Arc<EventLog>,
    /// Set by `agentq worker restart`: replace the long-lived process, forget its deaths.
    pub restart: Arc<std::sync::atomic::AtomicBool>,
    /// The long-lived process's deaths, for the restart policy.
    pub life: std::sync::Mutex<Life>,
    /// Runs the worker's tasks in the pool: each in a fresh process (Claude in exec mode) and a
    /// conversation of its own, never the worker's; several at once.
    pub pool: bool,
    /// The daemon's worker leases, on a store several daemons share: the runner claims only
    /// while it holds its worker's. `None`: the worker is trivially this daemon's (SQLite).
    pub leases: Option<Arc<crate::hosts::Leases>>,
    /// Room on the disk: no claim while `.agentq/` or `.output/` is full.
    pub space: Arc<crate::space::Space>,
}

/// What the restart policy remembers of a worker's long-lived process.
#[derive(Debug, Default)]
pub struct Life {
    /// Deaths in a row, each soon after its start (within `min_uptime`).
    pub quick_deaths: u32,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// The next process may not start before this (restart delay).
    pub not_before: Option<Instant>,
    /// Tasks this runner has started (for pruning logs now and then).
    pub tasks: u64,
    /// Waits in a row for the agent's program to be installed.
    pub missing: u32,
}

/// What the restart policy says after a death.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Restart { delay: Duration },
    Errored(String),
}

/// The restart policy, pure: `uptime` is how long the process that died had lived.
pub fn after_death(
    life: &mut Life,
    policy: &crate::config::RestartPolicy,
    uptime: Duration,
) -> Verdict {
    if !policy.autorestart {
        return Verdict::Errored("its agent process died and autorestart is off".into());
    }
    // Only deaths soon after a start count: a process that lived was stable, whatever ended it.
    if uptime >= policy.min_uptime {
        life.quick_deaths = 0;
    } else {
        life.quick_deaths += 1;
    }
    if life.quick_deaths > policy.max_restarts {
        let deaths = life.quick_deaths;
        // Errored, the count starts over: a `worker restart` gives the policy its full room.
        life.quick_deaths = 0;
        return Verdict::Errored(format!(
            "its agent process died {deaths} times in a row, each within min_uptime ({}) of its start",
            humantime::format_duration(policy.min_uptime)
        ));
    }
    life.restarts += 1;
    let doublings = life.quick_deaths.saturating_sub(1).min(16);
    let delay = policy
        .restart_delay
        .saturating_mul(1 << doublings)
        .min(MAX_RESTART_DELAY);
    Verdict::Restart { delay }
}

const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

impl Runner {
    pub async fn run(self) {
        let name = self.worker.name.clone();
        if let Some(pin) = &self.worker.host
            && pin != &self.config.daemon.host
        {
            info!(worker = %name, "pinned to host {pin}; this daemon (host {}) leaves it alone", self.config.daemon.host);
            return;
        }
        let mut pause = Duration::from_millis(100);
        while !self.stopping.is_cancelled() {
            if let Some(leases) = &self.leases
                && !leases.holds(&name)
            {
                // A long-lived process of a lease lost meanwhile serves no one now.
                if let Some(process) = self.persistent.lock().await.take() {
                    process.shutdown(self.worker.limits.kill_timeout).await;
                }
                if !leases.hold(&self.worker, &self.wake, &self.stopping).await {
                    break;
                }
            }
            self.restart_if_asked().await;
            if !self.space.may_claim().await {
                self.space.room().await;
                continue;
            }
            match self
                .store
                .claim(&name, &self.owner, now_ms(), self.config.daemon.lease)
                .await
            {
                Ok(Some(claim)) => {
                    pause = Duration::from_millis(100);
                    self.leased.notify_one();
                    self.attempt(claim).await;
                }
                Ok(None) => self.idle().await,
                // The disk is full: claiming pauses until there is room.
                Err(e) if e.is_storage_full() => {
                    self.space.hit(&e).await;
                }
                Err(e) => {
                    error!(worker = %name, "cannot claim a task: {e}; trying again in {pause:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stopping.cancelled() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
        if let Some(process) = self.persistent.lock().await.take() {
            process.shutdown(self.worker.limits.kill_timeout).await;
        }
        // Another host takes the worker over at once.
        if let Some(leases) = &self.leases {
            leases.release(&name).await;
        }
    }

    /// Acts on `agentq worker restart`: the long-lived process is replaced at the next task, and
    /// its past deaths are forgotten.
    async fn restart_if_asked(&self) {
        if !self
            .restart
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        {
            let mut life = self.life.lock().unwrap_or_else(|p| p.into_inner());
            *life = Life {
                tasks: life.tasks,
                ..Life::default()
            };
        }
        if let Some(process) = self.persistent.lock().await.take() {
            info!(worker = %self.worker.name, "restart asked: stopping the long-lived process");
            process.shutdown(self.worker.limits.kill_timeout).await;
        }
    }

    /// Applies the restart policy to a death of the long-lived process that lived `uptime`.
    /// Returns false when the worker is now errored.
    pub(crate) async fn process_died(&self, uptime: Duration, why: &str) -> bool {
        let name = &self.worker.name;
        let verdict = {
            let mut life = self.life.lock().unwrap_or_else(|p| p.into_inner());
            let verdict = after_death(&mut life, &self.worker.limits.restart, uptime);
            if let Verdict::Restart { delay } = verdict {
                life.not_before = Some(Instant::now() + delay);
            }
            verdict
        };
        match verdict {
            Verdict::Restart { delay } => {
                let message = format!(
                    "the agent process died after {} ({why}); a new one starts in {}",
                    humantime::format_duration(Duration::from_millis(uptime.as_millis() as u64)),
                    humantime::format_duration(delay)
                );
                warn!(worker = %name, "{message}");
                self.worker_event("agent_restarting", &message).await;
                true
            }
            Verdict::Errored(reason) => {
                let reason = format!("{reason} (last: {why})");
                error!(worker = %name, "errored: {reason}; `agentq worker restart {name}` clears it");
                if let Err(e) = self.store.error_worker(name, &reason, now_ms()).await {
                    warn!(worker = %name, "cannot record the errored state: {e}");
                }
                false
            }
        }
    }

    /// Waits out the restart delay, if one is set; false if stopped meanwhile.
    pub(crate) async fn restart_delay(&self, stop: &Stop) -> bool {
        let until = self
            .life
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .not_before;
        if let Some(until) = until.filter(|u| *u > Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = stop.future() => return false,
            }
        }
        true
    }

    async fn worker_event(&self, kind: &str, message: &str) {
        self.record(None, kind, message).await;
    }

    /// Waits for a ring, for the next retry to become due, or for shutdown. A long-lived process
    /// that dies meanwhile is noticed, and counted by the restart policy.
    async fn idle(&self) {
        let due = match self.store.next_due(&self.worker.name).await {
            Ok(due) => due,
            Err(e) => {
                // Without the time of the next retry, look again soon rather than never.
                warn!(worker = %self.worker.name, "cannot read the queue: {e}");
                Some(now_ms() + (self.config.daemon.lease / 3).as_millis() as i64)
            }
        };
        let nap = due.map(|t| {
            let ms = t - now_ms();
            // Due already yet not claimable: another owner holds this worker's running task.
            if ms <= 0 {
                self.config.daemon.lease / 3
            } else {
                Duration::from_millis(ms as u64)
            }
        });
        // A pause may run for days (an errored worker's, for ever): wake now and then anyway.
        let nap = nap.map(|n| n.min(Duration::from_secs(3600)));
        let mut slot = self.persistent.lock().await;
        let died = tokio::select! {
            _ = self.wake.notified() => None,
            _ = async { tokio::time::sleep(nap.unwrap_or_default()).await }, if nap.is_some() => None,
            _ = self.stopping.cancelled() => None,
            uptime = async { slot.as_mut().expect("guarded").exited().await }, if slot.is_some() => Some(uptime),
        };
        if let Some(uptime) = died {
            let mut process = slot.take().expect("it just exited");
            drop(slot);
            // What it said on the way out is the reason; let its stderr drain first.
            process.exited_within(Duration::from_millis(500)).await;
            let stderr = process.stderr_tail();
            drop(process);
            let last = agentq_agents::last_line(&stderr, "no output");
            self.process_died(uptime, &format!("while idle: {last}"))
                .await;
        }
    }

    /// Runs one claimed task to its recorded end (or gives it back).
    pub async fn attempt(&self, claim: Claim) {
        let task = &claim.task;
        let fence = claim.fence();
        let name = &self.worker.name;
        info!(worker = %name, task = task.id, attempt = task.attempts, pool = self.pool, "started");

        let lost = CancellationToken::new();
        // Aborted however this ends, a panic included: a heartbeat left behind would hold the
        // task `running` (and a pool slot) for ever.
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            self.store.clone(),
            fence.clone(),
            self.config.daemon.lease,
            self.wake.clone(),
            lost.clone(),
        )));
        self.prune_logs().await;
        let stop = Stop {
            lost: lost.clone(),
            hurry: self.hurry.clone(),
        };
        let driver = self.worker.agent.driver();
        // A task in a worktree of its own runs there (made now, or found again for a retry).
        let mut worktree = None;
        let ran =
            match crate::worktree::prepare(&self.config, &*self.store, &self.worker, task).await {
                Err(end) => {
                    // A worktree an earlier attempt made still holds its work: recorded if the
                    // task ends now.
                    worktree = task
                        .worktree
                        .clone()
                        .filter(|w| w.stage == agentq_core::worktree::Stage::Active);
                    Ran::not_run(Ended::Attempt(end))
                }
                Ok(made) => {
                    let cwd = match made {
                        Some((dir, rec)) => {
                            worktree = Some(rec);
                            dir
                        }
                        None => self.worker.cwd.clone(),
                    };
                    match driver.long_lived() {
                        // The pool runs every task in a process of its own.
                        Some(protocol) if !self.pool => {
                            self.run_long_lived(driver, protocol, task, &cwd, &stop)
                                .await
                        }
                        _ => self.run_exec(driver, task, &cwd, &stop).await,
                    }
                }
            };

        let end = match ran.end {
            Ended::Interrupted if lost.is_cancelled() => {
                info!(worker = %name, task = task.id, "stopped: the task was cancelled or taken over");
                self.conclude_if_cancelled(task).await;
                self.note(
                    task.id,
                    "task_stopped",
                    "agent stopped: this runner no longer holds the task",
                )
                .await;
                return;
            }
            Ended::Interrupted => {
                if self.give_back(&fence, "daemon shutting down").await {
                    info!(worker = %name, task = task.id, "interrupted by shutdown; queued again")
                }
                return;
            }
            Ended::Limited(limit) => {
                self.pause_for_limit(task.id, &fence, &limit).await;
                return;
            }
            Ended::Released(why) => {
                if self.give_back(&fence, &why).await {
                    info!(worker = %name, task = task.id, "{why}; queued again")
                }
                return;
            }
            Ended::Attempt(end) => end,
        };
        if ran.attempt.outcome == Outcome::Lingered {
            let msg = format!(
                "the agent was still running {} after its result; stopped, and the result stands",
                humantime::format_duration(self.worker.limits.linger_timeout)
            );
            self.note(task.id, "task_lingered", &msg).await;
        }
        if ran.attempt.stdout_truncated {
            let msg = format!(
                "output cut at output_cap ({} bytes)",
                self.config.daemon.output_cap
            );
            self.note(task.id, "output_truncated", &msg).await;
        }
        let backoff = Backoff {
            base: self.worker.limits.backoff,
            max: self.worker.limits.max_backoff,
        };
        let next = after_attempt(
            &end,
            task.attempts,
            task.max_attempts,
            backoff,
            rand::rng().random::<f64>(),
        );
        // The change of a task that ends now is recorded on it before its end is, so that
        // whoever sees it ended (its output files included) sees its change.
        if next.state().is_terminal()
            && let Some(rec) = &worktree
        {
            let succeeded = next.state() == agentq_core::domain::TaskState::Succeeded;
            crate::worktree::conclude(&*self.store, task, rec, succeeded).await;
        }
        let now = now_ms();
        let finish = Finish {
            state: next.state(),
            not_before: match next {
                Next::Retry { delay } => Some(now + delay.as_millis() as i64),
                _ => None,
            },
            exit_code: match ran.attempt.outcome {
                Outcome::Exited(code) => Some(code),
                _ => None,
            },
            output: Some(ran.output),
            error: match &end {
                AttemptEnd::Failed { reason, .. } => Some(reason.clone()),
                AttemptEnd::Succeeded => None,
            },
            stderr_tail: (!ran.attempt.stderr_tail.is_empty()).then_some(ran.attempt.stderr_tail),
            duration_ms: ran.attempt.duration.as_millis() as i64,
            usage: ran.usage,
            cause: end.cause().map(|c| c.as_str().to_string()),
            memory_peak_mb: ran.attempt.memory_peak.map(memory::mb),
            now,
        };
        // Output files are written inside the transaction that records the end, so anyone who sees
        // the task ended finds its files. A full disk undoes the result: no task is done without
        // its files. Other failures leave the result in the store, its files missing, and say so.
        let on_end: Option<EndHook> = finish.state.is_terminal().then(|| {
            let dir = self.config.output_dir(name);
            Box::new(
                move |task: &Task, events: &[Event]| match crate::output::write_task(
                    &dir, task, events,
                ) {
                    Ok(_) => Ok(()),
                    Err(e) if agentq_platform::fs::is_storage_full(&e) => {
                        Err(Error::io("writing the output files in", dir, e))
                    }
                    Err(e) => {
                        warn!(
                            task = task.id,
                            "cannot write output files in {}: {e}; the result is in the store (`agentq show {}`)",
                            dir.display(),
                            task.id
                        );
                        Ok(())
                    }
                },
            ) as EndHook
        });
        match self.store.finish(&fence, &finish, on_end).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(worker = %name, task = task.id, "result not recorded: the task was cancelled or taken over meanwhile");
                return;
            }
            Err(e) if e.is_storage_full() => {
                // Neither the result nor its files were written. The heartbeat keeps the claim
                // while the task waits to be given back.
                self.space.hit(&e).await;
                self.give_back_when_room(&fence, &lost, &format!("result not recorded: {e}"))
                    .await;
                return;
            }
            Err(e) => {
                // The lease runs out and the task runs again: at-least-once, never lost.
                error!(worker = %name, task = task.id, "could not record the result: {e}");
                return;
            }
        }
        drop(keeper);
        if let Some(budget) = self.worker.agent.driver().daily_budget_usd() {
            self.check_budget(budget).await;
        }
        let reason = finish.error.as_deref().unwrap_or("");
        match &next {
            Next::Succeeded => {
                info!(worker = %name, task = task.id, duration_ms = finish.duration_ms, "succeeded")
            }
            Next::Retry { delay } => warn!(
                worker = %name, task = task.id,
                "attempt {} failed: {reason}; retry in {}",
                task.attempts,
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            ),
            Next::Dead => {
                warn!(worker = %name, task = task.id, "dead after {} attempts: {reason}", task.attempts)
            }
            Next::Failed => warn!(worker = %name, task = task.id, "failed: {reason}"),
        }
    }

    /// A task stopped because it was cancelled (not taken over by another daemon, whose runner
    /// goes on in its worktree) has its change recorded as it stands.
    async fn conclude_if_cancelled(&self, task: &Task) {
        if task.worktree.is_none() {
            return;
        }
        match self.store.get(task.id).await {
            Ok(Some(now)) if now.state == agentq_core::domain::TaskState::Cancelled => {
                if let Some(rec) = &now.worktree {
                    crate::worktree::conclude(&*self.store, &now, rec, false).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(task = task.id, "cannot read it to record its change: {e}"),
        }
    }

    /// A usage limit: the worker waits for the reset (a minute when the result gives no time), and
    /// the task goes back to the queue, its attempt not counted, to run first when work resumes.
    async fn pause_for_limit(&self, task_id: i64, fence: &Fence, limit: &agentq_agents::Limit) {
        let name = &self.worker.name;
        let now = now_ms();
        let until = limit
            .until
            .filter(|u| *u > now)
            .unwrap_or(now + UNKNOWN_LIMIT_PAUSE_MS);
        let reason = format!("usage limit: {}", limit.message);
        if let Err(e) = self.store.pause_worker(name, until, &reason, now).await {
            warn!(worker = %name, "cannot record the pause: {e}");
        }
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(until as u64),
        );
        if self
            .give_back(fence, &format!("{reason}; waits for the reset at {when}"))
            .await
        {
            warn!(worker = %name, task = task_id, "{reason}; paused until {when}, the task waits")
        }
    }

    /// Puts a claimed task back in the queue without spending its attempt. Returns whether it
    /// did (not: the claim was gone, or the store failed and recovery will do it).
    pub(crate) async fn give_back(&self, fence: &Fence, why: &str) -> bool {
        match self.store.release(fence, why, now_ms()).await {
            Ok(released) => released,
            Err(e) => {
                warn!(worker = %self.worker.name, task = fence.id, "could not put the task back: {e}; it is recovered at the next start");
                false
            }
        }
    }

    /// Gives back a task whose result a full disk kept from being recorded: to run again, its
    /// attempt not spent, as after an interruption. If the store cannot take even that now, waits
    /// for room (claiming is paused meanwhile); a task still held when the daemon stops, or whose
    /// lease runs out, is recovered as any other.
    async fn give_back_when_room(&self, fence: &Fence, lost: &CancellationToken, why: &str) {
        let name = &self.worker.name;
        loop {
            match self.store.release(fence, why, now_ms()).await {
                Ok(true) => {
                    return warn!(worker = %name, task = fence.id, "{why}; queued again, its attempt not spent");
                }
                Ok(false) => return,
                Err(e) if e.is_storage_full() && !self.stopping.is_cancelled() => {
                    self.space.hit(&e).await;
                    tokio::select! {
                        _ = async {
                            self.space.room().await;
                            // Not again at once, should the store still be short of room.
                            tokio::time::sleep(crate::space::LOOK_EVERY).await;
                        } => {}
                        _ = lost.cancelled() => return,
                        _ = self.stopping.cancelled() => {}
                    }
                }
                Err(e) => {
                    return warn!(worker = %name, task = fence.id, "could not put the task back: {e}; it is recovered when its lease runs out, or at the next start");
                }
            }
        }
    }

    /// Pauses the worker until tomorrow once today's spend reaches its daily budget.
    async fn check_budget(&self, budget: f64) {
        let name = &self.worker.name;
        let (today, tomorrow) = agentq_agents::local_day(chrono::Local::now());
        let spent = match self.store.spend_since(today).await {
            Ok(spend) => spend
                .into_iter()
                .find(|s| &s.worker == name)
                .map_or(0.0, |s| s.cost_usd),
            Err(e) => return warn!(worker = %name, "cannot add up today's spend: {e}"),
        };
        if spent >= budget {
            let reason = format!("daily budget of ${budget:.2} spent (${spent:.2} today)");
            warn!(worker = %name, "{reason}; paused until tomorrow");
            if let Err(e) = self
                .store
                .pause_worker(name, tomorrow, &reason, now_ms())
                .await
            {
                warn!(worker = %name, "cannot record the pause: {e}");
            }
        }
    }

    /// The spec of an attempt of `driver`'s agent, in either mode. Its environment is the
    /// daemon's, without what the driver removes (a parent session's markers) and without
    /// agentq's private variables ([`crate::config::PRIVATE_ENV`]), plus what the driver sets;
    /// the worker's own `env` wins over all of it.
    pub(crate) fn spec(
        &self,
        driver: &dyn agentq_agents::Driver,
        task: &Task,
        argv: Vec<String>,
        cwd: &std::path::Path,
    ) -> agent::Spec {
        let agentq_agents::Environment {
            set: mut env,
            remove: mut env_remove,
        } = driver.environment(daemon_env());
        env_remove.extend(crate::config::PRIVATE_ENV.iter().map(|k| k.to_string()));
        env_remove.retain(|k| !self.worker.env.contains_key(k));
        env.extend(self.worker.env.clone());
        env.insert("AGENTQ_TASK_ID".into(), task.id.to_string());
        env.insert("AGENTQ_WORKER".into(), self.worker.name.clone());
        env.insert("AGENTQ_ATTEMPT".into(), task.attempts.to_string());
        if self.pool {
            env.insert("AGENTQ_POOL".into(), "1".into());
        }
        agent::Spec {
            argv,
            cwd: cwd.to_path_buf(),
            env,
            env_remove,
            prompt: task.prompt.clone(),
            timeout: task
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(self.worker.limits.timeout),
            kill_timeout: self.worker.limits.kill_timeout,
            output_cap: self.config.daemon.output_cap as usize,
            stderr_cap: self.config.daemon.stderr_cap as usize,
            idle_timeout: self.worker.limits.idle_timeout,
            linger: self.worker.limits.linger_timeout,
            final_line: None,
            keep_tail: false,
            memory: self.memory_policy(Some(task)),
            book: Some(agent::Booking {
                book: self.book.clone(),
                worker: self.worker.name.clone(),
                task: Some(task.id),
                keep: self.contained.keep(&self.worker.limits),
            }),
            log: Some(Arc::new(self.task_log(task))),
            transcript: Some(agentq_agents::transcript::Transcript::new(
                agentq_core::transcript::Writer::open(
                    self.config.transcript_path(&self.worker.name, task.id),
                    self.config.daemon.log_max_size,
                    task.attempts,
                ),
                driver.transcriber(),
            )),
        }
    }

    /// The task's agent log, `.agentq/logs/<worker>/task_<id>.log`, rotated by size. Every
    /// hundredth task of the worker (and its first), its oldest logs beyond `task_logs_keep` are
    /// removed.
    fn task_log(&self, task: &Task) -> agentq_core::logfile::RotatingFile {
        let dir = self.config.task_log_dir(&self.worker.name);
        // One older file per task: a task's log is for reading what it did, the newest part first.
        // Only this runner writes it: no lock file.
        agentq_core::logfile::RotatingFile::single_writer(
            dir.join(format!("task_{}.log", task.id)),
            self.config.daemon.log_max_size,
            1,
        )
    }

    /// Every hundredth task of this runner (and its first), removes the worker's oldest agent
    /// logs and transcripts beyond `task_logs_keep` (each), never one of a task still running (its worker's runner and
    /// the pool may both be writing in the folder).
    async fn prune_logs(&self) {
        let nth = {
            let mut life = self.life.lock().unwrap_or_else(|p| p.into_inner());
            life.tasks += 1;
            life.tasks
        };
        if nth % 100 != 1 {
            return;
        }
        let name = &self.worker.name;
        let running = self
            .store
            .list(&agentq_store::TaskFilter {
                state: Some(agentq_core::domain::TaskState::Running),
                worker: Some(name.clone()),
                limit: None,
            })
            .await;
        let running = match running {
            Ok(list) => list,
            Err(e) => return warn!(worker = %name, "not pruning agent logs: {e}"),
        };
        let keep = self.config.daemon.task_logs_keep as usize;
        for (dir, suffix) in [
            (self.config.task_log_dir(name), "log"),
            (self.config.transcript_dir(name), "jsonl"),
        ] {
            let spare: Vec<String> = running
                .iter()
                .map(|t| format!("task_{}.{suffix}", t.id))
                .collect();
            if let Err(e) = agentq_core::logfile::prune(&dir, "task_", keep, &spare) {
                warn!(worker = %name, "cannot prune the task logs in {}: {e}", dir.display());
            }
        }
    }

    /// How an agent's memory is watched: sampled on the daemon's schedule, stopped past the
    /// worker's `max_memory`, and a `memory_report` line in the event log every
    /// `memory_report_interval`.
    pub(crate) fn memory_policy(&self, task: Option<&Task>) -> memory::Policy {
        let (log, worker) = (self.log.clone(), self.worker.name.clone());
        let max = task
            .and_then(|t| t.routing.max_memory)
            .or(self.worker.limits.max_memory);
        let task = task.map(|t| t.id);
        let report: memory::Reporter = Arc::new(move |r: memory::Report| {
            let mut line = LogEvent::new("memory_report", now_ms())
                .worker(&worker)
                .message(format!(
                    "{} MiB now, peak {} MiB",
                    memory::mb(r.rss),
                    memory::mb(r.peak)
                ))
                .with("rss_mb", memory::mb(r.rss))
                .with("peak_mb", memory::mb(r.peak));
            if let Some(task) = task {
                line = line.task(task);
            }
            if let Some(max) = max {
                line = line.with("max_mb", memory::mb(max));
            }
            if let Err(e) = log.append(&line) {
                warn!(worker = %worker, "cannot write a memory report: {e}");
            }
        });
        memory::Policy {
            max,
            sample_every: self.config.daemon.memory_sample_interval,
            report_every: self.worker.limits.memory_report_interval,
            report: Some(report),
        }
    }

    pub(crate) async fn note(&self, task_id: i64, kind: &str, message: &str) {
        self.record(Some(task_id), kind, message).await;
    }

    pub(crate) async fn record(&self, task_id: Option<i64>, kind: &str, message: &str) {
        let event = NewEvent {
            task_id,
            worker: Some(self.worker.name.clone()),
            kind: kind.into(),
            message: message.into(),
            data: None,
            now: now_ms(),
        };
        if let Err(e) = self.store.record_event(&event).await {
            warn!(worker = %self.worker.name, task = task_id, "cannot record event {kind}: {e}");
        }
    }
}

/// The daemon's own environment, which agents inherit: read once (nothing changes it while the
/// daemon runs), not at every attempt.
fn daemon_env() -> &'static BTreeMap<String, String> {
    static ENV: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| std::env::vars().collect())
}

/// A task that stops when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a worker pauses for a limit whose reset time was not given.
pub(crate) const UNKNOWN_LIMIT_PAUSE_MS: i64 = 60_000;

/// The cancellation signals an attempt listens to.
pub(crate) struct Stop {
    /// The claim is gone (cancelled, or taken over).
    lost: CancellationToken,
    /// The daemon is shutting down and its grace is over.
    hurry: CancellationToken,
}

impl Stop {
    pub(crate) fn future(&self) -> impl std::future::Future<Output = ()> + use<> {
        let (lost, hurry) = (self.lost.clone(), self.hurry.clone());
        async move {
            tokio::select! {
                _ = lost.cancelled() => {}
                _ = hurry.cancelled() => {}
            }
        }
    }
}

/// How an attempt went, whatever the agent.
pub(crate) struct Ran {
    pub(crate) end: Ended,
    /// The result text.
    pub(crate) output: String,
    pub(crate) usage: Usage,
    pub(crate) attempt: agent::Attempt,
}

impl Ran {
    /// An attempt that ended before any agent started (its worktree could not be made).
    pub(crate) fn not_run(end: Ended) -> Ran {
        let error = match &end {
            Ended::Attempt(AttemptEnd::Failed { reason, .. }) => reason.clone(),
            _ => String::new(),
        };
        Ran {
            end,
            output: String::new(),
            usage: Usage::default(),
            attempt: agent::Attempt {
                outcome: Outcome::SpawnFailed {
                    error,
                    retryable: false,
                    missing: false,
                },
                stdout: String::new(),
                stdout_truncated: false,
                stderr_tail: String::new(),
                duration: Duration::ZERO,
                pid: None,
                memory_peak: None,
            },
        }
    }
}

pub(crate) enum Ended {
    /// Stopped from outside: the claim was lost, or the daemon is shutting down.
    Interrupted,
    /// Not run, through no fault of the task's: it goes back to the queue, attempt not counted.
    Released(String),
    /// The agent hit a usage limit: not the task's fault, so no attempt is spent.
    Limited(agentq_agents::Limit),
    Attempt(AttemptEnd),
}

/// The limits an attempt ran under, for saying which one ended it.
pub(crate) struct Watchdogs {
    timeout: Duration,
    idle_timeout: Option<Duration>,
    max_memory: Option<u64>,
}

impl Watchdogs {
    pub(crate) fn of(spec: &agent::Spec) -> Watchdogs {
        Watchdogs {
            timeout: spec.timeout,
            idle_timeout: spec.idle_timeout,
            max_memory: spec.memory.max,
        }
    }
}

/// How an attempt ended, from how its process ended (the agent's own output aside). Each failure
/// names its cause first, the way `agentq show` prints it: `timeout: ...`, `crashed (...)`.
pub(crate) fn generic_end(outcome: &Outcome, limits: &Watchdogs) -> Ended {
    let took =
        |d: Duration| humantime::format_duration(Duration::from_millis(d.as_millis() as u64));
    Ended::Attempt(match outcome {
        Outcome::Interrupted => return Ended::Interrupted,
        Outcome::Exited(0) | Outcome::Lingered | Outcome::Served => AttemptEnd::Succeeded,
        Outcome::Exited(code) => AttemptEnd::failed(
            Cause::Crashed,
            match agentq_platform::process::exit_name(*code) {
                Some(name) => format!("crashed (exit code {:#010X}, {name})", *code as u32),
                None => format!("crashed (exit code {code})"),
            },
        ),
        Outcome::Signalled(0) => {
            AttemptEnd::failed(Cause::Crashed, "crashed (exit status unknown)")
        }
        Outcome::Signalled(signal) => AttemptEnd::failed(
            Cause::Crashed,
            format!("crashed (signal {signal}{})", signal_name(*signal)),
        ),
        Outcome::TimedOut => AttemptEnd::failed(
            Cause::Timeout,
            format!("timeout: still running after {}", took(limits.timeout)),
        ),
        Outcome::IdleTimedOut => AttemptEnd::failed(
            Cause::IdleTimeout,
            format!(
                "idle_timeout: no output for {}; taken as hung",
                took(limits.idle_timeout.unwrap_or_default())
            ),
        ),
        Outcome::MemoryLimit(rss) => AttemptEnd::failed(
            Cause::MemoryLimit,
            format!(
                "memory_limit: its processes held {}, over max_memory ({})",
                memory::human(*rss),
                memory::human(limits.max_memory.unwrap_or_default())
            ),
        ),
        Outcome::ProcessLimit(max) => AttemptEnd::failed(
            Cause::ProcessLimit,
            format!(
                "process_limit: it had more than {max} processes at once (max_processes); all were killed"
            ),
        ),
        Outcome::SpawnFailed {
            error, retryable, ..
        } => {
            let cause = if *retryable {
                Cause::SpawnFailed
            } else {
                Cause::Config
            };
            AttemptEnd::failed(cause, error.clone())
        }
    })
}

/// Cuts `text` to at most `cap` bytes, on a character boundary. Returns whether it cut.
pub(crate) fn cap_text(text: &mut String, cap: usize) -> bool {
    if text.len() <= cap {
        return false;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

fn signal_name(signal: i32) -> String {
    agentq_platform::process::signal_name(signal)
        .map(|s| format!(", {s}"))
        .unwrap_or_default()
}

/// Renews the lease every third of its length, and at once when the worker is rung (a cancel
/// rings it). Cancels `lost` when the claim is gone.
async fn keep_lease(
    store: Arc<dyn Store>,
    fence: Fence,
    lease: Duration,
    wake: Arc<Notify>,
    lost: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = wake.notified() => {}
        }
        match store.heartbeat(&fence, now_ms(), lease).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => warn!(task = fence.id, "heartbeat failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;

    const POLICY: RestartPolicy = RestartPolicy {
        autorestart: true,
        max_restarts: 3,
        min_uptime: Duration::from_secs(10),
        restart_delay: Duration::from_secs(1),
    };

    #[test]
    fn quick_deaths_back_off_then_leave_the_worker_errored() {
        let mut life = Life::default();
        let quick = Duration::from_secs(1);
        let delays: Vec<Verdict> = (0..3)
            .map(|_| after_death(&mut life, &POLICY, quick))
            .collect();
        assert_eq!(
            delays,
            [1, 2, 4].map(|s| Verdict::Restart {
                delay: Duration::from_secs(s)
            })
        );
        match after_death(&mut life, &POLICY, quick) {
            Verdict::Errored(why) => assert!(why.contains("died 4 times in a row"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(life.quick_deaths, 0, "errored, the count starts over");
    }

    #[test]
    fn a_process_that_lived_past_min_uptime_starts_the_count_over() {
        let mut life = Life::default();
        for _ in 0..3 {
            after_death(&mut life, &POLICY, Duration::from_millis(10));
        }
        assert_eq!(
            after_death(&mut life, &POLICY, Duration::from_secs(60)),
            Verdict::Restart {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!((life.restarts, life.quick_deaths), (4, 0));
        // With no quick restarts allowed, a process that lived still restarts.
        let strict = RestartPolicy {
            max_restarts: 0,
            ..POLICY
        };
        assert!(matches!(
            after_death(&mut Life::default(), &strict, Duration::from_secs(3600)),
            Verdict::Restart { .. }
        ));
    }

    #[test]
    fn without_autorestart_the_first_death_is_final_and_delays_are_capped() {
        let off = RestartPolicy {
            autorestart: false,
            ..POLICY
        };
        assert!(matches!(
            after_death(&mut Life::default(), &off, Duration::from_secs(60)),
            Verdict::Errored(_)
        ));
        let many = RestartPolicy {
            max_restarts: 100,
            ..POLICY
        };
        let mut life = Life::default();
        let last = (0..50)
            .map(|_| after_death(&mut life, &many, Duration::ZERO))
            .last()
            .unwrap();
        assert_eq!(
            last,
            Verdict::Restart {
                delay: MAX_RESTART_DELAY
            }
        );
    }

    #[test]
    fn causes_come_first_in_the_reason() {
        let limits = Watchdogs {
            timeout: Duration::from_secs(600),
            idle_timeout: Some(Duration::from_secs(30)),
            max_memory: Some(1 << 30),
        };
        let reason = |o: Outcome| match generic_end(&o, &limits) {
            Ended::Attempt(AttemptEnd::Failed { cause, reason, .. }) => (cause, reason),
            _ => panic!("not a failure"),
        };
        assert_eq!(
            reason(Outcome::TimedOut),
            (Cause::Timeout, "timeout: still running after 10m".into())
        );
        assert_eq!(reason(Outcome::IdleTimedOut).0, Cause::IdleTimeout);
        assert_eq!(
            reason(Outcome::MemoryLimit(1536 << 20)).1,
            "memory_limit: its processes held 1536 MiB, over max_memory (1024 MiB)"
        );
        assert_eq!(
            reason(Outcome::Signalled(9)).1,
            "crashed (signal 9, SIGKILL)"
        );
        assert_eq!(reason(Outcome::Exited(2)).1, "crashed (exit code 2)");
        let missing = Outcome::SpawnFailed {
            missing: true,
            error: "no such program".into(),
            retryable: false,
        };
        assert_eq!(reason(missing).0, Cause::Config);
        assert!(matches!(
            generic_end(&Outcome::Lingered, &limits),
            Ended::Attempt(AttemptEnd::Succeeded)
        ));
    }
}
