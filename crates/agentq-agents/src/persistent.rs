//! An agent's long-lived mode: one process per worker, serving its tasks one after another (Claude's
//! `claude -p --input-format=stream-json --output-format=stream-json --verbose`).
//!
//! Each task is one line on stdin; the process answers with lines (for Claude: `system` init,
//! `assistant` messages, ...) and one result line that ends the task. What the lines say is the
//! driver's to read ([`LongLived`]); this module owns the process. The process and its
//! conversation live on between tasks, so a task pays neither the agent's start-up nor a resume.
//!
//! Supervision: a task past its timeout (or one that must stop) gets an `interrupt` control request,
//! which ends it with a result within milliseconds while the process lives on; if no result follows
//! within the grace period, the whole process group is killed and the next task starts a new
//! process that resumes the conversation. A process that dies mid-task is likewise replaced, and
//! the task retried. The runner owns the process and its group; dropping a [`Persistent`] kills
//! the group.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentq_platform::process::{self, Child, Tree};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use crate::transcript::Transcript;
use crate::{Limit, Line, LongLived, Reply};

/// How one task in the long-lived process ended.
#[derive(Debug)]
pub enum TaskEnd {
    /// The result line, and a limit reported on the way, if any.
    Result { reply: Reply, limit: Option<Limit> },
    /// Past its timeout; `kept` says whether the interrupt worked (the process lives on).
    TimedOut { kept: bool },
    /// No output for `idle_timeout`; `kept` as above.
    IdleTimedOut { kept: bool },
    /// Its group held this many bytes, over `max_memory`: killed, to give the memory back.
    MemoryLimit(u64),
    /// Stopped from outside; `kept` as above.
    Stopped { kept: bool },
    /// The process ended without a result. `stderr` is the end of what it wrote; `answered`,
    /// whether it wrote any line for this task before it died.
    Died { stderr: String, answered: bool },
}

pub struct Persistent {
    child: Child,
    tree: Tree,
    /// `None` once closed (dropping it is what closes the pipe: `shutdown()` does not).
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// The transcript of the task being served, which its stderr goes to as well.
    serving: Arc<Mutex<Option<Arc<Transcript>>>>,
    /// The conversation this process is in, as last reported.
    pub session_id: String,
    /// Tasks served since it started.
    pub served: u32,
    /// What is left of the `--max-budget-usd` it was started with, after its last result.
    pub budget_left: Option<f64>,
    pub started: Instant,
    requests: u64,
    /// How long writing an interrupt may take.
    interrupt_grace: Duration,
    /// The most resident memory its group held during the last task.
    pub last_peak: Option<u64>,
    /// Lines it wrote for the task being served.
    lines_read: u64,
    _recorded: Option<crate::procs::Recorded>,
}

/// Why a task in the long-lived process was interrupted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    Timeout,
    Idle,
    Stop,
}

const STDERR_KEEP: usize = 16 << 10;

