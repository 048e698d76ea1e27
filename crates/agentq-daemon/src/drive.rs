//! How a runner drives an agent through one attempt, whatever the agent: the worker loop's half
//! that talks to a [`Driver`].
//!
//! Both ways of running an agent are written once here, for every driver. **Exec**: settle which
//! conversation the task joins (a new id is stored before the process starts when agentq names
//! it), ask the driver for the command, run it under the watchdogs (`agent::run`), and let the
//! driver read what it printed; a resume of a conversation that is gone starts a new one and runs
//! the task again within the same attempt. **Long-lived**: the worker's process (`persistent.rs`)
//! serves the task, and is replaced when it died, when the task should join another conversation,
//! after `recycle_after_tasks`, or when it holds too much memory. Either way the reply's tokens,
//! cost and conversation are recorded on the worker's session, a usage limit pauses the worker,
//! and an agent whose program is not installed makes its tasks wait (the worker pauses, its
//! tasks are not failed) until it is.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::worker::{Ended, Ran, Runner, Stop, Watchdogs, cap_text, generic_end};
use agentq_agents::agent::{self, Outcome};
use agentq_agents::persistent::{Persistent, TaskEnd};
use agentq_agents::{Driver, End, Join, LongLived, Output, Read, Reply, SessionState, last_line};
use agentq_core::domain::{AttemptEnd, Cause};
use agentq_store::{Task, Usage, now_ms};

/// The conversation a task joins.
pub(crate) struct Joined {
    /// `None`: the agent keeps no conversation.
    join: Option<Join>,
    /// The worker's record of that conversation as it was read before the run (a new one agentq
    /// named: as it was stored). Its counters are what the run's are charged against; `None`
    /// for a pool task's conversation or one the agent will name.
    known: Option<SessionState>,
}

impl Joined {
    fn none(join: Option<Join>) -> Joined {
        Joined { join, known: None }
    }

    /// What the conversation has cost so far.
    fn spent_usd(&self) -> f64 {
        self.known.as_ref().map_or(0.0, |s| s.cost_usd)
    }

    fn id(&self) -> Option<&str> {
        self.join.as_ref().and_then(Join::id)
    }

    fn resumes(&self) -> bool {
        self.join.as_ref().is_some_and(Join::resumes)
    }
}

/// How long a worker waits at first for its agent's program to be installed; it doubles with
/// each wait in a row, up to [`MISSING_MAX_WAIT`].
const MISSING_FIRST_WAIT: Duration = Duration::from_secs(15);
const MISSING_MAX_WAIT: Duration = Duration::from_secs(600);

