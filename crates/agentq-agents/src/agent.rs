//! Running one attempt of an agent process, watching it, and stopping it with everything it
//! started.
//!
//! Watchdogs, each ending the attempt with its own outcome: the wall-clock `timeout`; the idle
//! watchdog (`idle_timeout`: no byte on stdout or stderr for that long means hung); memory (the
//! group's resident set sampled on a schedule, stopped past `max_memory`); and the linger watchdog
//! (a process still alive `linger` after it printed the result line its kind of agent ends with is
//! stopped, and the attempt stands as done; agents without such a line have no linger watchdog).
//!
//! The prompt goes to the agent's stdin (never argv: argv is size-capped and visible in `ps`), its
//! stdout is the result (kept up to a cap, the rest drained so the agent never blocks on a full
//! pipe), and the end of its stderr is kept for diagnosis. The agent runs in a process tree of its own
//! (`agentq_platform::process`: a process group on Unix, a Job Object on Windows); stopping it is
//! a graceful stop to the tree, `kill_timeout` of grace, then a kill of the tree. When the agent
//! itself exits, whatever it left running in its tree is killed too, so a grandchild holding the
//! output pipe open can neither hang the task nor outlive it. (On Unix a process that leaves the
//! group with `setsid` escapes the group kill; its pipes are still cut off after a moment.)

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentq_platform::process::{self, Child, Exit, Tree};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Everything needed to run one attempt.
#[derive(Clone, Debug)]
pub struct Spec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Inherited variables the agent must not see.
    pub env_remove: Vec<String>,
    pub prompt: String,
    pub timeout: Duration,
    pub kill_timeout: Duration,
    pub output_cap: usize,
    pub stderr_cap: usize,
    /// No output for this long means the agent hangs.
    pub idle_timeout: Option<Duration>,
    /// How long an agent may stay alive after its final result.
    pub linger: Duration,
    /// Recognises the line an agent prints as its final result (Claude's `result` JSON). Without
    /// one there is no linger watchdog.
    pub final_line: Option<fn(&str) -> bool>,
    /// Its stdout is a stream of events whose last lines say how it ended (Codex, Gemini): past
    /// `output_cap`, keep its beginning and its end, not only its beginning.
    pub keep_tail: bool,
    pub memory: crate::memory::Policy,
    /// Where the agent's process group is recorded while it lives (for reaping after a crash).
    pub book: Option<Booking>,
    /// The task's agent log: everything the agent writes, stdout and stderr as it comes, uncut
    /// by the caps (rotated by size instead).
    pub log: Option<Arc<agentq_core::logfile::RotatingFile>>,
    /// The attempt's transcript: its output read into entries by the driver, as it comes.
    pub transcript: Option<Arc<crate::transcript::Transcript>>,
}

/// Who records an agent's process group, and under which worker and task; and the keeper each
/// agent runs under, where there is one (`agentq_platform::process::Keep`: Linux).
#[derive(Clone, Debug)]
pub struct Booking {
    pub book: std::sync::Arc<crate::procs::Book>,
    pub worker: String,
    pub task: Option<i64>,
    pub keep: Option<process::Keep>,
}

/// How the attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// Nothing on stdout or stderr for `idle_timeout`.
    IdleTimedOut,
    /// Its group held this many bytes, over `max_memory`.
    MemoryLimit(u64),
    /// It had more processes at once than its keeper allows (`max_processes`): all were killed.
    ProcessLimit(u32),
    /// It gave its final result, then stayed alive past `linger` and was stopped.
    Lingered,
    /// The caller's stop future fired first; the caller knows why.
    Interrupted,
    /// The process could not be started at all.
    SpawnFailed {
        error: String,
        retryable: bool,
        /// The program is not there (not installed, or not on PATH).
        missing: bool,
    },
    /// A long-lived process answered; it did not exit.
    Served,
}

#[derive(Clone, Debug)]
pub struct Attempt {
    pub outcome: Outcome,
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stderr_tail: String,
    pub duration: Duration,
    pub pid: Option<u32>,
    /// The most resident memory its group held, as sampled.
    pub memory_peak: Option<u64>,
}

/// After the agent exits, how long its output pipes may stay open (held by something it left
/// behind) before the leftovers are killed.
const PIPE_LINGER: Duration = Duration::from_millis(500);