impl Persistent {
    /// Starts the process in its own process group. The prompt of each task goes to its stdin.
    pub fn spawn(
        argv: &[String],
        cwd: &Path,
        env: &BTreeMap<String, String>,
        env_remove: &[String],
        session_id: &str,
        booking: Option<&crate::agent::Booking>,
    ) -> std::io::Result<Persistent> {
        let mut cmd = process::command(&argv[0]);
        for key in env_remove {
            cmd.env_remove(key);
        }
        cmd.args(&argv[1..]).current_dir(cwd).envs(env);
        if let Some(b) = booking {
            cmd.env(crate::procs::OWNER_ENV, b.book.owner());
        }
        let process::Spawned {
            child,
            stdin,
            stdout,
            stderr: err_pipe,
        } = process::spawn_kept(cmd, booking.and_then(|b| b.keep.as_ref()))?;
        let tree = child.tree();
        let recorded = booking.and_then(|b| b.book.record(child.pid(), &b.worker, None));
        let stdin = stdin.expect("stdin was piped");
        let lines = BufReader::new(stdout.expect("stdout was piped")).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = err_pipe.expect("stderr was piped");
        let keep = stderr.clone();
        let serving: Arc<Mutex<Option<Arc<Transcript>>>> = Arc::default();
        let transcript = serving.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let serving = transcript.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(t) = serving {
                    t.stderr(&buf[..n]);
                }
                let mut kept = keep.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_KEEP {
                    let cut = kept.len() - STDERR_KEEP;
                    kept.drain(..cut);
                }
            }
        });
        Ok(Persistent {
            child,
            tree,
            stdin: Some(stdin),
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
            serving,
            session_id: session_id.to_string(),
            served: 0,
            budget_left: None,
            started: Instant::now(),
            requests: 0,
            interrupt_grace: Duration::from_secs(5),
            last_peak: None,
            lines_read: 0,
            _recorded: recorded,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        Some(self.child.agent_pid())
    }

    /// Resident memory of the process and everything in its tree, where it can be read.
    pub fn rss(&self) -> Option<u64> {
        self.tree.rss()
    }

    /// Whether the process has exited (it may after answering, e.g. when it could not resume).
    pub fn has_exited(&mut self) -> bool {
        self.child.has_exited()
    }

    /// Waits for the process to exit, and says how long it lived.
    pub async fn exited(&mut self) -> Duration {
        let _ = self.child.wait().await;
        self.started.elapsed()
    }

    /// Waits up to `limit` for the process to exit and its stderr to be read to the end. Returns
    /// whether it exited.
    pub async fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        if tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .is_err()
        {
            return false;
        }
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout_at(deadline, reader).await;
        }
        true
    }

    /// The end of what the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let from = kept.len().saturating_sub(STDERR_KEEP);
        String::from_utf8_lossy(&kept[from..]).into_owned()
    }

    /// Serves one task. After `Died`, or `TimedOut`/`Stopped` with `kept: false`, the process is
    /// gone and must be replaced.
    pub async fn run(
        &mut self,
        protocol: &dyn LongLived,
        prompt: &str,
        timeout: Duration,
        grace: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> TaskEnd {
        self.run_watched(
            protocol,
            prompt,
            timeout,
            None,
            crate::memory::Policy::default(),
            None,
            None,
            grace,
            stop,
        )
        .await
    }

    /// [`Persistent::run`] with the idle and memory watchdogs, the task's lines kept in `log`,
    /// and its output read into its `transcript`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_watched(
        &mut self,
        protocol: &dyn LongLived,
        prompt: &str,
        timeout: Duration,
        idle_timeout: Option<Duration>,
        memory: crate::memory::Policy,
        log: Option<Arc<agentq_core::logfile::RotatingFile>>,
        transcript: Option<Arc<Transcript>>,
        grace: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> TaskEnd {
        let mut watch = crate::memory::Watch::new(Some(self.tree.clone()), memory);
        self.lines_read = 0;
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = transcript.clone();
        let end = self
            .serve(
                protocol,
                prompt,
                timeout,
                idle_timeout,
                &mut watch,
                log,
                transcript.as_deref(),
                grace,
                stop,
            )
            .await;
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(t) = &transcript {
            t.finish();
        }
        if watch.peak.is_none() {
            watch.sample_now();
        }
        self.last_peak = watch.peak;
        // The task is over: what it started is ended (under a keeper), the agent lives on.
        if self.child.ended().is_none() {
            self.tree.sweep();
        }
        end
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        protocol: &dyn LongLived,
        prompt: &str,
        timeout: Duration,
        idle_timeout: Option<Duration>,
        watch: &mut crate::memory::Watch,
        log: Option<Arc<agentq_core::logfile::RotatingFile>>,
        transcript: Option<&Transcript>,
        grace: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> TaskEnd {
        let mut line = protocol.task_line(prompt);
        line.push('\n');
        self.interrupt_grace = grace;
        tokio::pin!(stop);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // A process that stopped reading would block this write forever (a prompt larger than
        // the pipe holds): it may take no longer than the task, nor outlast a stop.
        enum Sent {
            Written(bool),
            Late,
            Stopped,
        }
        let sent = tokio::select! {
            ok = self.send(&line) => Sent::Written(ok),
            _ = &mut deadline => Sent::Late,
            _ = &mut stop => Sent::Stopped,
        };
        match sent {
            Sent::Written(true) => {}
            Sent::Written(false) => return self.died().await,
            Sent::Late => {
                self.kill().await;
                return TaskEnd::TimedOut { kept: false };
            }
            Sent::Stopped => {
                self.kill().await;
                return TaskEnd::Stopped { kept: false };
            }
        }
        // Set once an interrupt is sent: why, and how long the process has to answer it.
        let mut interrupted: Option<(Why, tokio::time::Instant)> = None;
        let mut limit = None;
        let mut last_line = tokio::time::Instant::now();
        // The process (or its keeper) has ended: what is left in the pipe is still read, and the
        // end of stdout says the rest (its group was killed as it was reaped).
        let mut exited = self.child.ended().is_some();
        let ended = |why: Why, kept: bool| match why {
            Why::Timeout => TaskEnd::TimedOut { kept },
            Why::Idle => TaskEnd::IdleTimedOut { kept },
            Why::Stop => TaskEnd::Stopped { kept },
        };
        loop {
            let idle_over = async {
                match idle_timeout {
                    Some(idle) => tokio::time::sleep_until(last_line + idle).await,
                    None => std::future::pending().await,
                }
            };
            let grace_over = async {
                match interrupted {
                    Some((_, until)) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.child.wait(), if !exited => exited = true,
                read = self.lines.next_line() => {
                    let Ok(Some(text)) = read else { return self.died().await };
                    last_line = tokio::time::Instant::now();
                    self.lines_read += 1;
                    if let Some(log) = &log {
                        // The transcript is a record, not the result: a failed write loses only it.
                        let _ = log.append(format!("{text}\n").as_bytes());
                    }
                    if let Some(t) = transcript {
                        t.stdout_line(&text);
                    }
                    match protocol.read_line(&text, chrono::Local::now()) {
                        Line::Session(id) => self.session_id = id,
                        Line::Limit(l) => limit = Some(l),
                        Line::Reply(reply) => {
                            if let Some(id) = &reply.session {
                                self.session_id = id.clone();
                            }
                            self.served += 1;
                            return match interrupted {
                                Some((why, _)) => ended(why, true),
                                None => TaskEnd::Result { reply, limit },
                            };
                        }
                        Line::Other => {}
                    }
                }
                _ = &mut deadline, if interrupted.is_none() => {
                    interrupted = Some((Why::Timeout, tokio::time::Instant::now() + grace));
                    self.interrupt(protocol).await;
                }
                _ = idle_over, if interrupted.is_none() => {
                    interrupted = Some((Why::Idle, tokio::time::Instant::now() + grace));
                    self.interrupt(protocol).await;
                }
                rss = watch.over_limit() => {
                    self.kill().await;
                    return TaskEnd::MemoryLimit(rss);
                }
                _ = &mut stop, if interrupted.is_none() => {
                    interrupted = Some((Why::Stop, tokio::time::Instant::now() + grace));
                    self.interrupt(protocol).await;
                }
                _ = grace_over => {
                    self.kill().await;
                    return ended(interrupted.map_or(Why::Stop, |(why, _)| why), false);
                }
            }
        }
    }

    async fn interrupt(&mut self, protocol: &dyn LongLived) {
        self.requests += 1;
        let mut line = protocol.interrupt_line(self.requests);
        line.push('\n');
        // Unanswered within the grace period, the process is killed anyway.
        let _ = tokio::time::timeout(self.interrupt_grace, self.send(&line)).await;
    }

    /// Writes one line to the process; false if it can no longer be written to.
    async fn send(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok()
    }

    /// The process is gone or going: make sure of it, and say what it left on stderr.
    async fn died(&mut self) -> TaskEnd {
        // Its stdout closed; give it a moment to exit and its stderr to drain.
        let _ = self.exited_within(Duration::from_millis(500)).await;
        self.kill().await;
        let mut stderr = self.stderr_tail();
        // Where no keeper says it (Windows), the job's word that it was ended for its count.
        if let Some(note) = self.tree.process_limit_note() {
            stderr.push_str(&note);
            stderr.push('\n');
        }
        TaskEnd::Died {
            stderr,
            answered: self.lines_read > 0,
        }
    }

    /// Kills the whole tree, and reaps.
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }

    /// Ends the process politely: stdin closed (it exits when done), then the group killed if it
    /// has not gone within `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        drop(self.stdin.take());
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
        // Whatever it left in its tree went as it was reaped (by its keeper, or by the kill of
        // its group before the reap).
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        // Not once reaped: the number may belong to another process by now. Dropping the child
        // kills and reaps an unreaped one.
        if self.child.ended().is_none() {
            self.tree.kill();
        }
    }
}

