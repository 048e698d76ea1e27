//! `agentq service install`: a systemd unit (Linux) or a launchd job (macOS) that runs
//! `agentq run` for one project folder, restarts it when it fails, and gives it time to stop well.
//!
//! The text of each is made by a pure function of a [`Service`] (tested on every OS); only
//! choosing the place and writing the file is per-OS. Stopping: the daemon's first SIGTERM stops
//! it claiming and lets running tasks finish for `shutdown_grace`, after which it stops its agents
//! itself (SIGTERM, `kill_timeout`, SIGKILL to each group). So the service manager sends SIGTERM
//! to the daemon only (`KillMode=mixed`) and waits longer than all of that before it kills what
//! is left. The unit's name carries the folder's name and a hash of its path, so two projects
//! never share one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use agentq_core::error::{Error, Result};
use agentq_daemon::config::Config;

/// How long the service manager waits beyond the daemon's own stopping time.
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// Pause before a failed daemon is started again.
const RESTART_SEC: u64 = 5;

/// What a service runs, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The agentq binary, absolute.
    pub exe: PathBuf,
    /// The project's agentq.toml, absolute.
    pub config: PathBuf,
    /// The project folder: the daemon's working directory.
    pub root: PathBuf,
    /// `PATH` as it is now: agents are found on it.
    pub path_env: String,
    /// How long stopping may take before the rest is killed.
    pub stop_timeout: Duration,
    /// A per-user service (no root needed) rather than a system one.
    pub user: bool,
    /// For a system service: the user it runs as (the owner of the project folder).
    pub run_as: Option<String>,
}

impl Service {
    /// The service for the project of `config`, run by `exe`.
    pub fn for_config(config: &Config, exe: PathBuf, path_env: String, user: bool) -> Service {
        let config_path =
            std::fs::canonicalize(&config.path).unwrap_or_else(|_| config.path.clone());
        let root = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| config.root.clone());
        let run_as = (!user).then(|| owner_name(&root)).flatten();
        Service {
            exe,
            config: config_path,
            root,
            path_env,
            stop_timeout: stop_timeout(config),
            user,
            run_as,
        }
    }

    /// `agentq-<folder>-<hash of its path>`: readable, and distinct for two folders of one name.
    pub fn name(&self) -> String {
        let folder = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut clean = String::new();
        for c in folder.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                clean.push(c.to_ascii_lowercase());
            } else if !clean.ends_with('-') {
                clean.push('-');
            }
        }
        let clean: String = clean.trim_matches('-').chars().take(40).collect();
        let clean = if clean.is_empty() {
            "project".into()
        } else {
            clean
        };
        let hash = sha2::Sha256::digest(self.root.to_string_lossy().as_bytes());
        format!("agentq-{clean}-{}", &hex::encode(hash)[..8])
    }
}

/// The daemon's longest stop: `shutdown_grace`, then the slowest agent's `kill_timeout`, plus a
/// margin for releasing tasks, rounded up to whole seconds.
pub fn stop_timeout(config: &Config) -> Duration {
    let kill = config
        .workers
        .iter()
        .chain(std::iter::once(&config.pool.worker))
        .map(|w| w.limits.kill_timeout)
        .max()
        .unwrap_or_default();
    let total = config.daemon.shutdown_grace + kill + STOP_MARGIN;
    Duration::from_secs(total.as_secs() + u64::from(total.subsec_nanos() > 0))
}

fn owner_name(path: &Path) -> Option<String> {
    agentq_platform::host::owner_name(path)
}