impl Runner {
    /// One task in a process of its own.
    pub(crate) async fn run_exec(
        &self,
        driver: &dyn Driver,
        task: &Task,
        dir: &std::path::Path,
        stop: &Stop,
    ) -> Ran {
        let cwd = dir.to_string_lossy().into_owned();
        let program = driver.program();
        let mut reset_once = false;
        loop {
            let joined = self.join_for(driver, &cwd).await;
            let argv = driver.command(&program, joined.join.as_ref(), joined.spent_usd());
            let mut spec = self.spec(driver, task, argv, dir);
            spec.final_line = driver.final_line();
            spec.keep_tail = driver.output_is_a_stream();
            if !driver.prints_while_working() {
                spec.idle_timeout = None;
            }
            let watchdogs = Watchdogs::of(&spec);
            let mut attempt = agent::run(spec, stop.future()).await;
            let unread = |attempt: agent::Attempt, end: Ended| Ran {
                end,
                output: attempt.stdout.clone(),
                usage: Usage {
                    session_id: joined.id().map(str::to_string),
                    ..Usage::default()
                },
                attempt,
            };
            let code = match &attempt.outcome {
                Outcome::Exited(code) => Some(*code),
                // Stopped after its final line: what it printed stands.
                Outcome::Lingered => None,
                Outcome::SpawnFailed { missing: true, .. } if driver.install_hint().is_some() => {
                    let end = self.wait_for_program(driver, &program).await;
                    return unread(attempt, end);
                }
                other => {
                    let end = generic_end(other, &watchdogs);
                    return unread(attempt, end);
                }
            };
            self.program_found();
            let out = Output {
                stdout: &attempt.stdout,
                stderr: &attempt.stderr_tail,
                exit_code: code,
                now: chrono::Local::now(),
            };
            let reply = match driver.read(&out) {
                Read::Reply(reply) => reply,
                Read::Gone if joined.resumes() && !reset_once => {
                    reset_once = true;
                    self.reset_gone(joined.id().unwrap_or(""), task.id).await;
                    continue;
                }
                Read::Gone | Read::Nothing => {
                    let end = match code {
                        None => generic_end(&attempt.outcome, &watchdogs),
                        Some(code) => Ended::Attempt(AttemptEnd::failed(
                            Cause::Crashed,
                            agentq_agents::crashed(code, &attempt.stderr_tail),
                        )),
                    };
                    return unread(attempt, end);
                }
            };
            if let End::Full(why) = &reply.end
                && joined.resumes()
                && !reset_once
            {
                // The conversation has no room left: a new one takes the task, within this
                // attempt.
                reset_once = true;
                let id = joined.id().unwrap_or("");
                self.reset_session(
                    &format!("conversation {id} is full ({why}; task {})", task.id),
                    task.id,
                )
                .await;
                continue;
            }
            let usage = self.record_session(driver, &joined, &reply, &cwd).await;
            let mut text = reply.text;
            let end = match reply.end {
                End::Limited(limit) => Ended::Limited(limit),
                end => {
                    attempt.stdout_truncated |=
                        cap_text(&mut text, self.config.daemon.output_cap as usize);
                    Ended::Attempt(attempt_end(end))
                }
            };
            return Ran {
                end,
                output: text,
                usage,
                attempt,
            };
        }
    }

    /// The conversation the next task joins, and what it has cost so far. A new one is stored
    /// before any process starts when agentq names it; one the agent names is stored from its
    /// reply.
    async fn join_for(&self, driver: &dyn Driver, cwd: &str) -> Joined {
        let name = &self.worker.name;
        let Some(conversation) = driver.conversation() else {
            return Joined::none(None);
        };
        let new = || match conversation.named_by_caller {
            true => Join::Start(agentq_agents::new_session_id()),
            false => Join::New,
        };
        if self.pool {
            // Its own conversation, recorded on the task only: the worker's is not touched.
            return Joined::none(Some(new()));
        }
        let current = match self.store.worker_session(name).await {
            Ok(current) => current,
            Err(e) => {
                warn!(worker = %name, "cannot read the worker's session: {e}; starting a new one");
                None
            }
        };
        if let Some(join) =
            agentq_agents::choose(conversation.policy, current.as_ref(), driver.name(), cwd)
        {
            return Joined {
                join: Some(join),
                known: current,
            };
        }
        let join = new();
        let Join::Start(id) = &join else {
            return Joined::none(Some(join));
        };
        let fresh = SessionState {
            id: id.clone(),
            ..SessionState::empty(driver.name(), cwd)
        };
        if let Err(e) = self.store.save_worker_session(name, &fresh, now_ms()).await {
            warn!(worker = %name, "cannot store the new session id: {e}");
        }
        Joined {
            join: Some(join),
            known: Some(fresh),
        }
    }

    /// Forgets a conversation the agent no longer has, so the task starts a new one.
    async fn reset_gone(&self, id: &str, task_id: i64) {
        self.reset_session(
            &format!("conversation {id} is gone (task {task_id})"),
            task_id,
        )
        .await;
    }

    /// Forgets the worker's conversation, for `why`, so the task starts a new one.
    async fn reset_session(&self, why: &str, task_id: i64) {
        let name = &self.worker.name;
        warn!(worker = %name, task = task_id, "{why}; starting a new one and running the task again");
        if let Err(e) = self.store.reset_worker_session(name, why, now_ms()).await {
            warn!(worker = %name, "cannot reset the session: {e}");
        }
    }