/// Runs the attempt to its end, or until `stop` completes.
pub async fn run(spec: Spec, stop: impl Future<Output = ()>) -> Attempt {
    let started = Instant::now();
    let not_started = |error: String, retryable: bool, missing: bool| Attempt {
        outcome: Outcome::SpawnFailed {
            error,
            retryable,
            missing,
        },
        stdout: String::new(),
        stdout_truncated: false,
        stderr_tail: String::new(),
        duration: started.elapsed(),
        pid: None,
        memory_peak: None,
    };
    // Spawning in a missing folder fails with the same error as a missing program; say which.
    if !spec.cwd.is_dir() {
        return not_started(
            format!(
                "the working folder {} does not exist (worker cwd)",
                spec.cwd.display()
            ),
            false,
            false,
        );
    }
    // std's Command, waited for by hand (see `Child`): the kernel's figure of the most memory
    // the agent held comes with the wait, and tokio's wait does not give it.
    let mut cmd = process::command(&spec.argv[0]);
    for key in &spec.env_remove {
        cmd.env_remove(key);
    }
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(&spec.env);
    if let Some(b) = &spec.book {
        cmd.env(crate::procs::OWNER_ENV, b.book.owner());
    }
    let keep = spec.book.as_ref().and_then(|b| b.keep.as_ref());
    let process::Spawned {
        mut child,
        stdin,
        stdout,
        stderr,
    } = match process::spawn_kept(cmd, keep) {
        Ok(spawned) => spawned,
        Err(e) => {
            let retryable = !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            );
            return not_started(
                format!("could not start {:?}: {e}", spec.argv[0]),
                retryable,
                e.kind() == std::io::ErrorKind::NotFound,
            );
        }
    };
    let pid = Some(child.pid());
    let tree = child.tree();
    let _recorded = match (&spec.book, pid) {
        (Some(b), Some(pid)) => b.book.record(pid, &b.worker, b.task),
        _ => None,
    };

    // Feeding stdin runs beside reading stdout: a large prompt and a chatty agent would otherwise
    // deadlock on two full pipes. An agent that does not read its stdin is not an error.
    let mut stdin = stdin.expect("stdin was piped");
    let prompt = spec.prompt.clone();
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(prompt.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    let cut = CancellationToken::new();
    let watch = Arc::new(Activity::new(
        spec.final_line,
        spec.log.clone(),
        spec.transcript.clone(),
    ));
    let stdout = tokio::spawn(read_head(
        stdout.expect("stdout was piped"),
        spec.output_cap,
        spec.keep_tail,
        cut.clone(),
        watch.clone(),
    ));
    let stderr = tokio::spawn(read_tail(
        stderr.expect("stderr was piped"),
        spec.stderr_cap,
        cut.clone(),
        watch.clone(),
    ));

    let mut memory = crate::memory::Watch::new(Some(tree.clone()), spec.memory.clone());
    memory.sample_leader();
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline, stop);
    let mut linger_until: Option<tokio::time::Instant> = None;
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break exit_outcome(status),
            _ = &mut deadline => {
                stop_tree(&mut child, &tree, spec.kill_timeout).await;
                break Outcome::TimedOut;
            }
            _ = &mut stop => {
                stop_tree(&mut child, &tree, spec.kill_timeout).await;
                break Outcome::Interrupted;
            }
            rss = memory.over_limit() => {
                stop_tree(&mut child, &tree, spec.kill_timeout).await;
                break Outcome::MemoryLimit(rss);
            }
            // Once the result is final, silence is expected: only the linger watchdog is left.
            _ = watch.idle_for(spec.idle_timeout), if linger_until.is_none() => {
                stop_tree(&mut child, &tree, spec.kill_timeout).await;
                break Outcome::IdleTimedOut;
            }
            _ = watch.finished.cancelled(), if linger_until.is_none() => {
                linger_until = Some(tokio::time::Instant::now() + spec.linger);
            }
            _ = async { tokio::time::sleep_until(linger_until.expect("guarded")).await }, if linger_until.is_some() => {
                stop_tree(&mut child, &tree, spec.kill_timeout).await;
                break Outcome::Lingered;
            }
        }
    };
    feeder.abort();

    // The agent is gone, and what it left in its group was killed as it was reaped. What is
    // already in the pipes is still read. Something that left the group yet holds a pipe open
    // would keep the readers waiting, so they are cut off after a moment.
    let cutter = tokio::spawn(async move {
        tokio::time::sleep(PIPE_LINGER).await;
        cut.cancel();
    });
    let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
    let mut stderr_tail = stderr.await.unwrap_or_default();
    cutter.abort();
    if let Some(t) = &spec.transcript {
        t.finish();
    }
    // Where no keeper says it (Windows), the job's own word that it ended the attempt for its
    // process count.
    if let Some(note) = tree.process_limit_note() {
        stderr_tail.push_str(&note);
        stderr_tail.push('\n');
    }
    // A keeper that ended the attempt for its process count said so last on stderr.
    let outcome = match (outcome, keep.and_then(|k| k.max_processes)) {
        (Outcome::Exited(_) | Outcome::Signalled(_), Some(max))
            if stderr_tail.contains(process::PROCESS_LIMIT_MARK) =>
        {
            Outcome::ProcessLimit(max)
        }
        (outcome, _) => outcome,
    };
    Attempt {
        outcome,
        stdout,
        stdout_truncated,
        stderr_tail,
        duration: started.elapsed(),
        pid,
        memory_peak: memory.peak.max(child.own_peak()),
    }
}