/// The systemd unit file for `s`.
pub fn systemd_unit(s: &Service) -> String {
    let folder = s.root.display().to_string();
    let mut unit = format!(
        "# Written by `agentq service install`. Runs agentq for {folder}.\n\
         [Unit]\n\
         Description=agentq workers for {desc}\n",
        desc = specifiers(&folder),
    );
    if !s.user {
        // A user manager has no network-online.target; a system one should wait for the network.
        unit.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    unit.push_str("\n[Service]\nType=simple\n");
    if let Some(user) = &s.run_as {
        unit.push_str(&format!("User={user}\n"));
    }
    unit.push_str(&format!(
        "WorkingDirectory={dir}\n\
         ExecStart={exe} run --config {config}\n\
         Environment={path}\n\
         Restart=on-failure\n\
         RestartSec={RESTART_SEC}\n\
         # SIGTERM to the daemon alone: it lets running tasks finish for shutdown_grace, then stops\n\
         # its agents itself. What is left after TimeoutStopSec is killed.\n\
         KillMode=mixed\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={stop}\n\
         \n\
         [Install]\n\
         WantedBy={target}\n",
        dir = specifiers(&folder),
        exe = exec_word(&s.exe.display().to_string()),
        config = exec_word(&s.config.display().to_string()),
        path = exec_word(&format!("PATH={}", s.path_env)),
        stop = s.stop_timeout.as_secs(),
        target = if s.user {
            "default.target"
        } else {
            "multi-user.target"
        },
    ));
    unit
}

/// `%` starts a specifier in most unit settings; `%%` is a literal one.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// One word of `ExecStart=` or `Environment=`: quoted when it has spaces or quotes in it.
fn exec_word(word: &str) -> String {
    let word = specifiers(word);
    if word
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word
    }
}

/// The launchd job (a property list) for `s`, labelled `label`.
pub fn launchd_plist(s: &Service, label: &str) -> String {
    let x = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let string = |t: &str| format!("<string>{}</string>", x(t));
    let log = s
        .root
        .join(agentq_daemon::config::STATE_DIR)
        .join("launchd.log");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `agentq service install`. Runs agentq for {folder}. -->
<plist version="1.0">
<dict>
  <key>Label</key>
  {label}
  <key>ProgramArguments</key>
  <array>
    {exe}
    <string>run</string>
    <string>--config</string>
    {config}
  </array>
  <key>WorkingDirectory</key>
  {root}
  <key>EnvironmentVariables</key>
  <dict>
    <key>PATH</key>
    {path}
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>{RESTART_SEC}</integer>
  <key>ExitTimeOut</key>
  <integer>{stop}</integer>
  <key>StandardOutPath</key>
  {log}
  <key>StandardErrorPath</key>
  {log}
</dict>
</plist>
"#,
        folder = x(&s.root.display().to_string()),
        label = string(label),
        exe = string(&s.exe.display().to_string()),
        config = string(&s.config.display().to_string()),
        root = string(&s.root.display().to_string()),
        path = string(&s.path_env),
        stop = s.stop_timeout.as_secs(),
        log = string(&log.display().to_string()),
    )
}

/// Where the file goes, its text, and the commands that start it.
#[derive(Debug)]
pub struct Plan {
    pub path: PathBuf,
    pub text: String,
    pub enable: Vec<String>,
}