    /// Records the conversation a reply reports, with its counters, and says what this task
    /// used: agents that count the whole conversation (Claude's cost, Codex's tokens) are charged
    /// the difference. The record is only updated while it still holds the conversation the task
    /// joined, so an `agentq worker reset-session` made meanwhile stands; a conversation the
    /// agent named itself is stored here, from its first reply.
    async fn record_session(
        &self,
        driver: &dyn Driver,
        joined: &Joined,
        reply: &Reply,
        cwd: &str,
    ) -> Usage {
        let name = &self.worker.name;
        let reported = reply
            .session
            .clone()
            .or_else(|| joined.id().map(str::to_string));
        let previous = joined.known.clone();
        // An agent may answer in another conversation than the one it was asked to continue
        // (Codex starts a new thread when it finds no thread of that name): its counters start
        // from nothing.
        let continued = match (&reply.session, joined.id()) {
            (Some(said), Some(asked)) => said == asked,
            _ => true,
        };
        let before = previous
            .clone()
            .filter(|_| continued)
            .unwrap_or(SessionState::empty(driver.name(), cwd));
        let u = reply.usage;
        let cost = u.cost_usd.map(|c| c.split(before.cost_usd));
        let input = u.input_tokens.map(|c| c.split(before.input_tokens));
        let output = u.output_tokens.map(|c| c.split(before.output_tokens));
        let after = SessionState {
            id: reported.clone().unwrap_or_default(),
            tasks: before.tasks + 1,
            input_tokens: input.map_or(before.input_tokens, |(_, total)| total),
            output_tokens: output.map_or(before.output_tokens, |(_, total)| total),
            cost_usd: cost.map_or(before.cost_usd, |(_, total)| total),
            ..before
        };
        let stored = match (&previous, &joined.join) {
            (Some(_), Some(join)) => {
                let joined_id = join.id().unwrap_or_default();
                self.store
                    .update_worker_session(name, joined_id, &after, now_ms())
                    .await
                    .map(|_| ())
            }
            // A conversation the agent named: from now on it is the worker's, once a turn in it
            // went through (a retry of a first turn that failed starts afresh, rather than
            // continue a conversation that holds only the failed prompt).
            (None, Some(Join::New))
                if !self.pool && reported.is_some() && reply.end == End::Done =>
            {
                self.store.save_worker_session(name, &after, now_ms()).await
            }
            _ => Ok(()),
        };
        if let Err(e) = stored {
            warn!(worker = %name, "cannot store the session: {e}");
        }
        Usage {
            session_id: reported,
            cost_usd: cost.map(|(run, _)| run),
            input_tokens: input.map(|(run, _)| run as i64),
            output_tokens: output.map(|(run, _)| run as i64),
            num_turns: u.turns.map(|t| t as i64),
        }
    }

    /// The agent's program is not installed: the worker pauses (15 s at first, doubling up to
    /// 10 minutes) and the task goes back to the queue unspent, so the worker's tasks wait until
    /// the program appears rather than fail.
    async fn wait_for_program(&self, driver: &dyn Driver, program: &std::path::Path) -> Ended {
        let name = &self.worker.name;
        let waits = {
            let mut life = self.life.lock().unwrap_or_else(|p| p.into_inner());
            life.missing += 1;
            life.missing
        };
        let wait = MISSING_FIRST_WAIT
            .saturating_mul(1 << (waits - 1).min(10))
            .min(MISSING_MAX_WAIT);
        let reason = format!(
            "{} is not installed ({} not found); {}; tasks wait",
            driver.name(),
            program.display(),
            driver.install_advice()
        );
        let until = now_ms() + wait.as_millis() as i64;
        if let Err(e) = self
            .store
            .pause_worker(name, until, &reason, now_ms())
            .await
        {
            warn!(worker = %name, "cannot record the pause: {e}");
        }
        warn!(worker = %name, "{reason}; looking again in {}", humantime::format_duration(wait));
        Ended::Released(reason)
    }

    /// The program started: the next time it is missing, the wait starts short again.
    fn program_found(&self) {
        self.life.lock().unwrap_or_else(|p| p.into_inner()).missing = 0;
    }

