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

use crate::agent::{self, Outcome};
use crate::claude;
use crate::config::{Agent, Config, WorkerConfig};
use crate::domain::{AttemptEnd, Backoff, Next, after_attempt};
use crate::persistent::{self, Persistent, TaskEnd};
use crate::store::{Claim, EndHook, Event, Fence, Finish, NewEvent, Store, Task, Usage, now_ms};

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
}

impl Runner {
    pub async fn run(self) {
        let name = self.worker.name.clone();
        let mut pause = Duration::from_millis(100);
        while !self.stopping.is_cancelled() {
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
    }

    /// Waits for a ring, for the next retry to become due, or for shutdown.
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
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = async { tokio::time::sleep(nap.unwrap_or_default()).await }, if nap.is_some() => {}
            _ = self.stopping.cancelled() => {}
        }
    }

    async fn attempt(&self, claim: Claim) {
        let task = &claim.task;
        let fence = claim.fence();
        let name = &self.worker.name;
        info!(worker = %name, task = task.id, attempt = task.attempts, "started");

        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease(
            self.store.clone(),
            fence.clone(),
            self.config.daemon.lease,
            self.wake.clone(),
            lost.clone(),
        ));
        let stop = Stop {
            lost: lost.clone(),
            hurry: self.hurry.clone(),
        };
        let ran = match &self.worker.agent {
            Agent::Command { argv } => self.run_command(argv, task, &stop).await,
            Agent::Claude(settings) if settings.mode == claude::Mode::Persistent => {
                self.run_persistent(settings, task, &stop).await
            }
            Agent::Claude(settings) => self.run_claude(settings, task, &stop).await,
        };
        keeper.abort();

        let end = match ran.end {
            Ended::Interrupted if lost.is_cancelled() => {
                info!(worker = %name, task = task.id, "stopped: the task was cancelled or taken over");
                self.note(
                    task.id,
                    "stopped",
                    "agent stopped: this runner no longer holds the task",
                )
                .await;
                return;
            }
            Ended::Interrupted => {
                match self
                    .store
                    .release(&fence, "daemon shutting down", now_ms())
                    .await
                {
                    Ok(true) => {
                        info!(worker = %name, task = task.id, "interrupted by shutdown; queued again")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(worker = %name, task = task.id, "could not release the task: {e}; it is recovered at the next start")
                    }
                }
                return;
            }
            Ended::Limited(limit) => {
                self.pause_for_limit(task.id, &fence, &limit).await;
                return;
            }
            Ended::Attempt(end) => end,
        };
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
            now,
        };
        // Output files are written inside the transaction that records the end, so anyone who sees
        // the task ended finds its files.
        let on_end: Option<EndHook> = finish.state.is_terminal().then(|| {
            let dir = self.config.output_dir(name);
            Box::new(move |task: &Task, events: &[Event]| {
                if let Err(e) = crate::output::write_task(&dir, task, events) {
                    warn!(
                        task = task.id,
                        "cannot write output files in {}: {e}",
                        dir.display()
                    );
                }
            }) as EndHook
        });
        match self.store.finish(&fence, &finish, on_end).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(worker = %name, task = task.id, "result not recorded: the task was cancelled or taken over meanwhile");
                return;
            }
            Err(e) => {
                // The lease runs out and the task runs again: at-least-once, never lost.
                error!(worker = %name, task = task.id, "could not record the result: {e}");
                return;
            }
        }
        if let Agent::Claude(settings) = &self.worker.agent
            && let Some(budget) = settings.budget_usd_per_day
        {
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

    /// A usage limit: the worker waits for the reset (a minute when the result gives no time), and
    /// the task goes back to the queue, its attempt not counted, to run first when work resumes.
    async fn pause_for_limit(&self, task_id: i64, fence: &Fence, limit: &claude::Limit) {
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
        match self
            .store
            .release(
                fence,
                &format!("{reason}; waits for the reset at {when}"),
                now,
            )
            .await
        {
            Ok(_) => {
                warn!(worker = %name, task = task_id, "{reason}; paused until {when}, the task waits")
            }
            Err(e) => {
                warn!(worker = %name, task = task_id, "could not put the task back: {e}; it is recovered at the next start")
            }
        }
    }

    /// Pauses the worker until tomorrow once today's spend reaches its daily budget.
    async fn check_budget(&self, budget: f64) {
        let name = &self.worker.name;
        let (today, tomorrow) = claude::local_day(chrono::Local::now());
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

    /// The parts of a spec every agent shares.
    fn spec(&self, task: &Task, argv: Vec<String>, env_remove: Vec<String>) -> agent::Spec {
        let mut env = self.worker.env.clone();
        env.insert("AGENTQ_TASK_ID".into(), task.id.to_string());
        env.insert("AGENTQ_WORKER".into(), self.worker.name.clone());
        env.insert("AGENTQ_ATTEMPT".into(), task.attempts.to_string());
        agent::Spec {
            argv,
            cwd: self.worker.cwd.clone(),
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
        }
    }

    /// A spec for a Claude process, in either mode: without the parent session's markers, and on
    /// Windows with Git Bash found for it (finding it by hand cost the seeds hours).
    fn claude_spec(&self, task: &Task, argv: Vec<String>) -> agent::Spec {
        let parent_env: BTreeMap<String, String> = std::env::vars().collect();
        #[allow(unused_mut)]
        let mut spec = self.spec(
            task,
            argv,
            claude::inherited_markers(&parent_env, &self.worker.env),
        );
        #[cfg(windows)]
        if !parent_env.contains_key("CLAUDE_CODE_GIT_BASH_PATH")
            && !spec.env.contains_key("CLAUDE_CODE_GIT_BASH_PATH")
            && let Some(bash) =
                claude::find_git_bash(&parent_env, &|p| std::path::Path::new(p).is_file())
        {
            spec.env.insert("CLAUDE_CODE_GIT_BASH_PATH".into(), bash);
        }
        spec
    }

    async fn run_command(&self, argv: &[String], task: &Task, stop: &Stop) -> Ran {
        let spec = self.spec(task, argv.to_vec(), Vec::new());
        let timeout = spec.timeout;
        let attempt = agent::run(spec, stop.future()).await;
        Ran {
            end: generic_end(&attempt.outcome, timeout),
            output: attempt.stdout.clone(),
            usage: Usage::default(),
            attempt,
        }
    }

    /// The conversation the next task joins, and what it has cost so far. A new one is stored
    /// before any process starts.
    async fn join_for(&self, settings: &claude::Settings, cwd: &str) -> (claude::Join, f64) {
        let name = &self.worker.name;
        let current = match self.store.worker_session(name).await {
            Ok(current) => current,
            Err(e) => {
                warn!(worker = %name, "cannot read the worker's session: {e}; starting a new one");
                None
            }
        };
        if let Some(join) = claude::choose(settings.session, current.as_ref(), cwd) {
            return (join, current.map_or(0.0, |s| s.cost_usd));
        }
        let id = new_session_id();
        let fresh = claude::SessionState {
            id: id.clone(),
            cwd: cwd.to_string(),
            tasks: 0,
            input_tokens: 0,
            cost_usd: 0.0,
        };
        if let Err(e) = self.store.save_worker_session(name, &fresh, now_ms()).await {
            warn!(worker = %name, "cannot store the new session id: {e}");
        }
        (claude::Join::Start(id), 0.0)
    }

    /// Forgets a conversation Claude no longer has, so the task starts a new one.
    async fn reset_gone(&self, id: &str, task_id: i64) {
        let name = &self.worker.name;
        let why = format!("conversation {id} is gone (task {task_id})");
        warn!(worker = %name, task = task_id, "{why}; starting a new one and running the task again");
        if let Err(e) = self.store.reset_worker_session(name, &why, now_ms()).await {
            warn!(worker = %name, "cannot reset the session: {e}");
        }
    }

    /// Records the conversation a result reports, with its counters, and says what this task cost:
    /// the CLI reports the whole conversation's cost, so the task is charged the difference. The
    /// record is only updated while it still holds the conversation the task joined, so an
    /// `agentq worker reset-session` made meanwhile stands.
    async fn record_session(
        &self,
        joined: &str,
        result: &claude::ClaudeResult,
        cwd: &str,
    ) -> Usage {
        let name = &self.worker.name;
        let reported = result
            .session_id
            .clone()
            .unwrap_or_else(|| joined.to_string());
        let previous = self
            .store
            .worker_session(name)
            .await
            .ok()
            .flatten()
            .filter(|s| s.id == joined);
        let spent_before = previous.as_ref().map_or(0.0, |s| s.cost_usd);
        let total = result.total_cost_usd.unwrap_or(spent_before);
        if let Some(previous) = previous {
            let after = claude::SessionState {
                id: reported.clone(),
                cwd: cwd.to_string(),
                tasks: previous.tasks + 1,
                input_tokens: previous.input_tokens + result.input_tokens.unwrap_or(0),
                cost_usd: total.max(spent_before),
            };
            if let Err(e) = self
                .store
                .update_worker_session(name, joined, &after, now_ms())
                .await
            {
                warn!(worker = %name, "cannot store the session: {e}");
            }
        }
        Usage {
            session_id: Some(reported),
            cost_usd: result.total_cost_usd.map(|t| (t - spent_before).max(0.0)),
            input_tokens: result.input_tokens.map(|t| t as i64),
            output_tokens: result.output_tokens.map(|t| t as i64),
            num_turns: result.num_turns.map(|t| t as i64),
        }
    }

    /// One Claude task in persistent mode: served by the worker's long-lived process, started (or
    /// replaced) when there is none, when it is in another conversation than the one the task
    /// should join, or when it has served `recycle_after_tasks`.
    async fn run_persistent(&self, settings: &claude::Settings, task: &Task, stop: &Stop) -> Ran {
        let name = &self.worker.name;
        let cwd = self.worker.cwd.to_string_lossy().into_owned();
        let bin = claude::resolve_bin(settings, std::env::var("AGENTQ_CLAUDE_BIN").ok().as_deref());
        let mut spec = self.claude_spec(task, Vec::new());
        // The process outlives this task: per-task variables would be stale for the next ones.
        spec.env.remove("AGENTQ_TASK_ID");
        spec.env.remove("AGENTQ_ATTEMPT");
        let grace = self.worker.limits.kill_timeout;
        let mut slot = self.persistent.lock().await;
        let mut reset_once = false;
        let started = Instant::now();
        let served = |end: Ended, output: String, usage: Usage, stderr: String| Ran {
            end,
            output,
            usage,
            attempt: agent::Attempt {
                outcome: Outcome::Served,
                stdout: String::new(),
                stdout_truncated: false,
                stderr_tail: stderr,
                duration: started.elapsed(),
                pid: None,
            },
        };
        loop {
            let (join, spent) = self.join_for(settings, &cwd).await;
            // A process that died while idle is never handed a task.
            let reusable = slot.as_mut().is_some_and(|p| {
                !p.has_exited() && {
                    matches!(&join, claude::Join::Resume(id) if *id == p.session_id)
                        && settings.recycle_after_tasks.is_none_or(|n| p.served < n)
                        // Its --max-budget-usd was fixed at its start: enough left for a task?
                        && settings.max_budget_usd.is_none_or(|b| p.budget_left.is_none_or(|left| left >= b))
                        && self
                            .worker
                            .max_memory
                            .is_none_or(|max| p.rss().is_none_or(|rss| rss <= max))
                }
            });
            if !reusable {
                if let Some(old) = slot.take() {
                    let rss_mb = old.rss().map(|b| b / (1 << 20));
                    info!(worker = %name, served = old.served, rss_mb, "replacing the claude process (its conversation goes on)");
                    old.shutdown(grace).await;
                }
                let budgeted = claude::Settings {
                    max_budget_usd: settings.max_budget_usd.map(|b| b + spent),
                    ..settings.clone()
                };
                let argv = persistent::argv(&bin, &budgeted, &join);
                match Persistent::spawn(&argv, &spec.cwd, &spec.env, &spec.env_remove, join.id()) {
                    Ok(p) => {
                        info!(worker = %name, pid = p.pid(), session = join.id(), "started a long-lived claude process");
                        *slot = Some(p);
                    }
                    Err(e) => {
                        let retryable = !matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                        );
                        let error = format!("could not start {}: {e}", bin.display());
                        return served(
                            Ended::Attempt(failure(error, retryable)),
                            String::new(),
                            Usage::default(),
                            String::new(),
                        );
                    }
                }
            }
            let process = slot.as_mut().expect("a process was just put there");
            let end = process
                .run(&task.prompt, spec.timeout, grace, stop.future())
                .await;
            let stderr = process.stderr_tail();
            match end {
                TaskEnd::Result { result, limit } => {
                    // A resume of a conversation that is gone answers with an error result that ran
                    // no turn, then says why on stderr and exits.
                    let nothing_ran = result.is_error && result.num_turns.unwrap_or(0) == 0;
                    if nothing_ran && matches!(join, claude::Join::Resume(_)) && !reset_once {
                        let process = slot.as_mut().expect("it just answered");
                        if process.exited_within(Duration::from_secs(2)).await {
                            let stderr = process.stderr_tail();
                            *slot = None;
                            if claude::conversation_gone(&stderr, &result.text) {
                                reset_once = true;
                                let why = format!(
                                    "conversation {} is gone (task {})",
                                    join.id(),
                                    task.id
                                );
                                warn!(worker = %name, task = task.id, "{why}; starting a new one and running the task again");
                                if let Err(e) =
                                    self.store.reset_worker_session(name, &why, now_ms()).await
                                {
                                    warn!(worker = %name, "cannot reset the session: {e}");
                                }
                                continue;
                            }
                        }
                    }
                    if slot.as_mut().is_some_and(|p| p.has_exited()) {
                        *slot = None;
                    }
                    if let Some(limit) =
                        limit.or_else(|| claude::limit_of(&result, chrono::Local::now()))
                    {
                        return served(
                            Ended::Limited(limit),
                            result.text.clone(),
                            Usage::default(),
                            stderr,
                        );
                    }
                    let usage = self.record_session(join.id(), &result, &cwd).await;
                    if let (Some(process), Some(total)) = (slot.as_mut(), result.total_cost_usd) {
                        process.budget_left = settings.max_budget_usd.map(|b| b + spent - total);
                    }
                    let end = if result.is_error {
                        let (reason, retryable) = result.failure();
                        failure(reason, retryable)
                    } else {
                        AttemptEnd::Succeeded
                    };
                    let mut text = result.text.clone();
                    let cut = cap_text(&mut text, self.config.daemon.output_cap as usize);
                    let mut ran = served(Ended::Attempt(end), text, usage, String::new());
                    ran.attempt.stdout_truncated = cut;
                    return ran;
                }
                TaskEnd::TimedOut { kept } => {
                    if !kept {
                        *slot = None;
                    }
                    let how = if kept {
                        "interrupted; the process lives on"
                    } else {
                        "the process did not answer the interrupt and was killed"
                    };
                    let reason = format!(
                        "timeout after {} ({how})",
                        humantime::format_duration(spec.timeout)
                    );
                    return served(
                        Ended::Attempt(failure(reason, true)),
                        String::new(),
                        Usage::default(),
                        stderr,
                    );
                }
                TaskEnd::Stopped { kept } => {
                    if !kept {
                        *slot = None;
                    }
                    return served(Ended::Interrupted, String::new(), Usage::default(), stderr);
                }
                TaskEnd::Died { stderr } => {
                    *slot = None;
                    if matches!(join, claude::Join::Resume(_))
                        && !reset_once
                        && claude::conversation_gone(&stderr, "")
                    {
                        reset_once = true;
                        self.reset_gone(join.id(), task.id).await;
                        continue;
                    }
                    let last = stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output");
                    let reason = format!("the claude process ended mid-task: {}", last.trim());
                    return served(
                        Ended::Attempt(failure(reason, true)),
                        String::new(),
                        Usage::default(),
                        stderr,
                    );
                }
            }
        }
    }

    /// One Claude task in exec mode: join the worker's conversation (or start one, with an id stored
    /// before the process starts), run, and record the conversation the result reports. A resume
    /// that finds the conversation gone starts a new one and runs again, within the same attempt.
    async fn run_claude(&self, settings: &claude::Settings, task: &Task, stop: &Stop) -> Ran {
        let cwd = self.worker.cwd.to_string_lossy().into_owned();
        let bin = claude::resolve_bin(settings, std::env::var("AGENTQ_CLAUDE_BIN").ok().as_deref());
        let mut reset_once = false;
        loop {
            let (join, spent) = self.join_for(settings, &cwd).await;
            // The CLI checks --max-budget-usd against the whole conversation's cost.
            let budgeted = claude::Settings {
                max_budget_usd: settings.max_budget_usd.map(|b| b + spent),
                ..settings.clone()
            };
            let spec = self.claude_spec(task, claude::exec_argv(&bin, &budgeted, &join));
            let timeout = spec.timeout;
            let mut attempt = agent::run(spec, stop.future()).await;
            let result = claude::ClaudeResult::from_exec_stdout(&attempt.stdout);
            let Outcome::Exited(code) = attempt.outcome else {
                return Ran {
                    end: generic_end(&attempt.outcome, timeout),
                    output: result
                        .map(|r| r.text)
                        .unwrap_or_else(|| attempt.stdout.clone()),
                    usage: Usage {
                        session_id: Some(join.id().to_string()),
                        ..Usage::default()
                    },
                    attempt,
                };
            };
            let Some(mut result) = result else {
                if matches!(join, claude::Join::Resume(_))
                    && !reset_once
                    && claude::conversation_gone(&attempt.stderr_tail, &attempt.stdout)
                {
                    reset_once = true;
                    self.reset_gone(join.id(), task.id).await;
                    continue;
                }
                let last = attempt
                    .stderr_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no result on stdout");
                return Ran {
                    end: Ended::Attempt(failure(
                        format!("claude exited with code {code}: {}", last.trim()),
                        true,
                    )),
                    output: attempt.stdout.clone(),
                    usage: Usage {
                        session_id: Some(join.id().to_string()),
                        ..Usage::default()
                    },
                    attempt,
                };
            };
            let usage = self.record_session(join.id(), &result, &cwd).await;
            if let Some(limit) = claude::limit_of(&result, chrono::Local::now()) {
                return Ran {
                    end: Ended::Limited(limit),
                    output: result.text.clone(),
                    usage,
                    attempt,
                };
            }
            let end = if result.is_error || code != 0 {
                let (reason, retryable) = result.failure();
                failure(reason, retryable)
            } else {
                AttemptEnd::Succeeded
            };
            attempt.stdout_truncated |=
                cap_text(&mut result.text, self.config.daemon.output_cap as usize);
            return Ran {
                end: Ended::Attempt(end),
                output: result.text,
                usage,
                attempt,
            };
        }
    }

    async fn note(&self, task_id: i64, kind: &str, message: &str) {
        let event = NewEvent {
            task_id: Some(task_id),
            worker: Some(self.worker.name.clone()),
            kind: kind.into(),
            message: message.into(),
            now: now_ms(),
        };
        if let Err(e) = self.store.record_event(&event).await {
            warn!(task = task_id, "cannot record event {kind}: {e}");
        }
    }
}

