//! Running one attempt of an agent process, and stopping it with everything it started.
//!
//! The prompt goes to the agent's stdin (never argv: argv is size-capped and visible in `ps`), its
//! stdout is the result (kept up to a cap, the rest drained so the agent never blocks on a full
//! pipe), and the end of its stderr is kept for diagnosis. The agent runs in its own process group;
//! stopping it is SIGTERM to the group, `kill_timeout` of grace, then SIGKILL to the group. When the
//! agent itself exits, whatever it left running in its group is killed too, so a grandchild holding
//! the output pipe open can neither hang the task nor outlive it. (A process that leaves the group
//! with `setsid` escapes the group kill; its pipes are still cut off after a moment.)

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
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
}

/// How the attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// The caller's stop future fired first; the caller knows why.
    Interrupted,
    /// The process could not be started at all.
    SpawnFailed {
        error: String,
        retryable: bool,
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
}

/// After the agent exits, how long its output pipes may stay open (held by something it left
/// behind) before the leftovers are killed.
const PIPE_LINGER: Duration = Duration::from_millis(500);

/// Runs the attempt to its end, or until `stop` completes.
pub async fn run(spec: Spec, stop: impl Future<Output = ()>) -> Attempt {
    let started = Instant::now();
    let not_started = |error: String, retryable: bool| Attempt {
        outcome: Outcome::SpawnFailed { error, retryable },
        stdout: String::new(),
        stdout_truncated: false,
        stderr_tail: String::new(),
        duration: started.elapsed(),
        pid: None,
    };
    // Spawning in a missing folder fails with the same error as a missing program; say which.
    if !spec.cwd.is_dir() {
        return not_started(
            format!(
                "the working folder {} does not exist (worker cwd)",
                spec.cwd.display()
            ),
            false,
        );
    }
    let mut cmd = Command::new(&spec.argv[0]);
    for key in &spec.env_remove {
        cmd.env_remove(key);
    }
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let retryable = !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            );
            return not_started(
                format!("could not start {:?}: {e}", spec.argv[0]),
                retryable,
            );
        }
    };
    let pid = child.id();
    let group = pid.map(|p| Pid::from_raw(p as i32));

    // Feeding stdin runs beside reading stdout: a large prompt and a chatty agent would otherwise
    // deadlock on two full pipes. An agent that does not read its stdin is not an error.
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let prompt = spec.prompt.clone();
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(prompt.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    let cut = CancellationToken::new();
    let stdout = tokio::spawn(read_head(
        child.stdout.take().expect("stdout was piped"),
        spec.output_cap,
        cut.clone(),
    ));
    let stderr = tokio::spawn(read_tail(
        child.stderr.take().expect("stderr was piped"),
        spec.stderr_cap,
        cut.clone(),
    ));

    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => exit_outcome(status),
            Err(_) => Outcome::Signalled(0),
        },
        _ = tokio::time::sleep(spec.timeout) => {
            stop_group(&mut child, group, spec.kill_timeout).await;
            Outcome::TimedOut
        }
        _ = stop => {
            stop_group(&mut child, group, spec.kill_timeout).await;
            Outcome::Interrupted
        }
    };
    feeder.abort();

    // The agent is gone; anything still in its group is a leftover, killed now. What is already in
    // the pipes is still read. Something that left the group yet holds a pipe open would keep the
    // readers waiting, so they are cut off after a moment.
    kill_group(group);
    let cutter = tokio::spawn(async move {
        tokio::time::sleep(PIPE_LINGER).await;
        cut.cancel();
    });
    let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
    let stderr_tail = stderr.await.unwrap_or_default();
    cutter.abort();
    Attempt {
        outcome,
        stdout,
        stdout_truncated,
        stderr_tail,
        duration: started.elapsed(),
        pid,
    }
}

fn exit_outcome(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Signalled(signal),
        (None, None) => Outcome::Signalled(0),
    }
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group.
async fn stop_group(child: &mut Child, group: Option<Pid>, grace: Duration) {
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        kill_group(group);
        let _ = child.wait().await;
    }
}

fn kill_group(group: Option<Pid>) {
    if let Some(group) = group {
        // ESRCH (nobody left) is the common, happy case.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// Reads up to `cap` bytes, then drains the rest so the writer never blocks. Returns the text
/// (invalid UTF-8 replaced) and whether anything was dropped.
async fn read_head(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    cut: CancellationToken,
) -> (String, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            n = pipe.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cut.cancelled() => break,
        };
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

/// Reads everything, keeping only the last `cap` bytes.
async fn read_tail(mut pipe: impl AsyncRead + Unpin, cap: usize, cut: CancellationToken) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            n = pipe.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cut.cancelled() => break,
        };
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
            Outcome::SpawnFailed { error, retryable } => {
                assert!(!retryable);
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
            Outcome::SpawnFailed { error, retryable } => {
                assert!(!retryable);
                assert!(error.contains("/nonexistent/agent"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
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
    async fn stop_interrupts() {
        let a = run(
            spec("sleep 30"),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await;
        assert_eq!(a.outcome, Outcome::Interrupted);
    }
}