    /// One task served by the worker's long-lived process: started (or replaced) when there is
    /// none, when it is in another conversation than the one the task should join, when it has
    /// served `recycle_after_tasks`, when its budget is spent or when it holds too much memory.
    pub(crate) async fn run_long_lived(
        &self,
        driver: &dyn Driver,
        protocol: &dyn LongLived,
        task: &Task,
        dir: &std::path::Path,
        stop: &Stop,
    ) -> Ran {
        let mut spec = self.spec(driver, task, Vec::new(), dir);
        // The process outlives this task: per-task variables would be stale for the next ones.
        spec.env.remove("AGENTQ_TASK_ID");
        spec.env.remove("AGENTQ_ATTEMPT");
        let mut served = Serving {
            driver,
            protocol,
            task,
            spec,
            cwd: dir.to_string_lossy().into_owned(),
            program: driver.program(),
            started: Instant::now(),
            peak: None,
        };
        let mut slot = self.persistent.lock().await;
        let mut reset_once = false;
        loop {
            let joined = match self.ready_process(&served, &mut slot, stop).await {
                Ok(joined) => joined,
                Err(end) => return served.ran(end, String::new()),
            };
            match self
                .serve_task(&mut served, &mut slot, &joined, reset_once, stop)
                .await
            {
                Some(ran) => return ran,
                // The conversation it was to continue is gone: a new one, within this attempt.
                None => reset_once = true,
            }
        }
    }

