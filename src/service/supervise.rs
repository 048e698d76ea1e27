//! `agentq service run`: the daemon, started again whenever it fails. It is what the Windows task
//! runs, because Task Scheduler starts a task again only when it failed to *start*; systemd and
//! launchd restart `agentq run` themselves. It runs anywhere, in a terminal too.
//!
//! It starts `agentq run` in the project folder as a tree of its own (a kill-on-close Job Object
//! on Windows, so the daemon and its agents end with it, however it ends: `schtasks /End`
//! included), and writes the daemon's output, and its own lines, to `.agentq/service.log`
//! (size-rotated as the event log is). When the daemon ends with a failure it is started again
//! after [`restart_delay`]; when it ends well, or after a request to stop, so does `service run`.
//! A request to stop (Ctrl-C, SIGTERM, ...) is passed on to the daemon (SIGTERM; CTRL_BREAK
//! where it shares the console, else the job is ended), a second one too. The variables the
//! service carries (see [`super`]) are read from its environment file, with `--env-file`, at
//! each start, and given to the daemon: a task has no environment of its own. When the system
//! opened a console window for it alone (a task in the user's session), it closes it first, so
//! none stays on the desktop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use agentq_core::error::{Error, Result};
use agentq_core::logfile::RotatingFile;
use agentq_daemon::config::{Config, STATE_DIR};
use agentq_platform::process::{self, Exit, Spawned};
use agentq_platform::signals::StopRequests;

use super::RESTART_SEC;

/// The log `service run` writes in the state folder.
pub const SERVICE_LOG: &str = "service.log";

/// A daemon that ran this long before it failed is started again after the shortest pause.
const STEADY: Duration = Duration::from_secs(60);
/// The longest pause between starts of a daemon that keeps failing.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

/// The pause before starting again a daemon that failed after running for `ran`, the pause
/// before this start having been `previous`: [`RESTART_SEC`], doubled while the daemon keeps
/// failing within a minute of its start, up to a minute. (A config with a mistake, or another
/// daemon holding the folder, then costs a line a minute in the log.)
pub fn restart_delay(previous: Option<Duration>, ran: Duration) -> Duration {
    match previous {
        Some(pause) if ran < STEADY => (pause * 2).min(LONGEST_PAUSE),
        _ => Duration::from_secs(RESTART_SEC),
    }
}

/// Runs the daemon of the `config` file (a path, not yet loaded: a config with a mistake is the
/// daemon's to report, each time it starts, until it is fixed) with `exe`, until it ends well or
/// is asked to stop; each start with the variables of `env_file`, if given.
pub async fn supervise(config: &Path, exe: &Path, env_file: Option<&Path>) -> Result<()> {
    let detached = agentq_platform::term::detach_own_console();
    let root = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let state_dir = root.join(STATE_DIR);
    agentq_core::state::ensure_dir(&state_dir)?;
    // The event log's rotation; a config that does not load writes little (a line a start).
    let (max_size, backups) = Config::load(config)
        .map(|c| (c.daemon.log_max_size, c.daemon.log_backups))
        .unwrap_or((1 << 20, 1));
    let log = Arc::new(Log {
        file: RotatingFile::single_writer(state_dir.join(SERVICE_LOG), max_size, backups),
        echo: !detached,
    });
    // Without them (no console to hear them on, should the system refuse), it runs until ended.
    let mut stops = StopRequests::listen()
        .inspect_err(|e| log.note(&format!("cannot listen for requests to stop: {e}")))
        .ok();
    log.note(&format!(
        "starting `{} run --config {}` in {}; its output goes to {}",
        exe.display(),
        config.display(),
        root.display(),
        log.file.path().display()
    ));
    let mut pause = None;
    loop {
        let started = Instant::now();
        let env = env_file.map(|f| carried(f, &log)).unwrap_or_default();
        let (exit, asked_to_stop) = run_once(exe, config, &root, &env, &log, &mut stops).await?;
        if asked_to_stop || exit == Exit::Code(0) {
            log.note(&format!(
                "the daemon ended ({}); not starting it again",
                describe(exit)
            ));
            return Ok(());
        }
        let delay = restart_delay(pause, started.elapsed());
        log.note(&format!(
            "the daemon ended ({}); starting it again in {}s",
            describe(exit),
            delay.as_secs()
        ));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = next_stop(&mut stops) => {
                log.note("asked to stop; not starting the daemon again");
                return Ok(());
            }
        }
        pause = Some(delay);
    }
}