/// What the output readers saw: when the agent last wrote anything, and whether it gave its final
/// result.
struct Activity {
    born: Instant,
    /// Milliseconds from `born` to the last output.
    last: AtomicU64,
    final_line: Option<fn(&str) -> bool>,
    /// The final result line was read.
    finished: CancellationToken,
    log: Option<Arc<agentq_core::logfile::RotatingFile>>,
    /// Set once writing the log failed: said once, then the log is left alone.
    log_failed: std::sync::atomic::AtomicBool,
    transcript: Option<Arc<crate::transcript::Transcript>>,
}

/// Which pipe output came on.
#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

impl Activity {
    fn new(
        final_line: Option<fn(&str) -> bool>,
        log: Option<Arc<agentq_core::logfile::RotatingFile>>,
        transcript: Option<Arc<crate::transcript::Transcript>>,
    ) -> Activity {
        Activity {
            born: Instant::now(),
            last: AtomicU64::new(0),
            final_line,
            finished: CancellationToken::new(),
            log,
            log_failed: Default::default(),
            transcript,
        }
    }

    /// Output arrived: note the time, and keep it in the task's log and transcript.
    fn output(&self, pipe: Pipe, bytes: &[u8]) {
        if let Some(t) = &self.transcript {
            match pipe {
                Pipe::Stdout => t.stdout(bytes),
                Pipe::Stderr => t.stderr(bytes),
            }
        }
        self.last
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(log) = &self.log
            && !self.log_failed.load(Ordering::Relaxed)
            && let Err(e) = log.append(bytes)
        {
            self.log_failed.store(true, Ordering::Relaxed);
            tracing::warn!("cannot write the task's agent log: {e}");
        }
    }

    /// Completes once nothing was written for `limit`; never without a limit.
    async fn idle_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let last = self.born + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

fn exit_outcome(exit: Exit) -> Outcome {
    match exit {
        Exit::Code(code) => Outcome::Exited(code),
        Exit::Signal(signal) => Outcome::Signalled(signal),
        Exit::Unknown => Outcome::Signalled(0),
    }
}

/// A graceful stop to the tree, up to `grace` for the leader to exit, then the tree killed. Where
/// no graceful stop can be delivered (Windows without a shared console), it is killed at once.
async fn stop_tree(child: &mut Child, tree: &Tree, grace: Duration) {
    let asked = tree.ask_to_stop();
    if !asked || tokio::time::timeout(grace, child.wait()).await.is_err() {
        child.kill().await;
    }
}

/// Reads up to `cap` bytes, then drains the rest so the writer never blocks. Returns the text
/// (invalid UTF-8 replaced) and whether anything was dropped. With `keep_tail`, half of `cap` is
/// the beginning and half the end (from its first whole line), joined by a newline: an event
/// stream's last lines say how it ended.
/// The final line (when the agent has one) marks the result final, wherever it comes, kept or
/// not. Stdout reaching its end does not: an agent may well send its stdout elsewhere and go on
/// working.
async fn read_head(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    keep_tail: bool,
    cut: CancellationToken,
    activity: Arc<Activity>,
) -> (String, bool) {
    let head_cap = if keep_tail { cap / 2 } else { cap };
    let tail_cap = cap - head_cap;
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut truncated = false;
    // The line being read, for the final-line check (a line longer than `cap` is not one).
    let mut line: Vec<u8> = Vec::new();
    let mut line_too_long = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            n = pipe.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cut.cancelled() => break,
        };
        let chunk = &buf[..n];
        activity.output(Pipe::Stdout, chunk);
        let room = head_cap.saturating_sub(head.len());
        head.extend_from_slice(&chunk[..n.min(room)]);
        if n > room {
            truncated = true;
            if tail_cap > 0 {
                tail.extend_from_slice(&chunk[room..]);
                if tail.len() > tail_cap.saturating_mul(2) {
                    tail.drain(..tail.len() - tail_cap);
                }
            }
        }
        if let Some(is_final) = activity.final_line {
            for &b in chunk {
                if b != b'\n' {
                    if line.len() < cap {
                        line.push(b);
                    } else {
                        line_too_long = true;
                    }
                    continue;
                }
                if !line_too_long && is_final(&String::from_utf8_lossy(&line)) {
                    activity.finished.cancel();
                }
                line.clear();
                line_too_long = false;
            }
        }
    }
    if tail.len() > tail_cap {
        tail.drain(..tail.len() - tail_cap);
    }
    if let Some(newline) = tail.iter().position(|b| *b == b'\n') {
        head.push(b'\n');
        head.extend_from_slice(&tail[newline + 1..]);
    }
    (String::from_utf8_lossy(&head).into_owned(), truncated)
}