    /// Makes sure the slot holds a live process in the conversation the task joins, replacing
    /// one that died while idle (its death counts), that is in another conversation, that served
    /// `recycle_after_tasks`, whose budget is spent or that holds too much memory. `Err`: how
    /// the attempt ends instead.
    async fn ready_process(
        &self,
        served: &Serving<'_>,
        slot: &mut Option<Persistent>,
        stop: &Stop,
    ) -> Result<Joined, Ended> {
        let (name, protocol) = (&self.worker.name, served.protocol);
        let agent_name = served.driver.name();
        // A process that died while idle is never handed a task; its death counts.
        if slot.as_mut().is_some_and(|p| p.has_exited()) {
            let p = slot.take().expect("checked");
            let (uptime, stderr) = (p.started.elapsed(), p.stderr_tail());
            let why = format!("while idle: {}", last_line(&stderr, "no output"));
            if !self.process_died(uptime, &why).await {
                return Err(Ended::Released("the worker is errored".into()));
            }
        }
        let joined = self.join_for(served.driver, &served.cwd).await;
        let join = joined.join.clone().unwrap_or(Join::New);
        let reusable = slot.as_mut().is_some_and(|p| {
            !p.has_exited() && {
                matches!(&join, Join::Resume(id) if *id == p.session_id)
                    && protocol.recycle_after_tasks().is_none_or(|n| p.served < n)
                    // Its budget was fixed at its start: enough left for a task?
                    && protocol.budget_usd().is_none_or(|b| p.budget_left.is_none_or(|left| left >= b))
                    && self
                        .worker
                        .limits
                        .max_memory
                        .is_none_or(|max| p.rss().is_none_or(|rss| rss <= max))
            }
        });
        if reusable {
            return Ok(joined);
        }
        let grace = self.worker.limits.kill_timeout;
        if let Some(old) = slot.take() {
            let rss_mb = old.rss().map(|b| b / (1 << 20));
            info!(worker = %name, served = old.served, rss_mb, "replacing the {agent_name} process (its conversation goes on)");
            old.shutdown(grace).await;
        }
        let argv = protocol.command(&served.program, &join, joined.spent_usd());
        if !self.restart_delay(stop).await {
            return Err(Ended::Interrupted);
        }
        let booking = agent::Booking {
            book: self.book.clone(),
            worker: name.clone(),
            task: None,
            keep: self.contained.keep(&self.worker.limits),
        };
        let spec = &served.spec;
        // Spawning in a missing folder fails as a missing program does; say which it is.
        if !spec.cwd.is_dir() {
            return Err(Ended::Attempt(AttemptEnd::failed(
                Cause::Config,
                format!(
                    "the working folder {} does not exist (worker cwd)",
                    spec.cwd.display()
                ),
            )));
        }
        match Persistent::spawn(
            &argv,
            &spec.cwd,
            &spec.env,
            &spec.env_remove,
            join.id().unwrap_or_default(),
            Some(&booking),
        ) {
            Ok(p) => {
                info!(worker = %name, pid = p.pid(), session = join.id(), "started a long-lived {agent_name} process");
                self.program_found();
                *slot = Some(p);
                Ok(joined)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.wait_for_program(served.driver, &served.program).await)
            }
            Err(e) => {
                let error = format!("could not start {}: {e}", served.program.display());
                let cause = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => Cause::Config,
                    _ => Cause::SpawnFailed,
                };
                Err(Ended::Attempt(AttemptEnd::failed(cause, error)))
            }
        }
    }

    /// Hands the task to the process in the slot and makes what came back the attempt's end.
    /// `None`: the conversation it was asked to continue is gone (reset): run it again in a new
    /// one.
    async fn serve_task(
        &self,
        served: &mut Serving<'_>,
        slot: &mut Option<Persistent>,
        joined: &Joined,
        reset_once: bool,
        stop: &Stop,
    ) -> Option<Ran> {
        let (task, protocol) = (served.task, served.protocol);
        let process = slot.as_mut().expect("a process was made ready");
        let end = process
            .run_watched(
                protocol,
                &task.prompt,
                served.spec.timeout,
                served.spec.idle_timeout,
                self.memory_policy(Some(task)),
                served.spec.log.clone(),
                served.spec.transcript.clone(),
                self.worker.limits.kill_timeout,
                stop.future(),
            )
            .await;
        served.peak = process.last_peak;
        let uptime = process.started.elapsed();
        let stderr = process.stderr_tail();
        let watchdogs = Watchdogs::of(&served.spec);
        let nothing = |end: Ended, stderr: String| Some(served.ran(end, stderr));
        match end {
            TaskEnd::Result { reply, limit } => {
                self.after_result(served, slot, joined, reset_once, reply, limit, stderr)
                    .await
            }
            TaskEnd::TimedOut { kept } | TaskEnd::IdleTimedOut { kept } => {
                if !kept {
                    *slot = None;
                }
                let how = if kept {
                    "interrupted; the process lives on"
                } else {
                    "the process did not answer the interrupt and was killed"
                };
                let outcome = if matches!(end, TaskEnd::TimedOut { .. }) {
                    Outcome::TimedOut
                } else {
                    Outcome::IdleTimedOut
                };
                let Ended::Attempt(AttemptEnd::Failed { cause, reason, .. }) =
                    generic_end(&outcome, &watchdogs)
                else {
                    unreachable!("a timeout is a failure")
                };
                nothing(
                    Ended::Attempt(AttemptEnd::failed(cause, format!("{reason} ({how})"))),
                    stderr,
                )
            }
            TaskEnd::MemoryLimit(rss) => {
                *slot = None;
                nothing(generic_end(&Outcome::MemoryLimit(rss), &watchdogs), stderr)
            }
            TaskEnd::Stopped { kept } => {
                if !kept {
                    *slot = None;
                }
                nothing(Ended::Interrupted, stderr)
            }
            TaskEnd::Died { stderr, answered } => {
                *slot = None;
                if joined.resumes() && !reset_once && protocol.gone(&stderr, "") {
                    self.reset_gone(joined.id().unwrap_or_default(), task.id)
                        .await;
                    return None;
                }
                let end = self
                    .after_death(served.driver.name(), uptime, &stderr, answered)
                    .await;
                nothing(end, stderr)
            }
        }
    }

    /// The task's result: a limit pauses the worker; anything else is recorded on the worker's
    /// conversation and ends the attempt. A resume whose conversation is gone answers with an
    /// error that ran no turn, then says why on stderr and exits: `None`, run it again.
    #[allow(clippy::too_many_arguments)]
    async fn after_result(
        &self,
        served: &Serving<'_>,
        slot: &mut Option<Persistent>,
        joined: &Joined,
        reset_once: bool,
        reply: Reply,
        limit: Option<agentq_agents::Limit>,
        stderr: String,
    ) -> Option<Ran> {
        let nothing_ran = reply.end != End::Done && reply.usage.turns.unwrap_or(0) == 0;
        if nothing_ran && joined.resumes() && !reset_once {
            let process = slot.as_mut().expect("it just answered");
            if process.exited_within(Duration::from_secs(2)).await {
                let stderr = process.stderr_tail();
                *slot = None;
                if served.protocol.gone(&stderr, &reply.text) {
                    self.reset_gone(joined.id().unwrap_or_default(), served.task.id)
                        .await;
                    return None;
                }
            }
        }
        if slot.as_mut().is_some_and(|p| p.has_exited()) {
            *slot = None;
        }
        let limit = limit.or(match &reply.end {
            End::Limited(l) => Some(l.clone()),
            _ => None,
        });
        if let Some(limit) = limit {
            let mut ran = served.ran(Ended::Limited(limit), stderr);
            ran.output = reply.text;
            return Some(ran);
        }
        let usage = self
            .record_session(served.driver, joined, &reply, &served.cwd)
            .await;
        if let (Some(process), Some(budget)) = (slot.as_mut(), served.protocol.budget_usd())
            && let Some(agentq_agents::Counted::Conversation(total)) = reply.usage.cost_usd
        {
            process.budget_left = Some(budget + joined.spent_usd() - total);
        }
        let mut text = reply.text;
        let cut = cap_text(&mut text, self.config.daemon.output_cap as usize);
        let mut ran = served.ran(Ended::Attempt(attempt_end(reply.end)), String::new());
        ran.output = text;
        ran.usage = usage;
        ran.attempt.stdout_truncated = cut;
        Some(ran)
    }

    /// The long-lived process ended mid-task: the restart policy counts the death, and the task
    /// fails as crashed, unless the process died soon after its start without a word for the
    /// task: that is the worker's fault (a bad binary, a bad setting), and the task waits,
    /// unspent, while the restart policy decides about the worker.
    async fn after_death(
        &self,
        agent_name: &str,
        uptime: Duration,
        stderr: &str,
        answered: bool,
    ) -> Ended {
        if let Some(max) = self.worker.limits.max_processes
            && stderr.contains(agentq_platform::process::PROCESS_LIMIT_MARK)
        {
            let _ = self
                .process_died(uptime, "mid-task: over max_processes")
                .await;
            return Ended::Attempt(AttemptEnd::failed(
                Cause::ProcessLimit,
                format!(
                    "process_limit: the {agent_name} process and what it started were more than {max} processes at once (max_processes); all were killed"
                ),
            ));
        }
        let last = last_line(stderr, "no output");
        let alive = self
            .process_died(uptime, &format!("mid-task: {last}"))
            .await;
        if !answered && uptime < self.worker.limits.restart.min_uptime {
            let waits = if alive {
                ""
            } else {
                " for `agentq worker restart`"
            };
            return Ended::Released(format!(
                "the {agent_name} process died at its start ({last}); the task waits{waits}"
            ));
        }
        Ended::Attempt(AttemptEnd::failed(
            Cause::Crashed,
            format!("crashed: the {agent_name} process ended mid-task: {last}"),
        ))
    }
}