/// The file for this OS: a systemd unit on Linux (under `$XDG_CONFIG_HOME/systemd/user/` for a
/// user service, `/etc/systemd/system/` otherwise), a launchd job on macOS.
pub fn plan(s: &Service, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    let home = || {
        env("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
            Error::Usage(
                "HOME is not set, so the user's service folder is unknown; set HOME".into(),
            )
        })
    };
    if cfg!(target_os = "macos") {
        let label = format!("com.agentq.{}", s.name());
        let dir = if s.user {
            PathBuf::from(home()?).join("Library/LaunchAgents")
        } else {
            PathBuf::from("/Library/LaunchDaemons")
        };
        let path = dir.join(format!("{label}.plist"));
        let domain = if s.user { "gui/$(id -u)" } else { "system" };
        let sudo = if s.user { "" } else { "sudo " };
        return Ok(Plan {
            text: launchd_plist(s, &label),
            enable: vec![format!(
                "{sudo}launchctl bootstrap {domain} {}",
                path.display()
            )],
            path,
        });
    }
    if !cfg!(target_os = "linux") {
        return Err(Error::Usage(
            "agentq service install writes systemd units (Linux) and launchd jobs (macOS); elsewhere run `agentq run` in the project folder from your service manager (README.md: Running as a service)".into(),
        ));
    }
    let name = format!("{}.service", s.name());
    let (dir, ctl) = if s.user {
        let config_home = env("XDG_CONFIG_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from);
        let config_home = match config_home {
            Some(d) => d,
            None => PathBuf::from(home()?).join(".config"),
        };
        (config_home.join("systemd/user"), "systemctl --user")
    } else {
        (PathBuf::from("/etc/systemd/system"), "systemctl")
    };
    let mut enable = vec![format!("{ctl} daemon-reload && {ctl} enable --now {name}")];
    if s.user {
        enable.push(
            "loginctl enable-linger \"$USER\"   # keeps it running without a login session"
                .to_string(),
        );
        enable.push(format!("journalctl --user -u {name} -f   # its logs"));
    } else {
        enable.push(format!("journalctl -u {name} -f   # its logs"));
    }
    Ok(Plan {
        path: dir.join(&name),
        text: systemd_unit(s),
        enable,
    })
}

/// What `install` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    Written,
    Replaced,
    /// The same file was there already.
    Unchanged,
}

