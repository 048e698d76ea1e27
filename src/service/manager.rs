//! What agentq asks of the service managers: systemd's `systemctl`, launchd's `launchctl`, Task
//! Scheduler's `schtasks`. Every command goes through a [`Run`] the caller passes ([`run_tool`]
//! for real ones), so which commands are run, and what their answers mean, are tested without
//! the managers.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentq_core::error::{Error, Result};

use super::{Kind, Plan};

/// What a command said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ran {
    /// It exited with 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// What it said, for a message: its error output, else its output.
    fn said(&self) -> String {
        let said = match self.stderr.trim() {
            "" => self.stdout.trim(),
            err => err,
        };
        if said.is_empty() {
            "it said nothing".into()
        } else {
            said.to_string()
        }
    }
}

/// Runs one command (its program first) and gives what it said; an `Err` of kind `NotFound` when
/// the program is not installed.
pub type Run<'a> = dyn FnMut(&[&str]) -> std::io::Result<Ran> + 'a;

/// Runs `argv` with no input, and gives it `limit` to finish (then it is killed, and the answer
/// is a `TimedOut` error).
pub fn run_tool(argv: &[&str], limit: Duration) -> std::io::Result<Ran> {
    let (program, args) = argv.split_first().expect("a command names its program");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read on threads of their own, so a full pipe never holds the command up.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Ok(Ran {
            ok: status.success(),
            stdout,
            stderr,
        }),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", limit.as_secs()),
        )),
    }
}

/// `systemctl` or `systemctl --user`, then `args`.
fn systemctl<'a>(plan: &Plan, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["systemctl"];
    if plan.user {
        argv.push("--user");
    }
    argv.extend(args);
    argv
}

/// The launchd domain target of the plan's job: `gui/<uid>/<label>` or `system/<label>`.
fn launchd_target(plan: &Plan) -> String {
    match (plan.user, agentq_platform::host::user_id()) {
        (true, Some(uid)) => format!("gui/{uid}/{}", plan.name),
        _ => format!("system/{}", plan.name),
    }
}

fn failed(argv: &[&str], message: impl Into<String>) -> Error {
    Error::ServiceManager {
        command: argv.join(" "),
        message: message.into(),
    }
}

/// Registers the plan's task with Task Scheduler from its file, replacing a task of that name
/// (whose it is was checked first: see [`task_registered`]). Other kinds are started by the
/// commands install prints, as their managers expect of a new file.
pub fn register(plan: &Plan, run: &mut Run) -> Result<()> {
    if plan.kind != Kind::Task {
        return Ok(());
    }
    let path = plan.path.display().to_string();
    let argv = [
        "schtasks", "/Create", "/TN", &plan.name, "/XML", &path, "/F",
    ];
    match run(&argv) {
        Ok(ran) if ran.ok => Ok(()),
        Ok(ran) => Err(failed(&argv, ran.said())),
        Err(e) => Err(failed(&argv, e.to_string())),
    }
}

/// Whether Task Scheduler has a task of the plan's name: `None` when it cannot tell (schtasks is
/// missing, or answered nothing, as Wine's does: it does not implement `/Query`).
pub fn task_registered(plan: &Plan, run: &mut Run) -> Option<bool> {
    match run(&["schtasks", "/Query", "/TN", &plan.name, "/FO", "CSV", "/NH"]) {
        Ok(ran) if ran.ok && ran.stdout.trim().is_empty() => None,
        Ok(ran) => Some(ran.ok),
        Err(_) => None,
    }
}