/// What serving one task on a long-lived process needs throughout.
struct Serving<'a> {
    driver: &'a dyn Driver,
    protocol: &'a dyn LongLived,
    task: &'a Task,
    spec: agent::Spec,
    cwd: String,
    program: std::path::PathBuf,
    started: Instant,
    /// The most memory the process's group held while serving, as last sampled.
    peak: Option<u64>,
}

impl Serving<'_> {
    /// The attempt's record: no output of its own (the reply's is set by the caller), the
    /// time it took and its memory peak.
    fn ran(&self, end: Ended, stderr: String) -> Ran {
        Ran {
            end,
            output: String::new(),
            usage: Usage::default(),
            attempt: agent::Attempt {
                outcome: Outcome::Served,
                stdout: String::new(),
                stdout_truncated: false,
                stderr_tail: stderr,
                duration: self.started.elapsed(),
                pid: None,
                memory_peak: self.peak,
            },
        }
    }
}

/// A reply's end as the attempt's (a limit is handled before).
fn attempt_end(end: End) -> AttemptEnd {
    match end {
        End::Done => AttemptEnd::Succeeded,
        End::Failed {
            cause,
            reason,
            retryable,
        } => AttemptEnd::Failed {
            cause,
            reason,
            retryable,
        },
        End::Limited(limit) => AttemptEnd::failed(Cause::AgentError, limit.message),
        // A new conversation that is full at once: the task itself is too large.
        End::Full(reason) => AttemptEnd::Failed {
            cause: Cause::BadInput,
            reason,
            retryable: false,
        },
    }
}