/// Writes the plan's file; an existing different file is replaced only with `force`.
pub fn install(plan: &Plan, force: bool, user: bool) -> Result<Installed> {
    let path = &plan.path;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading the existing service file", path, e)),
    };
    let outcome = match &existing {
        Some(text) if *text == plan.text => return Ok(Installed::Unchanged),
        Some(_) if !force => {
            return Err(Error::Usage(format!(
                "{} exists and differs from what agentq would write; compare it with `agentq service install --print{}`, then pass --force to replace it",
                path.display(),
                if user { " --user" } else { "" }
            )));
        }
        Some(_) => Installed::Replaced,
        None => Installed::Written,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| agentq_core::files::write_atomic(path, plan.text.as_bytes()));
    match written {
        Ok(()) => Ok(outcome),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !user => {
            Err(Error::Usage(format!(
                "cannot write {}: {e}; run it as root (`sudo {} service install`) or install a user service with --user",
                path.display(),
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "agentq".into())
            )))
        }
        Err(e) => Err(Error::io("writing the service file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(user: bool) -> Service {
        Service {
            exe: "/usr/local/bin/agentq".into(),
            config: "/home/ann/my proj/agentq.toml".into(),
            root: "/home/ann/my proj".into(),
            path_env: "/home/ann/.local/bin:/usr/bin:/bin".into(),
            stop_timeout: Duration::from_secs(45),
            user,
            run_as: (!user).then(|| "ann".to_string()),
        }
    }

    #[test]
    fn the_user_unit_runs_agentq_for_the_folder_and_stops_gently() {
        let s = service(true);
        let name = s.name();
        assert!(name.starts_with("agentq-my-proj-"), "{name}");
        assert_eq!(name.len(), "agentq-my-proj-".len() + 8);
        let expected = [
            "# Written by `agentq service install`. Runs agentq for /home/ann/my proj.",
            "[Unit]",
            "Description=agentq workers for /home/ann/my proj",
            "",
            "[Service]",
            "Type=simple",
            "WorkingDirectory=/home/ann/my proj",
            "ExecStart=/usr/local/bin/agentq run --config \"/home/ann/my proj/agentq.toml\"",
            "Environment=PATH=/home/ann/.local/bin:/usr/bin:/bin",
            "Restart=on-failure",
            "RestartSec=5",
            "# SIGTERM to the daemon alone: it lets running tasks finish for shutdown_grace, then stops",
            "# its agents itself. What is left after TimeoutStopSec is killed.",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=45",
            "",
            "[Install]",
            "WantedBy=default.target",
        ];
        assert_eq!(systemd_unit(&s).lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_system_unit_waits_for_the_network_and_runs_as_the_folders_owner() {
        let unit = systemd_unit(&service(false));
        let lines: Vec<&str> = unit.lines().collect();
        assert_eq!(
            lines[3..5],
            ["Wants=network-online.target", "After=network-online.target"]
        );
        assert!(lines.contains(&"User=ann"), "{unit}");
        assert_eq!(lines.last(), Some(&"WantedBy=multi-user.target"));
    }

    #[test]
    fn names_differ_by_path_and_odd_characters_are_escaped() {
        let mut a = service(true);
        let mut b = service(true);
        b.root = "/srv/other/my proj".into();
        assert_ne!(a.name(), b.name());
        a.root = "/tmp/Ünïcode & 100%!".into();
        assert!(a.name().starts_with("agentq-n-code-100-"), "{}", a.name());
        let mut bare = service(true);
        bare.root = "/".into();
        assert!(
            bare.name().starts_with("agentq-project-"),
            "{}",
            bare.name()
        );

        a.path_env = "/a b:/c%d".into();
        let unit = systemd_unit(&a);
        assert!(unit.contains("Environment=\"PATH=/a b:/c%%d\"\n"), "{unit}");
        assert!(
            unit.contains("WorkingDirectory=/tmp/Ünïcode & 100%%!\n"),
            "{unit}"
        );
    }

    #[test]
    fn the_launchd_job_has_the_same_command_and_stop_time() {
        let plist = launchd_plist(&service(true), "com.agentq.x");
        for part in [
            "<string>com.agentq.x</string>",
            "<string>/usr/local/bin/agentq</string>\n    <string>run</string>\n    <string>--config</string>\n    <string>/home/ann/my proj/agentq.toml</string>",
            "<key>WorkingDirectory</key>\n  <string>/home/ann/my proj</string>",
            "<key>PATH</key>\n    <string>/home/ann/.local/bin:/usr/bin:/bin</string>",
            "<key>ExitTimeOut</key>\n  <integer>45</integer>",
            "<key>SuccessfulExit</key>\n    <false/>",
            "<string>/home/ann/my proj/.agentq/launchd.log</string>",
        ] {
            assert!(plist.contains(part), "{part} missing from:\n{plist}");
        }
        let mut odd = service(true);
        odd.path_env = "<&>".into();
        assert!(launchd_plist(&odd, "l").contains("<string>&lt;&amp;&gt;</string>"));
    }

    #[test]
    fn the_stop_timeout_outlasts_grace_and_the_slowest_kill() {
        let text = "[daemon]\nshutdown_grace = \"20s\"\n[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"cat\"]\nkill_timeout = \"7500ms\"\n[[worker]]\nname = \"b\"\nagent = \"command\"\ncommand = [\"cat\"]\n";
        let config = Config::parse(Path::new("/p/agentq.toml"), text).unwrap();
        assert_eq!(stop_timeout(&config), Duration::from_secs(38));
    }

    #[test]
    fn a_different_file_is_kept_unless_forced() {
        let d = tempfile::tempdir().unwrap();
        let plan = Plan {
            path: d.path().join("sub/x.service"),
            text: "one\n".into(),
            enable: vec![],
        };
        assert_eq!(install(&plan, false, true).unwrap(), Installed::Written);
        assert_eq!(install(&plan, false, true).unwrap(), Installed::Unchanged);
        let other = Plan {
            text: "two\n".into(),
            ..plan
        };
        let err = install(&other, false, true).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&other.path).unwrap(), "one\n");
        assert_eq!(install(&other, true, true).unwrap(), Installed::Replaced);
        assert_eq!(std::fs::read_to_string(&other.path).unwrap(), "two\n");
    }
}