/// How long a worker pauses for a limit whose reset time was not given.
const UNKNOWN_LIMIT_PAUSE_MS: i64 = 60_000;

/// The cancellation signals an attempt listens to.
struct Stop {
    /// The claim is gone (cancelled, or taken over).
    lost: CancellationToken,
    /// The daemon is shutting down and its grace is over.
    hurry: CancellationToken,
}

impl Stop {
    fn future(&self) -> impl std::future::Future<Output = ()> + use<> {
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
struct Ran {
    end: Ended,
    /// The result text.
    output: String,
    usage: Usage,
    attempt: agent::Attempt,
}

enum Ended {
    /// Stopped from outside: the claim was lost, or the daemon is shutting down.
    Interrupted,
    /// The agent hit a usage limit: not the task's fault, so no attempt is spent.
    Limited(claude::Limit),
    Attempt(AttemptEnd),
}

/// How an attempt ended, from how its process ended (the agent's own output aside).
fn generic_end(outcome: &Outcome, timeout: Duration) -> Ended {
    Ended::Attempt(match outcome {
        Outcome::Interrupted => return Ended::Interrupted,
        Outcome::Exited(0) => AttemptEnd::Succeeded,
        Outcome::Exited(code) => failure(format!("exit code {code}"), true),
        Outcome::Signalled(signal) => failure(
            format!("crashed (signal {signal}{})", signal_name(*signal)),
            true,
        ),
        Outcome::TimedOut => failure(
            format!("timeout after {}", humantime::format_duration(timeout)),
            true,
        ),
        Outcome::SpawnFailed { error, retryable } => failure(error.clone(), *retryable),
        Outcome::Served => AttemptEnd::Succeeded,
    })
}

/// Cuts `text` to at most `cap` bytes, on a character boundary. Returns whether it cut.
fn cap_text(text: &mut String, cap: usize) -> bool {
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

/// A new conversation id: a random (version 4) UUID, as `--session-id` requires.
fn new_session_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn failure(reason: String, retryable: bool) -> AttemptEnd {
    AttemptEnd::Failed { reason, retryable }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| format!(", {}", s.as_str()))
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