/// Stops the service and has its manager let it go, before its file is removed; says what it
/// did, a line each. An error leaves the file in place (see [`super::uninstall`]).
///
/// - systemd: `systemctl [--user] disable --now` (stops it, and removes what enabled it). Its
///   failure keeps the unit file, so that systemd can still stop the unit; with no `systemctl`
///   at all there is no systemd that could have started it.
/// - launchd: `launchctl bootout`, whose failure is noted only: it fails for a job not loaded.
/// - Task Scheduler: `schtasks /End` (ends the task's `service run` and so the daemon's job),
///   then `/Delete`, whose failure counts unless Task Scheduler has no such task.
pub fn stop(plan: &Plan, run: &mut Run) -> Result<Vec<String>> {
    let mut said = Vec::new();
    match plan.kind {
        Kind::Systemd => {
            let argv = systemctl(plan, &["disable", "--now", &plan.name]);
            match run(&argv) {
                Ok(ran) if ran.ok => said.push(format!("Ran `{}`", argv.join(" "))),
                Ok(ran) => {
                    return Err(failed(
                        &argv,
                        format!(
                            "{}; the unit file stays, so that systemd can still stop it: once that works run `agentq service uninstall{}` again, or remove {} yourself",
                            ran.said(),
                            plan.user_flag(),
                            plan.path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    said.push("systemctl is not installed: no systemd here runs it".into())
                }
                Err(e) => return Err(failed(&argv, e.to_string())),
            }
        }
        Kind::Launchd => {
            let target = launchd_target(plan);
            let argv = ["launchctl", "bootout", target.as_str()];
            match run(&argv) {
                Ok(ran) if ran.ok => said.push(format!("Ran `{}`", argv.join(" "))),
                Ok(ran) => said.push(format!(
                    "`{}`: {} (it was not loaded)",
                    argv.join(" "),
                    ran.said()
                )),
                Err(e) => said.push(format!("`{}`: {e}", argv.join(" "))),
            }
        }
        Kind::Task => {
            let end = ["schtasks", "/End", "/TN", &plan.name];
            if let Ok(ran) = run(&end)
                && ran.ok
            {
                said.push(format!("Ran `{}`", end.join(" ")));
            }
            let delete = ["schtasks", "/Delete", "/TN", &plan.name, "/F"];
            match run(&delete) {
                Ok(ran) if ran.ok => said.push(format!("Ran `{}`", delete.join(" "))),
                outcome => {
                    if task_registered(plan, run) == Some(false) {
                        said.push(format!("Task Scheduler had no task {}", plan.name));
                    } else {
                        let message = match outcome {
                            Ok(ran) => ran.said(),
                            Err(e) => e.to_string(),
                        };
                        return Err(failed(&delete, message));
                    }
                }
            }
        }
    }
    Ok(said)
}

/// After the file is gone: systemd reloads its units, so it forgets the removed one at once (its
/// failure is harmless: the next reload does it). Nothing for the others.
pub fn forget(plan: &Plan, run: &mut Run) -> Vec<String> {
    if plan.kind != Kind::Systemd {
        return Vec::new();
    }
    let argv = systemctl(plan, &["daemon-reload"]);
    match run(&argv) {
        Ok(ran) if ran.ok => vec![format!("Ran `{}`", argv.join(" "))],
        Ok(ran) => vec![format!(
            "`{}`: {} (systemd forgets the unit at its next reload)",
            argv.join(" "),
            ran.said()
        )],
        Err(_) => Vec::new(),
    }
}

/// What the service manager makes of an installed service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It could not be asked, or did not say (why).
    Unknown(String),
    /// It will start the service by itself, and runs it if it can tell (its words).
    Fine(String),
    /// It has the file but does not run it, or will not start it (its words), and what fixes it.
    Amiss { said: String, fix: String },
}

/// Asks the plan's manager about it: systemd whether the unit is enabled and active, launchd
/// whether the job is loaded, Task Scheduler the task's status.
pub fn ask(plan: &Plan, run: &mut Run) -> Answer {
    match plan.kind {
        Kind::Systemd => {
            let mut word = |what: &str| match run(&systemctl(plan, &[what, &plan.name])) {
                // Both print their one word whatever their exit code.
                Ok(ran) => match ran.stdout.trim() {
                    "" => Err(ran.said()),
                    word => Ok(word.to_string()),
                },
                Err(e) => Err(format!("systemctl: {e}")),
            };
            let (enabled, active) = match (word("is-enabled"), word("is-active")) {
                (Ok(e), Ok(a)) => (e, a),
                (Err(why), _) | (_, Err(why)) => {
                    return Answer::Unknown(why.lines().next().unwrap_or("").to_string());
                }
            };
            let said = format!("{enabled}, {active}");
            let ctl = systemctl(plan, &[]).join(" ");
            let journal = if plan.user {
                "journalctl --user"
            } else {
                "journalctl"
            };
            if !enabled.starts_with("enabled") {
                Answer::Amiss {
                    said,
                    fix: plan.enable[0].clone(),
                }
            } else if active == "failed" {
                Answer::Amiss {
                    said,
                    fix: format!(
                        "see why with `{journal} -u {0}`, then `{ctl} restart {0}`",
                        plan.name
                    ),
                }
            } else if active == "inactive" {
                Answer::Amiss {
                    said,
                    fix: format!("{ctl} start {}", plan.name),
                }
            } else {
                Answer::Fine(said)
            }
        }
        Kind::Launchd => {
            let target = launchd_target(plan);
            match run(&["launchctl", "print", &target]) {
                Ok(ran) if ran.ok => Answer::Fine("loaded".into()),
                Ok(_) => Answer::Amiss {
                    said: "not loaded".into(),
                    fix: plan.enable[0].clone(),
                },
                Err(e) => Answer::Unknown(format!("launchctl: {e}")),
            }
        }
        Kind::Task => match run(&["schtasks", "/Query", "/TN", &plan.name, "/FO", "CSV", "/NH"]) {
            Ok(ran) if ran.ok => match task_status(&ran.stdout) {
                Some(status) => Answer::Fine(status),
                None => Answer::Unknown("schtasks /Query said nothing of it".into()),
            },
            Ok(_) => Answer::Amiss {
                said: format!("Task Scheduler has no task {}", plan.name),
                fix: "agentq service install (registers it again)".into(),
            },
            Err(e) => Answer::Unknown(format!("schtasks: {e}")),
        },
    }
}

/// The status of a task from `schtasks /Query /FO CSV /NH`: the third field of its line
/// (`"\name","next run","Ready"`), in the system's language.
fn task_status(csv: &str) -> Option<String> {
    let line = csv.lines().find(|l| !l.trim().is_empty())?;
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
        .get(2)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::tests::service;
    use super::super::{Kind, plan_for};
    use super::*;

    /// A runner that records every command and answers from `answers` (by the command's words
    /// joined with spaces; a missing one is a missing program).
    struct Fake {
        ran: Vec<String>,
        answers: Vec<(String, std::io::Result<Ran>)>,
    }

    fn ok(stdout: &str) -> std::io::Result<Ran> {
        Ok(Ran {
            ok: true,
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    fn fails(stdout: &str, stderr: &str) -> std::io::Result<Ran> {
        Ok(Ran {
            ok: false,
            stdout: stdout.into(),
            stderr: stderr.into(),
        })
    }

    impl Fake {
        fn new(answers: Vec<(&str, std::io::Result<Ran>)>) -> Fake {
            Fake {
                ran: Vec::new(),
                answers: answers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        }

        fn run(&mut self, argv: &[&str]) -> std::io::Result<Ran> {
            let line = argv.join(" ");
            self.ran.push(line.clone());
            match self.answers.iter().find(|(k, _)| *k == line) {
                Some((_, Ok(ran))) => Ok(ran.clone()),
                Some((_, Err(e))) => Err(std::io::Error::new(e.kind(), e.to_string())),
                None => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
    }

    fn plan(kind: Kind, user: bool) -> Plan {
        let env = |k: &str| match k {
            "HOME" => Some("/home/ann".to_string()),
            "LOCALAPPDATA" => Some("/c/local".to_string()),
            _ => None,
        };
        plan_for(kind, &service(user), &env).unwrap()
    }

    #[test]
    fn systemd_is_asked_to_stop_and_forget_the_unit_and_its_refusal_keeps_the_file() {
        let p = plan(Kind::Systemd, true);
        let n = &p.name;
        let disable = format!("systemctl --user disable --now {n}");
        let mut fake = Fake::new(vec![
            (&disable, ok("")),
            ("systemctl --user daemon-reload", ok("")),
        ]);
        let said = stop(&p, &mut |a| fake.run(a)).unwrap();
        assert_eq!(said, [format!("Ran `{disable}`")]);
        let said = forget(&p, &mut |a| fake.run(a));
        assert_eq!(said, ["Ran `systemctl --user daemon-reload`"]);
        assert_eq!(
            fake.ran,
            [disable.clone(), "systemctl --user daemon-reload".into()]
        );

        let mut fake = Fake::new(vec![(
            &disable,
            fails("", "Failed to connect to bus: No medium found\n"),
        )]);
        let err = stop(&p, &mut |a| fake.run(a)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("`{disable}` failed: Failed to connect to bus")),
            "{err}"
        );
        assert!(err.contains("agentq service uninstall --user"), "{err}");

        // No systemctl at all: nothing can be running it.
        let mut fake = Fake::new(vec![]);
        let said = stop(&p, &mut |a| fake.run(a)).unwrap();
        assert_eq!(
            said,
            ["systemctl is not installed: no systemd here runs it"]
        );
        assert!(forget(&p, &mut |a| fake.run(a)).is_empty());

        // A system unit: no --user.
        let p = plan(Kind::Systemd, false);
        let mut fake = Fake::new(vec![]);
        stop(&p, &mut |a| fake.run(a)).unwrap();
        assert_eq!(fake.ran, [format!("systemctl disable --now {}", p.name)]);
    }

    #[test]
    fn a_task_is_ended_then_deleted_and_one_already_gone_is_no_failure() {
        let p = plan(Kind::Task, true);
        let n = &p.name;
        let end = format!("schtasks /End /TN {n}");
        let delete = format!("schtasks /Delete /TN {n} /F");
        let query = format!("schtasks /Query /TN {n} /FO CSV /NH");
        let mut fake = Fake::new(vec![(&end, ok("")), (&delete, ok(""))]);
        let said = stop(&p, &mut |a| fake.run(a)).unwrap();
        assert_eq!(said, [format!("Ran `{end}`"), format!("Ran `{delete}`")]);

        // Not running, and deleted by hand already.
        let mut fake = Fake::new(vec![
            (&end, fails("", "ERROR: not running")),
            (
                &delete,
                fails("", "ERROR: The system cannot find the file specified."),
            ),
            (
                &query,
                fails("", "ERROR: The system cannot find the file specified."),
            ),
        ]);
        let said = stop(&p, &mut |a| fake.run(a)).unwrap();
        assert_eq!(said, [format!("Task Scheduler had no task {n}")]);

        // There, but not deleted (access denied): an error, the file stays.
        let mut fake = Fake::new(vec![
            (&delete, fails("", "ERROR: Access is denied.")),
            (&query, ok("\"\\x\",\"N/A\",\"Ready\"\r\n")),
        ]);
        let err = stop(&p, &mut |a| fake.run(a)).unwrap_err().to_string();
        assert_eq!(err, format!("`{delete}` failed: ERROR: Access is denied."));

        // Registered from its file; schtasks' complaint is the error.
        let path = p.path.display().to_string();
        let create = format!("schtasks /Create /TN {n} /XML {path} /F");
        let mut fake = Fake::new(vec![(&create, ok("SUCCESS"))]);
        register(&p, &mut |a| fake.run(a)).unwrap();
        let mut fake = Fake::new(vec![(
            &create,
            fails("", "ERROR: The task XML is malformed.\r\n"),
        )]);
        let err = register(&p, &mut |a| fake.run(a)).unwrap_err().to_string();
        assert!(
            err.ends_with("failed: ERROR: The task XML is malformed."),
            "{err}"
        );
        // Units are not registered by install.
        let mut fake = Fake::new(vec![]);
        register(&plan(Kind::Systemd, true), &mut |a| fake.run(a)).unwrap();
        assert!(fake.ran.is_empty());
    }

    #[test]
    fn whether_a_task_is_registered_is_unknown_when_schtasks_says_nothing() {
        let p = plan(Kind::Task, true);
        let query = format!("schtasks /Query /TN {} /FO CSV /NH", p.name);
        for (answer, registered) in [
            (ok("\"\\agentq-x\",\"N/A\",\"Running\"\r\n"), Some(true)),
            (
                fails("", "ERROR: The system cannot find the file specified."),
                Some(false),
            ),
            // Wine: /Query is not implemented, exits 0 and prints nothing.
            (ok(""), None),
        ] {
            let mut fake = Fake::new(vec![(&query, answer)]);
            assert_eq!(task_registered(&p, &mut |a| fake.run(a)), registered);
        }
    }

    #[test]
    fn the_managers_answers_are_read_into_fine_amiss_or_unknown() {
        let p = plan(Kind::Systemd, true);
        let n = &p.name;
        let ask_with = |enabled: std::io::Result<Ran>, active: std::io::Result<Ran>| {
            let mut fake = Fake::new(vec![
                (&format!("systemctl --user is-enabled {n}"), enabled),
                (&format!("systemctl --user is-active {n}"), active),
            ]);
            ask(&p, &mut |a| fake.run(a))
        };
        assert_eq!(
            ask_with(ok("enabled\n"), ok("active\n")),
            Answer::Fine("enabled, active".into())
        );
        assert_eq!(
            ask_with(fails("disabled\n", ""), fails("inactive\n", "")),
            Answer::Amiss {
                said: "disabled, inactive".into(),
                fix: p.enable[0].clone()
            }
        );
        let Answer::Amiss { fix, .. } = ask_with(ok("enabled\n"), fails("failed\n", "")) else {
            panic!()
        };
        assert!(fix.contains(&format!("journalctl --user -u {n}")), "{fix}");
        assert_eq!(
            ask_with(ok("enabled\n"), fails("inactive\n", "")),
            Answer::Amiss {
                said: "enabled, inactive".into(),
                fix: format!("systemctl --user start {n}")
            }
        );
        assert_eq!(
            ask_with(
                fails("", "Failed to connect to bus: No medium found\n"),
                fails("", "")
            ),
            Answer::Unknown("Failed to connect to bus: No medium found".into())
        );

        let t = plan(Kind::Task, true);
        let query = format!("schtasks /Query /TN {} /FO CSV /NH", t.name);
        let ask_task = |answer| {
            let mut fake = Fake::new(vec![(&query, answer)]);
            ask(&t, &mut |a| fake.run(a))
        };
        assert_eq!(
            ask_task(ok(
                "\r\n\"\\agentq-x\",\"12/8/2026, 9:00:00\",\"Ready\"\r\n"
            )),
            Answer::Fine("Ready".into())
        );
        assert_eq!(
            ask_task(ok("")),
            Answer::Unknown("schtasks /Query said nothing of it".into())
        );
        assert!(matches!(
            ask_task(fails(
                "",
                "ERROR: The system cannot find the file specified."
            )),
            Answer::Amiss { .. }
        ));
    }

    #[test]
    fn run_tool_gives_output_and_exit_and_gives_up_on_a_hung_command() {
        #[cfg(unix)]
        let (say, hang) = (
            ["sh", "-c", "echo out; echo err >&2; exit 3"],
            ["sleep", "10"],
        );
        #[cfg(windows)]
        let (say, hang) = (
            ["cmd", "/c", "echo out& echo err>&2& exit /b 3"],
            ["ping", "-n", "10", "127.0.0.1"],
        );
        let ran = run_tool(&say, Duration::from_secs(20)).unwrap();
        assert!(!ran.ok);
        assert_eq!((ran.stdout.trim(), ran.stderr.trim()), ("out", "err"));
        let started = Instant::now();
        let err = run_tool(&hang, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(8));
        let err = run_tool(&["agentq-no-such-program"], Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
