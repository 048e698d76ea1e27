//! Nothing an attempt starts outlives it: processes that leave the agent's process group
//! (`setsid`), double-forked daemons, processes that clear their environment and grandchildren
//! that ignore SIGTERM are all gone within `kill_timeout` + 1 s of the attempt's end, whether the
//! agent exits by itself or is stopped; and with `[daemon] containment = "group"` (the process
//! group alone) the `setsid` one is shown to get away, which is what the keeper is for.
// Linux: the keeper is a child subreaper (prctl), and these agents are shell scripts.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// An agent (a shell script) that starts four processes that try to outlive it, each writing its
/// pid to `pids.log`, waits until all four have, prints `escaped` and exits, or with `hang` in
/// its prompt, sleeps on instead.
const ESCAPER: &str = r#"#!/bin/sh
log="$PWD/pids.log"
# A new session (and so a new process group).
setsid sh -c 'echo $$ >> "$1"; exec sleep 300' sh "$log" </dev/null >/dev/null 2>&1 &
# A double fork: the middle process exits at once, its child is an orphan.
sh -c 'sh -c "echo \$\$ >> \"\$1\"; exec sleep 300" sh "$1" </dev/null >/dev/null 2>&1 & exit 0' sh "$log"
# A new session with its environment cleared (no mark to find it by).
setsid env -i /bin/sh -c 'echo $$ >> "$1"; exec sleep 300' sh "$log" </dev/null >/dev/null 2>&1 &
# A new session that ignores SIGTERM, and whose sleeps ignore it too.
setsid sh -c 'trap "" TERM; echo $$ >> "$1"; while :; do sleep 1; done' sh "$log" </dev/null >/dev/null 2>&1 &
while [ "$(wc -l < "$log" 2>/dev/null || echo 0)" -lt 4 ]; do sleep 0.02; done
prompt=$(cat)
case "$prompt" in
  *hang*) exec sleep 300 ;;
esac
echo escaped
"#;

fn project(extra: &str) -> Project {
    let p = Project::new("");
    let agent = p.path("escaper.sh");
    std::fs::write(&agent, ESCAPER).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "[defaults]\nkill_timeout = \"500ms\"\nmax_attempts = 1\n{extra}\n\
             [[worker]]\nname = \"w\"\ncommand = [\"{}\"]\n",
            agent.display()
        ),
    )
    .unwrap();
    p
}

