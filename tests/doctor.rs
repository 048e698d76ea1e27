//! `agentq doctor` and `agentq service`, through the real binary in temporary projects.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `agentq doctor ARGS` without the variables doctor reports on (the tests may themselves run
/// under Claude Code), plus `env`.
fn doctor(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["doctor"];
    all.extend(args);
    let mut cmd = p.cmd(&all);
    cmd.env_remove("AGENTQ_CLAUDE_BIN");
    for (k, _) in std::env::vars() {
        if k.starts_with("CLAUDECODE") || k.starts_with("CLAUDE_CODE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `agentq doctor --json`: its exit code and its checks.
fn doctor_json(p: &Project, env: &[(&str, &str)]) -> (Option<i32>, Vec<Value>) {
    let out = doctor(p, &["--json"], env);
    let checks: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {}", text(&out.stdout)));
    (out.status.code(), checks.as_array().unwrap().clone())
}

/// The check of that name.
fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

fn status<'a>(checks: &'a [Value], name: &str) -> &'a str {
    find(checks, name)["status"].as_str().unwrap()
}

#[test]
fn a_healthy_project_passes_every_check() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    p.ok(&["status"]); // creates the state folder and the database
    let out = doctor(&p, &[], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    for line in [
        "ok    config ",
        "ok    state folder ",
        "ok    database ",
        "ok    schema ",
        "ok    daemon ",
        "ok    worker w: cwd ",
        "ok    worker w: agent ",
        " -    git bash ",
        " -    http port ",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    assert!(report.contains("HTTP API off"), "{report}");
    assert!(report.ends_with("all checks passed\n"), "{report}");

    let (code, checks) = doctor_json(&p, &[]);
    assert_eq!(code, Some(0));
    for c in &checks {
        assert!(
            ["ok", "skip"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["detail"].is_string() && c.get("fix").is_some(), "{c}");
    }
    assert!(
        find(&checks, "worker w: agent")["detail"]
            .as_str()
            .unwrap()
            .contains("command \"cat\" is /"),
        "{checks:#?}"
    );
}

#[test]
fn the_claude_agent_is_found_and_its_version_printed() {
    let bin = claude_bin();
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    let version = text(&version.stdout).trim().to_string();
    assert!(!version.is_empty());
    let p = Project::new(&format!(
        "[defaults]\nclaude_bin = \"{}\"\n[[worker]]\nname = \"c\"\nagent = \"claude\"\n[worker.env]\nHOME = \"{}\"\nDISABLE_AUTOUPDATER = \"1\"\n\n[pool]\nmax_workers = 2\n",
        bin.display(),
        std::env::temp_dir().display(),
    ));
    let (code, checks) = doctor_json(&p, &[]);
    assert_eq!(code, Some(0), "{checks:#?}");
    let agent = find(&checks, "worker c: agent");
    assert_eq!(agent["status"], "ok", "{agent}");
    assert_eq!(
        agent["detail"],
        format!("claude {version} ({})", bin.display())
    );
    // The pool runs Claude too (its default agent), with [defaults] claude_bin.
    assert_eq!(status(&checks, "pool: cwd"), "ok");
    assert_eq!(status(&checks, "pool: agent"), "ok");

    // AGENTQ_CLAUDE_BIN wins over the config, as it does for the daemon.
    let (code, checks) = doctor_json(&p, &[("AGENTQ_CLAUDE_BIN", "/nonexistent/claude")]);
    assert_eq!(code, Some(1));
    let agent = find(&checks, "worker c: agent");
    assert_eq!(agent["status"], "fail");
    assert!(
        agent["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/claude"),
        "{agent}"
    );
    assert!(
        agent["fix"].as_str().unwrap().contains("claude_bin"),
        "{agent}"
    );
}

#[test]
fn each_failure_is_marked_and_names_its_fix() {
    let p = Project::new(
        "[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"no-such-agent-xyz\"]\n\
         [[worker]]\nname = \"b\"\nagent = \"command\"\ncommand = [\"./agent.sh\"]\ncwd = \"missing\"\n",
    );
    p.ok(&["status"]);
    std::fs::set_permissions(p.path(".agentq"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = doctor(&p, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    let state_dir = p.path(".agentq");
    for line in [
        format!(
            "FAIL  state folder     {} has mode 0755",
            state_dir.display()
        ),
        format!("fix: make it private: `chmod 700 {}`", state_dir.display()),
        "FAIL  worker a: agent  \"no-such-agent-xyz\" is not on PATH".to_string(),
        "FAIL  worker b: cwd".to_string(),
        format!(
            "fix: create it (`mkdir -p {}`)",
            p.path("missing").display()
        ),
        "FAIL  worker b: agent".to_string(),
        "4 check(s) failed".to_string(),
    ] {
        assert!(report.contains(&line), "{line:?} missing from:\n{report}");
    }
    assert!(
        text(&out.stderr).contains("doctor check(s) failed"),
        "{}",
        text(&out.stderr)
    );

    // Fixed as the report says, they pass; a script that is there but not executable does not.
    std::fs::set_permissions(p.path(".agentq"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(p.path("missing")).unwrap();
    std::fs::write(p.path("missing/agent.sh"), "#!/bin/sh\ncat\n").unwrap();
    let (_, checks) = doctor_json(&p, &[]);
    assert_eq!(status(&checks, "state folder"), "ok");
    assert_eq!(status(&checks, "worker b: cwd"), "ok");
    let b = find(&checks, "worker b: agent");
    assert_eq!(b["status"], "fail");
    assert!(b["fix"].as_str().unwrap().contains("chmod +x"), "{b}");
}

#[test]
fn a_bad_config_is_reported_with_its_line_and_the_rest_still_checked() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    p.ok(&["status"]);
    let config = p.path("agentq.toml");
    std::fs::write(&config, format!("{}\nnot_a_setting = 1\n", read(&config))).unwrap();
    let (code, checks) = doctor_json(&p, &[]);
    assert_eq!(code, Some(1));
    let c = find(&checks, "config");
    assert_eq!(c["status"], "fail");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{}:", config.display())),
        "{detail}"
    );
    assert!(detail.contains("not_a_setting"), "{detail}");
    assert_eq!(status(&checks, "workers"), "skip");
    assert_eq!(status(&checks, "state folder"), "ok");
    assert_eq!(status(&checks, "database"), "ok");
    assert_eq!(status(&checks, "daemon"), "ok");

    // No config at all: said, with what to do.
    let empty = tempfile::tempdir().unwrap();
    let out = p
        .cmd(&["doctor"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("run `agentq init` in the project folder"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn parent_session_variables_warn_without_failing() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let (code, checks) = doctor_json(&p, &[("CLAUDECODE", "1")]);
    assert_eq!(code, Some(0), "{checks:#?}");
    let c = find(&checks, "parent session");
    assert_eq!(c["status"], "warn");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("CLAUDECODE set here"),
        "{c}"
    );
    // Before any command ran, the state folder is only not there yet.
    assert_eq!(status(&checks, "state folder"), "warn");
    assert_eq!(status(&checks, "database"), "ok");
}

#[test]
fn a_running_daemon_is_named_by_its_pid() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let daemon = p.start();
    let (code, checks) = doctor_json(&p, &[]);
    assert_eq!(code, Some(0), "{checks:#?}");
    assert_eq!(
        find(&checks, "daemon")["detail"],
        format!("running (pid {})", daemon.pid())
    );
    assert_eq!(status(&checks, "database"), "ok");
    assert!(daemon.stop().success());
}

/// `agentq service install ARGS` with the user's service folder under `home`.
fn service(p: &Project, home: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["service", "install"];
    all.extend(args);
    p.cmd(&all)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .output()
        .unwrap()
}

/// A `systemctl` on `PATH` ahead of any real one, in `home/bin`: it appends its arguments to
/// `home/systemctl.log`, says the unit is enabled and active, and exits with `home/systemctl.exit`
/// (0 if missing; non-zero with a complaint on stderr).
fn fake_systemctl(home: &std::path::Path) -> String {
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("systemctl");
    let h = home.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"$*\" >> '{h}/systemctl.log'\n\
             case \"$2\" in is-enabled) echo enabled;; is-active) echo active;; esac\n\
             code=$(cat '{h}/systemctl.exit' 2>/dev/null || echo 0)\n\
             [ \"$code\" = 0 ] || echo 'Failed to connect to bus: No medium found' >&2\n\
             exit $code\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// `agentq ARGS` with the user's service folder under `home`, as `service` runs it, and the fake
/// systemctl.
fn with_fake(p: &Project, home: &std::path::Path, args: &[&str]) -> Output {
    p.cmd(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .env("PATH", fake_systemctl(home))
        .output()
        .unwrap()
}

/// What the fake systemctl was asked, a line per run (and forgets it).
fn systemctl_runs(home: &std::path::Path) -> Vec<String> {
    let log = home.join("systemctl.log");
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    runs.lines().map(str::to_string).collect()
}

fn unit_files(home: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("xdg/systemd/user"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn service_install_writes_a_user_unit_and_keeps_a_different_one() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "[daemon]\nshutdown_grace = \"20s\"\n");
    let home = tempfile::tempdir().unwrap();
    let out = service(&p, home.path(), &["--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = unit_files(home.path());
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("agentq-agentq-test") && name.ends_with(".service"),
        "{name}"
    );

    let root = std::fs::canonicalize(p.dir.path()).unwrap();
    let exe = std::fs::canonicalize(BIN).unwrap();
    let unit = read(&files[0]);
    for line in [
        format!("Description=agentq workers for {}", root.display()),
        format!("WorkingDirectory={}", root.display()),
        format!(
            "ExecStart={} run --config {}",
            exe.display(),
            root.join("agentq.toml").display()
        ),
        format!("Environment=PATH={}", std::env::var("PATH").unwrap()),
        "Restart=on-failure".into(),
        "KillMode=mixed".into(),
        "KillSignal=SIGTERM".into(),
        // 20 s grace + 5 s kill_timeout + 10 s margin
        "TimeoutStopSec=35".into(),
        "WantedBy=default.target".into(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line:?} missing from:\n{unit}"
        );
    }
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "systemctl --user daemon-reload && systemctl --user enable --now {name}"
        )),
        "{said}"
    );
    assert!(said.contains("loginctl enable-linger"), "{said}");

    // Again: the same file, left as it is.
    let out = service(&p, home.path(), &["--user"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("Unchanged:"),
        "{}",
        text(&out.stdout)
    );

    // Edited by hand: kept, unless forced.
    std::fs::write(&files[0], format!("{unit}# mine\n")).unwrap();
    let out = service(&p, home.path(), &["--user"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert!(read(&files[0]).ends_with("# mine\n"));
    let out = service(&p, home.path(), &["--user", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(&files[0]), unit);
}

#[test]
fn service_install_print_writes_nothing() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let home = tempfile::tempdir().unwrap();
    let out = service(&p, home.path(), &["--user", "--print"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(unit_files(home.path()).is_empty());
    let unit = text(&out.stdout);
    assert!(
        unit.starts_with("# Written by `agentq service install`"),
        "{unit}"
    );
    assert!(unit.contains("\nWantedBy=default.target\n"), "{unit}");
    assert!(
        text(&out.stderr).contains("systemd/user/agentq-"),
        "{}",
        text(&out.stderr)
    );

    // A system unit (printed only: the tests may run as root) waits for the network.
    let out = service(&p, home.path(), &["--print"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = text(&out.stdout);
    assert!(unit.contains("\nAfter=network-online.target\n"), "{unit}");
    assert!(unit.contains("\nWantedBy=multi-user.target\n"), "{unit}");
    assert!(
        text(&out.stderr).contains("/etc/systemd/system/agentq-"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn service_uninstall_stops_and_removes_the_unit_install_wrote_and_doctor_follows() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = with_fake(&p, h, &["service", "install", "--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = unit_files(h);
    assert_eq!(files.len(), 1);
    let unit = files[0].clone();
    let name = unit.file_name().unwrap().to_string_lossy().into_owned();
    // Install asks nothing of systemd: it prints the commands.
    assert_eq!(systemctl_runs(h), Vec::<String>::new());

    let out = with_fake(&p, h, &["doctor", "--json"]);
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = find(checks.as_array().unwrap(), "service");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(
        check["detail"],
        format!("user unit {}: enabled, active", unit.display())
    );
    assert_eq!(
        systemctl_runs(h),
        [
            format!("--user is-enabled {name}"),
            format!("--user is-active {name}")
        ]
    );

    // systemd cannot be reached: the unit stays, so that it can still be stopped.
    std::fs::write(h.join("systemctl.exit"), "1").unwrap();
    let out = with_fake(&p, h, &["service", "uninstall", "--user"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "`systemctl --user disable --now {name}` failed: Failed to connect to bus"
        )),
        "{said}"
    );
    assert!(unit.exists());
    std::fs::remove_file(h.join("systemctl.exit")).unwrap();
    systemctl_runs(h);

    // Without --user it looks for a system unit, finds none, and points at the user's.
    let out = with_fake(&p, h, &["service", "uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("there is no /etc/systemd/system/{name}")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "There is a user unit for it: {} (agentq service uninstall --user)",
            unit.display()
        )),
        "{said}"
    );
    assert!(unit.exists());

    let out = with_fake(&p, h, &["service", "uninstall", "--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert_eq!(
        said,
        format!(
            "Ran `systemctl --user disable --now {name}`\nRemoved {}\nRan `systemctl --user daemon-reload`\n",
            unit.display()
        )
    );
    assert!(!unit.exists());
    assert_eq!(
        systemctl_runs(h),
        [
            format!("--user disable --now {name}"),
            "--user daemon-reload".to_string()
        ]
    );

    // Nothing left: said so, and no failure.
    let out = with_fake(&p, h, &["service", "uninstall", "--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("No agentq service is installed for "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(systemctl_runs(h), Vec::<String>::new());
    let out = with_fake(&p, h, &["doctor", "--json"]);
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        find(checks.as_array().unwrap(), "service")["status"],
        "skip"
    );
}

#[test]
fn service_uninstall_leaves_another_folders_unit_alone() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = with_fake(&p, h, &["service", "install", "--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = unit_files(h).remove(0);
    let root = std::fs::canonicalize(p.dir.path()).unwrap();
    let theirs = read(&unit).replace(
        &format!("WorkingDirectory={}", root.display()),
        "WorkingDirectory=/srv/someone else",
    );
    std::fs::write(&unit, &theirs).unwrap();
    let out = with_fake(&p, h, &["service", "uninstall", "--user"]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert!(
        said.contains("is not this folder's: it runs agentq in /srv/someone else"),
        "{said}"
    );
    assert_eq!(read(&unit), theirs);
    assert_eq!(systemctl_runs(h), Vec::<String>::new());
}

#[test]
fn service_run_starts_a_daemon_that_died_again_and_passes_a_stop_on() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let log = p.path("supervisor.log");
    let mut supervisor = p
        .cmd(&["service", "run"])
        .env("AGENTQ_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon_pid = || -> Option<i64> {
        let status = p.json(&["status"]);
        status["daemon"]["running"]
            .as_bool()
            .unwrap_or(false)
            .then(|| status["daemon"]["pid"].as_i64())
            .flatten()
    };
    let mut first = None;
    wait_until(Duration::from_secs(20), "the daemon to start", || {
        first = daemon_pid();
        first.is_some()
    });
    let first = first.unwrap() as i32;
    let kill = |pid: i32, sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    kill(first, nix::sys::signal::Signal::SIGKILL).unwrap();
    // Started again after its pause (5 s).
    let mut second = None;
    wait_until(Duration::from_secs(30), "the daemon to start again", || {
        second = daemon_pid().filter(|p| *p != first as i64);
        second.is_some()
    });
    let second = second.unwrap() as i32;
    // Its output goes to the service's log; it is up (its signals handled) once it says so.
    let restarted = "the daemon ended (killed by SIGKILL); starting it again in 5s";
    wait_until(
        Duration::from_secs(20),
        "the new daemon's first words",
        || {
            std::fs::read_to_string(p.path(".agentq/service.log"))
                .unwrap_or_default()
                .split(restarted)
                .nth(1)
                .is_some_and(|after| after.contains("agentq running"))
        },
    );

    // A stop is passed on; the daemon ends well, and is not started again.
    kill(supervisor.id() as i32, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = supervisor.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{}", read(&log));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", read(&log));
    wait_until(Duration::from_secs(5), "the daemon to be gone", || {
        !alive(second)
    });
    let said = read(&log);
    assert!(
        said.contains("asked to stop; passing it on to the daemon"),
        "{said}"
    );
    assert!(
        said.contains("the daemon ended (exit code 0); not starting it again"),
        "{said}"
    );
}

#[test]
fn service_install_carries_the_environment_in_a_file_only_its_owner_reads_and_uninstall_takes_it() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let install = |args: &[&str]| {
        let mut all = vec!["service", "install", "--user"];
        all.extend(args);
        p.cmd(&all)
            .env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join("xdg"))
            .env("PATH", fake_systemctl(h))
            .env("ANTHROPIC_API_KEY", "sk-ant-from-the-shell")
            .env(
                "AGENTQ_DATABASE_URL",
                "postgres://agentq:db-pw@127.0.0.1:9/q",
            )
            .env("OPENAI_API_KEY", "")
            .env("MY_LANG", "pt_BR")
            .output()
            .unwrap()
    };
    let out = install(&[
        "--env",
        "EXTRA=with \"quotes\" and $dollar",
        "--env",
        "MY_LANG",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = unit_files(h)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "service"))
        .unwrap();
    let env_file = unit.with_extension("env");
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "Wrote {} (readable by you only), carrying AGENTQ_DATABASE_URL, ANTHROPIC_API_KEY, EXTRA, MY_LANG\n",
            env_file.display()
        )),
        "{said}"
    );
    for secret in ["sk-ant", "db-pw", "pt_BR"] {
        assert!(
            !said.contains(secret) && !text(&out.stderr).contains(secret),
            "{said}"
        );
    }
    let unit_text = read(&unit);
    assert!(
        unit_text
            .lines()
            .any(|l| l == format!("EnvironmentFile={}", env_file.display())),
        "{unit_text}"
    );
    assert!(!unit_text.contains("sk-ant"), "{unit_text}");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{:o}", mode);
    let vars = read(&env_file);
    for line in [
        "ANTHROPIC_API_KEY=\"sk-ant-from-the-shell\"",
        "AGENTQ_DATABASE_URL=\"postgres://agentq:db-pw@127.0.0.1:9/q\"",
        "EXTRA=\"with \\\"quotes\\\" and \\$dollar\"",
        "MY_LANG=\"pt_BR\"",
    ] {
        assert!(
            vars.lines().any(|l| l == line),
            "{line} missing from:\n{vars}"
        );
    }
    assert!(
        !vars.contains("OPENAI_API_KEY"),
        "an empty variable is not carried"
    );

    // --print shows no value; a name that is not set is refused.
    let out = install(&["--print"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("sk-ant"));
    assert!(
        text(&out.stderr).contains(
            "it carries AGENTQ_DATABASE_URL, ANTHROPIC_API_KEY, whose values are shown as ***"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = install(&["--env", "NOT_SET_ANYWHERE"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("--env NOT_SET_ANYWHERE: NOT_SET_ANYWHERE is not set in this shell"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(read(&env_file), vars, "left as it was");

    let out = with_fake(&p, h, &["service", "uninstall", "--user"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("Removed {}\n", env_file.display())),
        "{}",
        text(&out.stdout)
    );
    assert!(!unit.exists() && !env_file.exists());
}

#[test]
fn service_run_starts_the_daemon_with_the_variables_of_its_environment_file() {
    let p = Project::with_workers(
        &["w"],
        r#"["sh", "-c", "printf '%s|%s' \"$CARRIED_KEY\" \"$FROM_HAND\""]"#,
        "",
    );
    let env_file = p.path("service.env");
    std::fs::write(
        &env_file,
        "# as `service install` writes it\nCARRIED_KEY=\"a \\\"quoted\\\" \\$value\"\nFROM_HAND=bare\n",
    )
    .unwrap();
    let supervisor = p
        .cmd(&["service", "run", "--env-file", env_file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    /// Asks `service run` to stop (it stops its daemon) when the test ends, however it ends.
    struct Stopped(std::process::Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while self.0.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = self.0.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let supervisor = Stopped(supervisor);
    let id = p.submit("w", "hello");
    p.wait_all(&[id]);
    assert_eq!(p.output(id), "a \"quoted\" $value|bare");
    drop(supervisor);
    let status = p.json(&["status"]);
    assert_eq!(status["daemon"]["running"], false, "{status}");
}