/// The variables of the environment file `path`, read again at each start (so an edit is taken at
/// the next); one that cannot be read is said in the log, and the daemon starts without them.
fn carried(path: &Path, log: &Log) -> Vec<(String, String)> {
    let read = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| super::read_env_file(&text));
    read.unwrap_or_else(|e| {
        log.note(&format!(
            "cannot read the environment file {}: {e}; starting the daemon without its variables",
            path.display()
        ));
        Vec::new()
    })
}

/// The service log, echoed to stderr while there is a terminal to read it.
struct Log {
    file: RotatingFile,
    echo: bool,
}

impl Log {
    /// One line of `service run`'s own, with the time.
    fn note(&self, line: &str) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let line = format!("{now} [agentq service run] {line}\n");
        if self.echo {
            eprint!("{line}");
        }
        self.write(line.as_bytes());
    }

    fn write(&self, bytes: &[u8]) {
        if let Err(e) = self.file.append(bytes)
            && self.echo
        {
            eprintln!(
                "agentq service run: cannot write {}: {e}",
                self.file.path().display()
            );
        }
    }
}

/// Starts the daemon once and waits for its end, passing on requests to stop. Gives how it
/// ended and whether it was asked to stop.
async fn run_once(
    exe: &Path,
    config: &Path,
    root: &Path,
    env: &[(String, String)],
    log: &Arc<Log>,
    stops: &mut Option<StopRequests>,
) -> Result<(Exit, bool)> {
    let mut cmd = std::process::Command::new(exe);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .arg("run")
        .arg("--config")
        .arg(config)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Spawned {
        mut child,
        stdout,
        stderr,
        ..
    } = process::spawn(cmd).map_err(|e| Error::io("starting the daemon", exe, e))?;
    let copies = [
        stdout.map(|p| copy_lines(p, log.clone())),
        stderr.map(|p| copy_lines(p, log.clone())),
    ];
    let tree = child.tree();
    let mut asked = false;
    let exit = loop {
        tokio::select! {
            exit = child.wait() => break exit,
            () = next_stop(stops) => {
                log.note("asked to stop; passing it on to the daemon");
                asked = true;
                if !tree.ask_to_stop() {
                    tree.kill();
                }
            }
        }
    };
    // The pipes end with the daemon's tree; what is still in them is the daemon's last words.
    for copy in copies.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), copy).await;
    }
    Ok((exit, asked))
}

/// The next request to stop; never, without a way to hear one.
async fn next_stop(stops: &mut Option<StopRequests>) {
    match stops {
        Some(stops) => stops.recv().await,
        None => std::future::pending().await,
    }
}

/// Copies `pipe` into the log, a line at a time.
fn copy_lines(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Log>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).split(b'\n');
        while let Ok(Some(mut line)) = lines.next_segment().await {
            line.push(b'\n');
            log.write(&line);
        }
    })
}

/// How a process ended, in words.
fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(n) => match process::signal_name(n) {
            Some(name) => format!("killed by {name}"),
            None => format!("killed by signal {n}"),
        },
        Exit::Unknown => "how is unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_keeps_failing_waits_longer_each_time_up_to_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(restart_delay(None, s(0)), s(5));
        assert_eq!(restart_delay(Some(s(5)), s(1)), s(10));
        assert_eq!(restart_delay(Some(s(10)), s(1)), s(20));
        assert_eq!(restart_delay(Some(s(40)), s(1)), s(60));
        assert_eq!(restart_delay(Some(s(60)), s(1)), s(60));
        // One that ran steadily for a while before it failed starts again soon.
        assert_eq!(restart_delay(Some(s(60)), s(61)), s(5));
    }
}