fn escaped(p: &Project) -> Vec<i32> {
    std::fs::read_to_string(p.path("pids.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Runs one task to its end; returns its record and the pids that tried to escape.
fn run_one(p: &Project, prompt: &str) -> (serde_json::Value, Vec<i32>) {
    let id = p.submit("w", prompt);
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    let pids = escaped(p);
    assert_eq!(pids.len(), 4, "four escapers started: {pids:?}");
    (p.task(id), pids)
}

/// kill_timeout (500 ms) + 1 s, counted from when `wait` saw the task end.
fn all_gone_soon(pids: &[i32]) {
    let ended = Instant::now();
    wait_until(
        Duration::from_millis(1500),
        "every escaper to be gone",
        || pids.iter().all(|pid| !alive(*pid)),
    );
    eprintln!("all gone {:?} after the task's end", ended.elapsed());
}

#[test]
fn what_leaves_the_group_is_ended_with_an_attempt_that_succeeds() {
    let p = project("");
    let daemon = p.start();
    let (t, pids) = run_one(&p, "go");
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(p.output(t["id"].as_i64().unwrap()), "escaped\n");
    all_gone_soon(&pids);
    assert!(p.agent_processes().is_empty(), "{:?}", p.agent_processes());
    assert!(daemon.stop().success());
}

#[test]
fn what_leaves_the_group_is_ended_with_an_attempt_that_times_out() {
    let p = project("timeout = \"2s\"");
    let daemon = p.start();
    let started = Instant::now();
    let (t, pids) = run_one(&p, "hang");
    assert_eq!(t["cause"], "timeout", "{t}");
    // 2 s of timeout, then 0.5 s of grace for the TERM-ignoring one.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    all_gone_soon(&pids);
    assert!(daemon.stop().success());
}

#[test]
fn what_leaves_the_group_is_ended_with_an_attempt_that_is_cancelled() {
    let p = project("");
    let daemon = p.start();
    let id = p.submit("w", "hang");
    wait_until(Duration::from_secs(20), "the escapers to start", || {
        escaped(&p).len() == 4
    });
    p.ok(&["cancel", &id.to_string()]);
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(p.state(id), "cancelled");
    all_gone_soon(&escaped(&p));
    assert!(daemon.stop().success());
}

#[test]
fn with_the_process_group_alone_a_new_session_gets_away() {
    let p = project("[daemon]\ncontainment = \"group\"");
    let daemon = p.start();
    let (t, pids) = run_one(&p, "go");
    assert_eq!(t["state"], "succeeded", "{t}");
    std::thread::sleep(Duration::from_millis(1500));
    let left: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
    // What the keeper is for: the session leaders outlive the attempt here.
    assert!(
        left.len() >= 3,
        "only {left:?} of {pids:?} outlived the attempt"
    );
    // The daemon's guardian ends them with the daemon (they carry its mark, or their group does
    // not matter: the one with a cleared environment is ended here by hand).
    assert!(daemon.stop().success());
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_killed_daemons_guardian_asks_the_keepers_to_end_what_got_away() {
    let p = project("");
    let daemon = p.start();
    let id = p.submit("w", "hang");
    wait_until(Duration::from_secs(20), "the escapers to start", || {
        escaped(&p).len() == 4
    });
    let _ = id;
    daemon.kill9();
    // The guardian kills the marked agents at once and asks the keepers to stop, which end the
    // rest (the one without a mark included) within the grace.
    all_gone_soon(&escaped(&p));
}

/// A long-lived Claude worker (the real `claude` against the fake API) whose Bash tool leaves
/// a process in a session of its own, and one in the background of a shell that exits: both end
/// with the task, and the worker's process and conversation go on to the next task.
#[test]
fn a_persistent_claude_workers_tool_leaves_nothing_behind_its_task() {
    let (pids, daemon, _project) = claude_tool_escapes("");
    all_gone_soon(&pids);
    assert!(daemon.stop().success());
}

/// The same with the worker's process in a cgroup of its own: the keeper's sweep after the task
/// finds what the tool left in the cgroup.
#[test]
fn in_a_cgroup_a_persistent_claude_workers_tool_leaves_nothing_behind_its_task() {
    let Some(root) = CgroupRoot::new("claude") else {
        return;
    };
    let (pids, daemon, _project) = claude_tool_escapes(&root.daemon_section());
    all_gone_soon(&pids);
    assert_eq!(
        root.attempts().len(),
        1,
        "the worker's process lives on in its cgroup"
    );
    assert!(daemon.stop().success());
    wait_until(Duration::from_secs(2), "its cgroup to go with it", || {
        root.attempts().is_empty()
    });
}

/// The same with the process group alone: the session leader outlives the task, so what ended
/// it above was the keeper's sweep, not Claude Code.
#[test]
fn without_a_keeper_a_persistent_claude_workers_tool_leaves_its_setsid_child() {
    let (pids, daemon, _project) = claude_tool_escapes("[daemon]\ncontainment = \"group\"\n");
    std::thread::sleep(Duration::from_millis(1500));
    let setsid_child = pids[0];
    let outlived = alive(setsid_child);
    drop(daemon);
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        outlived,
        "the setsid child {setsid_child} was ended without a keeper"
    );
}

/// Runs a Bash tool call that leaves two processes (their pids in `pids.log`, the setsid one
/// first), checks the task and that the conversation goes on to a second task, and returns the
/// pids with the daemon still running (and its project, which must outlive it).
fn claude_tool_escapes(daemon_section: &str) -> (Vec<i32>, Daemon, Project) {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = Project::with_claude(
        &fake,
        "mode = \"persistent\"\nallowed_tools = [\"Bash\"]\nkill_timeout = \"500ms\"\nmax_attempts = 1",
    );
    if !daemon_section.is_empty() {
        let config = std::fs::read_to_string(p.path("agentq.toml")).unwrap();
        std::fs::write(p.path("agentq.toml"), format!("{daemon_section}{config}")).unwrap();
    }
    let daemon = p.start();
    let command = format!(
        "{} sleep 0.2; sh -c 'echo $$ >> {}; exec sleep 300' </dev/null >/dev/null 2>&1 & echo started",
        setsid_sleeper(&p),
        p.path("pids.log").display()
    );
    let id = p.submit("c", &format!("[[bash {command}]]"));
    p.ok(&["wait", "--timeout", "120s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(p.output(id), "ran: started", "{t}");
    let pids = escaped(&p);
    assert_eq!(pids.len(), 2, "{pids:?}");
    let next = p.submit("c", "and now?");
    p.ok(&["wait", "--timeout", "120s", &next.to_string()]);
    let (count, _) = seen(&p.output(next));
    assert_eq!(count, 2, "the conversation goes on: {}", p.output(next));
    (pids, daemon, p)
}

/// A fork bomb (bounded here at 511 processes, in case the cap failed) under
/// `max_processes = 40`: the keeper kills all of it, the attempt fails as `process_limit`, and
/// nothing is left; a task under the cap on the same worker runs as usual.
#[test]
fn a_fork_bomb_is_capped_by_max_processes() {
    fork_bomb("");
}

/// The same with the attempt in a cgroup: the keeper counts its `cgroup.procs` (and where the
/// pids controller is offered, the kernel caps it too).
#[test]
fn in_a_cgroup_a_fork_bomb_is_capped_by_max_processes() {
    let Some(root) = CgroupRoot::new("bomb") else {
        return;
    };
    fork_bomb(&root.daemon_section());
    assert!(root.attempts().is_empty());
}

fn fork_bomb(daemon_section: &str) {
    let p = Project::new("");
    let bomb = p.path("bomb.sh");
    std::fs::write(
        &bomb,
        "#!/bin/sh\n\
         prompt=$(cat)\n\
         case \"$prompt\" in *calm*) echo calm; exit 0 ;; esac\n\
         spawn() { if [ \"$1\" -gt 0 ]; then spawn $(($1 - 1)) & spawn $(($1 - 1)) & fi; exec sleep 300; }\n\
         spawn 8\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bomb, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "{daemon_section}[defaults]\nkill_timeout = \"500ms\"\nmax_attempts = 1\nmax_processes = 40\n\
             [[worker]]\nname = \"w\"\ncommand = [\"{}\"]\n",
            bomb.display()
        ),
    )
    .unwrap();
    let daemon = p.start();
    let started = Instant::now();
    let id = p.submit("w", "boom");
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["cause"], "process_limit", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("more than 40 processes"),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    wait_until(Duration::from_millis(1500), "the bomb to be gone", || {
        p.agent_processes().is_empty()
    });
    let calm = p.submit("w", "calm");
    p.ok(&["wait", "--timeout", "60s", &calm.to_string()]);
    assert_eq!(p.output(calm), "calm\n");
    assert!(daemon.stop().success());
}

#[test]
fn max_processes_below_two_is_refused_with_its_line() {
    let p = Project::new(
        "[defaults]\nmax_processes = 1\n[[worker]]\nname = \"w\"\ncommand = [\"cat\"]\n",
    );
    let out = p.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("agentq.toml:2:") && text.contains("max_processes must be at least 2"),
        "{text}"
    );
}

/// Codex (the real CLI against the fake Responses API) runs a command through its
/// `exec_command` tool that leaves a process in a session of its own: it ends with the task.
/// (`danger-full-access`: nothing of Codex's own sandbox stands between the command and its
/// escape, so what ends it is agentq's.)
#[test]
fn a_codex_tools_setsid_child_ends_with_its_task() {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = Project::with_codex(
        &fake,
        "sandbox = \"danger-full-access\"\nkill_timeout = \"500ms\"\nmax_attempts = 1",
    );
    a_tools_setsid_child_ends_with_its_task(&p, "x", |command| format!("go [[exec {command}]]"));
}

/// Gemini (the real CLI against the fake Gemini API, in `yolo` approval mode) runs a command
/// through its `run_shell_command` tool that leaves a process in a session of its own: it ends
/// with the task.
#[test]
fn a_gemini_shell_commands_setsid_child_ends_with_its_task() {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = Project::with_gemini(
        &fake,
        "approval_mode = \"yolo\"\nkill_timeout = \"500ms\"\nmax_attempts = 1",
    );
    a_tools_setsid_child_ends_with_its_task(&p, "g", |command| {
        let args = serde_json::json!({ "command": command }).to_string();
        format!("go [[tool run_shell_command {args}]]")
    });
}

/// A shell line that starts a process in a session of its own, which writes its pid to
/// `pids.log` and sleeps.
fn setsid_sleeper(p: &Project) -> String {
    format!(
        "setsid sh -c 'echo $$ >> {}; exec sleep 300' </dev/null >/dev/null 2>&1 &",
        p.path("pids.log").display()
    )
}

/// Runs, on `worker`, the prompt `ask` makes of a [`setsid_sleeper`] command for the agent's
/// tool to run; the task succeeds, and the sleeper is gone soon after.
fn a_tools_setsid_child_ends_with_its_task(
    p: &Project,
    worker: &str,
    ask: impl Fn(&str) -> String,
) {
    let daemon = p.start();
    let id = p.submit(worker, &ask(&setsid_sleeper(p)));
    p.ok(&["wait", "--timeout", "120s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["state"], "succeeded", "{t}");
    let pids = escaped(p);
    assert_eq!(pids.len(), 1, "{pids:?}: {t}");
    all_gone_soon(&pids);
    assert!(daemon.stop().success());
}

/// A cgroup v2 folder of a test's own under the cgroup2 mount, for `[daemon] cgroup`; removed
/// (with anything left in it killed) when dropped. `None`, with the reason printed, where this
/// user may not make one (the test is then skipped).
struct CgroupRoot {
    dir: std::path::PathBuf,
}

impl CgroupRoot {
    fn new(name: &str) -> Option<CgroupRoot> {
        let Some(mount) = agentq_platform::process::cgroup::mount_point() else {
            eprintln!("skipped: no cgroup v2 file system is mounted here");
            return None;
        };
        let dir = mount.join(format!("agentq-e2e-{name}-{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(CgroupRoot { dir }),
            Err(e) => {
                eprintln!(
                    "skipped: cannot make a cgroup under {}: {e}",
                    mount.display()
                );
                None
            }
        }
    }

    /// The attempts' cgroups in it now.
    fn attempts(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn daemon_section(&self) -> String {
        format!(
            "[daemon]\ncontainment = \"cgroup\"\ncgroup = \"{}\"\n",
            self.dir.display()
        )
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for dir in self.attempts() {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..200 {
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A daemon dividing a cgroup of the test's own, running a task whose escapers have all started
/// (and hang on); `None` where no cgroup may be made here (the test is skipped).
fn hanging_in_a_cgroup(name: &str) -> Option<(CgroupRoot, Project, Daemon, i64)> {
    let root = CgroupRoot::new(name)?;
    let p = project(&root.daemon_section());
    let daemon = p.start();
    let id = p.submit("w", "hang");
    wait_until(Duration::from_secs(20), "the escapers to start", || {
        escaped(&p).len() == 4
    });
    Some((root, p, daemon, id))
}

fn cgroup_procs(dir: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// With a cgroup to divide, each attempt's processes are in a cgroup of its own, whatever they
/// did to leave the agent's session or environment; a cancel and an agent's own end both leave
/// nothing, and the attempt's cgroup goes with it. `doctor` says what is in force.
#[test]
fn in_a_cgroup_of_its_own_nothing_gets_away_and_the_cgroup_goes_with_the_attempt() {
    let Some((root, p, daemon, id)) = hanging_in_a_cgroup("escape") else {
        return;
    };
    let attempts = root.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let inside = cgroup_procs(&attempts[0]);
    for pid in escaped(&p) {
        assert!(inside.contains(&pid), "{pid} is in {inside:?}");
    }
    let doctor = p.run(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains(&format!(
            "uses a cgroup v2 per attempt under {}",
            root.dir.display()
        )),
        "{text}"
    );
    p.ok(&["cancel", &id.to_string()]);
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(p.state(id), "cancelled");
    all_gone_soon(&escaped(&p));
    wait_until(Duration::from_secs(2), "the attempt's cgroup to go", || {
        root.attempts().is_empty()
    });

    std::fs::remove_file(p.path("pids.log")).unwrap();
    let (t, pids) = run_one(&p, "go");
    assert_eq!(t["state"], "succeeded", "{t}");
    all_gone_soon(&pids);
    wait_until(Duration::from_secs(2), "the attempt's cgroup to go", || {
        root.attempts().is_empty()
    });
    assert!(daemon.stop().success());
}

/// The daemon, its guardian and the attempt's keeper all killed at once (SIGKILL, nothing can
/// clean up): what the agent started in new sessions runs on, orphaned, in the attempt's cgroup,
/// until the next daemon starts and kills it there, and says so.
#[test]
fn what_a_daemon_killed_with_its_keepers_left_in_a_cgroup_dies_at_the_next_start() {
    let Some((root, p, daemon, id)) = hanging_in_a_cgroup("stale") else {
        return;
    };
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // Frozen first, so that it starts no guardian again and stops nothing.
    daemon.signal(Signal::SIGSTOP);
    let keepers: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1));
            args.get(1) == Some(&&b"keep"[..]) && ppid == Some(&daemon.pid().to_string())
        })
        .collect();
    assert_eq!(keepers.len(), 1, "{keepers:?}");
    for pid in daemon.guardian().into_iter().chain(keepers) {
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    }
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let pids = escaped(&p);
    let left: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
    assert_eq!(left.len(), 4, "all four ran on, orphaned: {left:?}");
    let stale = root.attempts();
    assert_eq!(stale.len(), 1);

    let daemon = p.start();
    all_gone_soon(&pids);
    wait_until(Duration::from_secs(5), "the stale cgroup to go", || {
        !stale[0].exists()
    });
    // The task was given back and runs again, in a cgroup of the new daemon's.
    p.ok(&["cancel", &id.to_string()]);
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    let events = p.ok(&["events", "--json"]);
    assert!(
        events.contains("agent_reaped") && events.contains(&root.dir.display().to_string()),
        "{events}"
    );
    assert!(daemon.stop().success());
}

/// `containment = "cgroup"` where there is none to use is refused at start, saying why and
/// what to do; `doctor` fails the same way.
#[test]
fn a_required_cgroup_that_cannot_be_had_is_refused_with_the_reason() {
    let p = project("[daemon]\ncontainment = \"cgroup\"\ncgroup = \"/tmp/not-a-cgroup\"\n");
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("containment = \"cgroup\", but there is no cgroup to use")
            && err.contains("containment = \"auto\""),
        "{err}"
    );
    let doctor = p.run(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("there is no cgroup to use") && text.contains("Delegate=yes"),
        "{text}"
    );
}