/// Where a worker's long-lived process, if any, is kept between tasks.
pub type Slot = tokio::sync::Mutex<Option<Persistent>>;

// Unix tests: their stand-in agents are shell scripts.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    const CLAUDE: &crate::claude::Settings = &crate::claude::Settings::DEFAULT;

    fn script(body: &str) -> (tempfile::TempDir, Vec<String>) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("fake-claude");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (d, vec![path.to_string_lossy().into_owned()])
    }

    #[tokio::test]
    async fn tasks_are_served_one_after_another_by_one_process() {
        // Answers each line with a result naming how many it has read.
        let (_d, argv) = script(
            "n=0; while read line; do n=$((n+1)); printf '{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s2\"}\\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"answer %s\"}\\n' $n; done",
        );
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s1", None).unwrap();
        let pid = p.pid();
        for k in 1..=3 {
            match p
                .run(
                    CLAUDE,
                    "q",
                    Duration::from_secs(10),
                    Duration::from_secs(1),
                    std::future::pending(),
                )
                .await
            {
                TaskEnd::Result { reply, .. } => assert_eq!(reply.text, format!("answer {k}")),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((p.served, p.session_id.as_str(), p.pid()), (3, "s2", pid));
        // Closing stdin ends it at once: no waiting out the grace period.
        let started = Instant::now();
        p.shutdown(Duration::from_secs(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_hung_task_is_interrupted_and_a_deaf_process_killed() {
        // Reads lines but never answers: the interrupt goes unanswered, so the group is killed.
        let (_d, argv) = script("while read line; do :; done");
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s", None).unwrap();
        let started = Instant::now();
        let end = p
            .run(
                CLAUDE,
                "q",
                Duration::from_millis(200),
                Duration::from_millis(200),
                std::future::pending(),
            )
            .await;
        assert!(matches!(end, TaskEnd::TimedOut { kept: false }), "{end:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // Answers an interrupt with a result: the process is kept.
        let (_d2, argv) = script(
            "while read line; do case \"$line\" in *control_request*) printf '{\"type\":\"result\",\"subtype\":\"error_during_execution\",\"is_error\":true}\\n';; esac; done",
        );
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s", None).unwrap();
        let end = p
            .run(
                CLAUDE,
                "q",
                Duration::from_millis(100),
                Duration::from_secs(5),
                std::future::pending(),
            )
            .await;
        assert!(matches!(end, TaskEnd::TimedOut { kept: true }), "{end:?}");
        let end = p
            .run(
                CLAUDE,
                "q",
                Duration::from_secs(30),
                Duration::from_secs(5),
                tokio::time::sleep(Duration::from_millis(50)),
            )
            .await;
        assert!(matches!(end, TaskEnd::Stopped { kept: true }), "{end:?}");
    }

    #[tokio::test]
    async fn a_process_that_stopped_reading_cannot_wedge_a_task() {
        // Never reads stdin: a prompt larger than the pipe holds cannot be written.
        let (_d, argv) = script("exec sleep 60");
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s", None).unwrap();
        let big = "x".repeat(1 << 20);
        let started = Instant::now();
        let end = p
            .run(
                CLAUDE,
                &big,
                Duration::from_millis(300),
                Duration::from_millis(200),
                std::future::pending(),
            )
            .await;
        assert!(matches!(end, TaskEnd::TimedOut { kept: false }), "{end:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s", None).unwrap();
        let end = p
            .run(
                CLAUDE,
                &big,
                Duration::from_secs(60),
                Duration::from_millis(200),
                tokio::time::sleep(Duration::from_millis(100)),
            )
            .await;
        assert!(matches!(end, TaskEnd::Stopped { kept: false }), "{end:?}");
        assert!(p.has_exited());
    }

    #[tokio::test]
    async fn a_process_that_dies_mid_task_is_reported_with_its_stderr() {
        let (_d, argv) =
            script("read line; echo 'No conversation found with session ID: s' >&2; exit 1");
        let mut p =
            Persistent::spawn(&argv, Path::new("/"), &BTreeMap::new(), &[], "s", None).unwrap();
        match p
            .run(
                CLAUDE,
                "q",
                Duration::from_secs(10),
                Duration::from_secs(1),
                std::future::pending(),
            )
            .await
        {
            TaskEnd::Died { stderr, .. } => {
                assert!(crate::claude::conversation_gone(&stderr, ""))
            }
            other => panic!("{other:?}"),
        }
    }
}