/// Reads everything, keeping only the last `cap` bytes.
async fn read_tail(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    cut: CancellationToken,
    activity: Arc<Activity>,
) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            n = pipe.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cut.cancelled() => break,
        };
        activity.output(Pipe::Stderr, &buf[..n]);
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > cap.saturating_mul(2).max(1) {
            kept.drain(..kept.len() - cap);
        }
    }
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str) -> Spec {
        Spec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: BTreeMap::new(),
            env_remove: Vec::new(),
            prompt: "hello".into(),
            timeout: Duration::from_secs(10),
            kill_timeout: Duration::from_millis(500),
            output_cap: 1 << 20,
            stderr_cap: 1 << 10,
            idle_timeout: None,
            linger: Duration::from_secs(5),
            final_line: None,
            keep_tail: false,
            memory: crate::memory::Policy::default(),
            book: None,
            log: None,
            transcript: None,
        }
    }

    #[tokio::test]
    async fn prompt_in_result_out() {
        let a = run(spec("tr a-z A-Z; echo oops >&2"), std::future::pending()).await;
        assert_eq!(a.outcome, Outcome::Exited(0));
        assert_eq!(a.stdout, "HELLO");
        assert_eq!(a.stderr_tail, "oops\n");
    }

    #[tokio::test]
    async fn a_large_prompt_and_a_large_output_do_not_deadlock() {
        let mut s = spec("cat; head -c 3000000 /dev/zero | tr '\\0' x");
        s.prompt = "p".repeat(4 << 20);
        s.output_cap = 8 << 20;
        let a = run(s, std::future::pending()).await;
        assert_eq!(a.outcome, Outcome::Exited(0));
        assert_eq!(a.stdout.len(), (4 << 20) + 3_000_000);
    }

    #[tokio::test]
    async fn output_over_the_cap_is_cut_and_stderr_keeps_its_end() {
        let mut s = spec("head -c 100000 /dev/zero | tr '\\0' x; seq 1 5000 >&2");
        s.output_cap = 1000;
        s.stderr_cap = 10;
        let a = run(s, std::future::pending()).await;
        assert_eq!((a.stdout.len(), a.stdout_truncated), (1000, true));
        assert_eq!(a.stderr_tail, "4999\n5000\n");
    }

    #[tokio::test]
    async fn an_event_stream_over_the_cap_keeps_its_first_and_last_lines() {
        // A first line, 50,000 lines of tool output, and the line that says how it ended.
        let mut s =
            spec("echo '{\"type\":\"init\"}'; seq 1 50000; echo '{\"type\":\"result\"}'; sleep 30");
        s.output_cap = 1000;
        s.keep_tail = true;
        s.linger = Duration::from_millis(100);
        s.final_line = Some(|l| l == "{\"type\":\"result\"}");
        let started = Instant::now();
        let a = run(s, std::future::pending()).await;
        assert!(a.stdout_truncated);
        assert!(a.stdout.len() <= 1001, "{}", a.stdout.len());
        assert!(
            a.stdout.starts_with("{\"type\":\"init\"}\n"),
            "{}",
            a.stdout
        );
        assert!(
            a.stdout.ends_with("50000\n{\"type\":\"result\"}\n"),
            "{}",
            a.stdout
        );
        // The final line past the cap still counts: stopped after lingering, not at sleep's end.
        assert_eq!(a.outcome, Outcome::Lingered);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn exit_codes_and_signals() {
        assert_eq!(
            run(spec("exit 3"), std::future::pending()).await.outcome,
            Outcome::Exited(3)
        );
        assert_eq!(
            run(spec("kill -9 $$"), std::future::pending())
                .await
                .outcome,
            Outcome::Signalled(9)
        );
    }

    #[tokio::test]
    async fn a_missing_working_folder_is_named_as_such() {
        let mut s = spec("true");
        s.cwd = PathBuf::from("/nonexistent/folder");
        match run(s, std::future::pending()).await.outcome {
            Outcome::SpawnFailed {
                error,
                retryable,
                missing,
            } => {
                assert!(!retryable);
                assert!(!missing, "the program is there: the folder is not");
                assert!(
                    error.contains("working folder /nonexistent/folder"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_not_retryable() {
        let mut s = spec("");
        s.argv = vec!["/nonexistent/agent".into()];
        match run(s, std::future::pending()).await.outcome {
            Outcome::SpawnFailed {
                error,
                retryable,
                missing,
            } => {
                assert!(missing);
                assert!(!retryable);
                assert!(error.contains("/nonexistent/agent"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn alive(pid: i32) -> bool {
        process::alive(pid as u32)
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_even_a_grandchild_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 0.05; done' & wait",
            pidfile.display()
        );
        let mut s = spec(&script);
        s.timeout = Duration::from_millis(300);
        s.kill_timeout = Duration::from_millis(200);
        let started = Instant::now();
        let a = run(s, std::future::pending()).await;
        assert_eq!(a.outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed processes are reaped by init; give that a bounded moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(grandchild), "grandchild {grandchild} survived");
    }

    #[tokio::test]
    async fn a_leftover_holding_stdout_does_not_hang_the_task() {
        let started = Instant::now();
        let a = run(
            spec("echo result; (sleep 30) & exit 0"),
            std::future::pending(),
        )
        .await;
        assert_eq!(a.outcome, Outcome::Exited(0));
        assert_eq!(a.stdout, "result\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_agent_that_sends_its_stdout_elsewhere_is_not_taken_as_finished() {
        let mut s = spec("exec >/dev/null; sleep 1; exit 3");
        s.linger = Duration::from_millis(100);
        assert_eq!(
            run(s, std::future::pending()).await.outcome,
            Outcome::Exited(3)
        );
    }

    #[tokio::test]
    async fn after_its_final_line_only_the_linger_watchdog_applies() {
        let mut s = spec("echo RESULT; sleep 30");
        s.final_line = Some(|l| l == "RESULT");
        s.idle_timeout = Some(Duration::from_millis(100));
        s.linger = Duration::from_millis(600);
        let started = Instant::now();
        let a = run(s, std::future::pending()).await;
        assert_eq!(a.outcome, Outcome::Lingered);
        assert_eq!(a.stdout, "RESULT\n");
        assert!(started.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn the_peak_is_the_agents_not_the_forked_copy_of_the_daemon() {
        // This process holds 200 MiB; a child forked from it starts with a copy of that.
        let ballast: Vec<u8> = vec![1; 200 << 20];
        let quick = run(spec("true"), std::future::pending()).await;
        assert!(
            quick.memory_peak.unwrap_or(0) < 100 << 20,
            "{:?}",
            quick.memory_peak
        );
        // An agent that holds more than the daemon has its own peak, however short it runs.
        let big = run(
            spec("head -c 400000000 /dev/zero | perl -e 'local $/; my $x = <STDIN>; exit 0' 2>/dev/null || exit 0"),
            std::future::pending(),
        )
        .await;
        std::hint::black_box(&ballast);
        assert!(
            big.memory_peak.unwrap_or(0) > 300 << 20,
            "{:?}",
            big.memory_peak
        );
    }

    #[tokio::test]
    async fn stop_interrupts() {
        let a = run(
            spec("sleep 30"),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await;
        assert_eq!(a.outcome, Outcome::Interrupted);
    }
}
