//! `agentq service`: what runs `agentq run` for one project folder at boot or logon and starts it
//! again when it fails — a systemd unit (Linux), a launchd job (macOS), a Task Scheduler task
//! (Windows) — installed, removed, and asked after.
//!
//! The text of each is made by a pure function of a [`Service`] ([`text`], tested on every OS);
//! only choosing the place, writing the file and asking the service manager is per OS, and the
//! manager's commands go through a runner the caller passes ([`manager`]), so what is asked of
//! it and what its answers mean are tested without one. Stopping: the daemon's first SIGTERM
//! stops it claiming and lets running tasks finish for `shutdown_grace`, after which it stops its
//! agents itself (SIGTERM, `kill_timeout`, SIGKILL to each group). So the service manager sends
//! SIGTERM to the daemon only (`KillMode=mixed`) and waits longer than all of that before it
//! kills what is left. The unit's name carries the folder's name and a hash of its path, so two
//! projects never share one; a file that is there already is replaced only when agentq would
//! write the same or with `--force`, and removed only when it runs agentq in this folder.
//!
//! **Windows.** A Task Scheduler task of the user who installs it, started at their logon with
//! their own interactive token, rather than a Windows service: a service runs as LocalSystem, or
//! as an account whose password the service manager must keep, while the agent CLIs' logins and
//! settings live in the user's profile. So no password is stored, and there is no boot trigger
//! (one needs a stored password, or S4U, which a standard user may not register). Task Scheduler
//! starts a task again only when it failed to *start* (MS-TSCH 2.5.4.2), not when its program
//! ends with an error, so the task runs `agentq service run` ([`supervise`]), which holds the
//! daemon in a kill-on-close job, starts it again when it fails, and writes its output to
//! `.agentq/service.log`. agentq keeps its own copy of the task's definition,
//! `%LOCALAPPDATA%\agentq\tasks\<name>.xml` (UTF-16, as schtasks reads it): what install compares
//! and uninstall checks, as the unit file is elsewhere.
//!
//! **The environment.** A service does not start from the installing shell, so what the daemon
//! and its agents need of that shell is carried ([`Carried`]): `AGENTQ_DATABASE_URL` and the
//! agent CLIs' API variables ([`agentq_agents::Package::credentials`]) that are set there, and
//! what `--env` adds. They hold secrets, so they go into a file only its owner can read (0600):
//! for systemd an environment file beside the unit (`<name>.env`, named by `EnvironmentFile=`);
//! for launchd the job's own `EnvironmentVariables`, the plist then written 0600; for the task
//! an environment file beside agentq's copy of its definition, which `service run --env-file`
//! reads each time it starts the daemon (a task has no environment of its own to give). The
//! values are never printed; uninstall removes the file with the service.

mod manager;
mod supervise;
mod text;

pub use manager::{Answer, Ran, Run, ask, forget, register, run_tool, stop, task_registered};
pub use supervise::{SERVICE_LOG, restart_delay, supervise};
pub use text::{
    env_file_text, folder_of, launchd_plist, read_env_file, systemd_unit, task_xml, windows_arg,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use agentq_core::error::{Error, Result};
use agentq_daemon::config::{Config, DATABASE_URL_ENV};

/// How long the service manager waits beyond the daemon's own stopping time.
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// Pause before a failed daemon is started again.
const RESTART_SEC: u64 = 5;
/// A project's stopping time when its config is not read.
const UNKNOWN_STOP: Duration = Duration::from_secs(600);

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
    /// The variables it carries from the shell that installed it.
    pub env: Carried,
}

/// Variables a service carries from the shell that installs it to the daemon and its agents
/// (`AGENTQ_DATABASE_URL`, API keys): secrets, so their values are never shown (its `Debug`
/// names them only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Carried(pub BTreeMap<String, String>);

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Carried {
    /// The variables' names, for people: "ANTHROPIC_API_KEY, OPENAI_API_KEY".
    pub fn names(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The variables a service carries when they are set in the installing shell: the database's URL
/// and every agent CLI's API variables.
pub fn carried_by_default() -> Vec<&'static str> {
    std::iter::once(DATABASE_URL_ENV)
        .chain(
            agentq_agents::PACKAGES
                .iter()
                .flat_map(|p| p.credentials.iter().copied()),
        )
        .collect()
}

/// What a service carries: each of [`carried_by_default`] that `env` has (and not empty), and
/// each `--env` asked for: `KEY=VALUE`, or `KEY` for its value in `env` (which must be set).
pub fn carried(asked: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Carried> {
    let mut vars: BTreeMap<String, String> = carried_by_default()
        .into_iter()
        .filter_map(|key| Some((key.to_string(), env(key).filter(|v| !v.is_empty())?)))
        .collect();
    for one in asked {
        let (key, value) = match one.split_once('=') {
            Some((key, value)) => (key, value.to_string()),
            None => (
                one.as_str(),
                env(one).ok_or_else(|| {
                    Error::Usage(format!(
                        "--env {one}: {one} is not set in this shell; set it, or give its value with --env {one}=VALUE"
                    ))
                })?,
            ),
        };
        let name_ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(Error::Usage(format!(
                "--env {one}: {key:?} is not a variable name: use letters, digits and '_', not starting with a digit (--env KEY=VALUE or --env KEY)"
            )));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(Error::Usage(format!(
                "--env {key}: its value has a line break or a NUL, which an environment file cannot carry"
            )));
        }
        vars.insert(key.to_string(), value);
    }
    Ok(Carried(vars))
}

impl Service {
    /// The service for the project of `config`, run by `exe`.
    pub fn for_config(config: &Config, exe: PathBuf, path_env: String, user: bool) -> Service {
        Service {
            stop_timeout: stop_timeout(config),
            ..Service::for_file(&config.path, exe, path_env, user)
        }
    }

    /// The service for the project whose agentq.toml is `path`, without reading it (to remove
    /// the service of a project whose config no longer loads): its stop time is a default.
    pub fn for_file(path: &Path, exe: PathBuf, path_env: String, user: bool) -> Service {
        let config = agentq_platform::fs::canonical(path).unwrap_or_else(|_| path.to_path_buf());
        let root = config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let run_as = (!user).then(|| owner_name(&root)).flatten();
        Service {
            exe,
            config,
            root,
            path_env,
            stop_timeout: UNKNOWN_STOP,
            user,
            run_as,
            env: Carried::default(),
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

/// The kind of service this OS's manager runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A systemd unit file (Linux).
    Systemd,
    /// A launchd job's property list (macOS).
    Launchd,
    /// A Task Scheduler task (Windows), registered from agentq's copy of its definition.
    Task,
}

impl Kind {
    /// This OS's kind, if agentq installs one here.
    pub fn here() -> Option<Kind> {
        if cfg!(windows) {
            Some(Kind::Task)
        } else if cfg!(target_os = "macos") {
            Some(Kind::Launchd)
        } else if cfg!(target_os = "linux") {
            Some(Kind::Systemd)
        } else {
            None
        }
    }
}

/// Where the file goes, its text, and the commands that start it.
#[derive(Debug)]
pub struct Plan {
    /// The environment file that goes with it, when the service carries variables in one.
    pub env_file: Option<EnvFile>,
    /// The file holds secrets (a launchd job's variables): written readable by its owner only.
    pub private: bool,
    pub kind: Kind,
    /// The user's service rather than the system's (systemd, launchd; a task is always the
    /// user's).
    pub user: bool,
    /// What the manager calls it: the unit's file name, the job's label, the task's name.
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    /// The commands that start it, for people (install prints them).
    pub enable: Vec<String>,
}

/// A service's environment file: where it goes, and its text (never shown: its `Debug` leaves the
/// text out).
pub struct EnvFile {
    pub path: PathBuf,
    pub text: String,
}

impl std::fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// Where this kind of service keeps its environment file, beside its own file (`<name>.env`):
    /// systemd's and the task's; a launchd job holds its variables itself.
    pub fn env_path(&self) -> Option<PathBuf> {
        (self.kind != Kind::Launchd).then(|| self.path.with_extension("env"))
    }

    /// The file's bytes: the text as UTF-8, or for a task as UTF-16LE with its byte-order mark,
    /// which is what `schtasks /XML` reads.
    pub fn bytes(&self) -> Vec<u8> {
        match self.kind {
            Kind::Task => [0xFF, 0xFE]
                .into_iter()
                .chain(self.text.encode_utf16().flat_map(u16::to_le_bytes))
                .collect(),
            Kind::Systemd | Kind::Launchd => self.text.clone().into_bytes(),
        }
    }

    /// What it is, in words: "user unit", "system unit", "launchd agent", "task".
    pub fn what(&self) -> &'static str {
        match (self.kind, self.user) {
            (Kind::Systemd, true) => "user unit",
            (Kind::Systemd, false) => "system unit",
            (Kind::Launchd, true) => "launchd agent",
            (Kind::Launchd, false) => "launchd daemon",
            (Kind::Task, _) => "Task Scheduler task",
        }
    }

    /// ` --user` for a user's service where the flag chooses it, for commands to print.
    fn user_flag(&self) -> &'static str {
        if self.user && self.kind != Kind::Task {
            " --user"
        } else {
            ""
        }
    }
}

/// Text of a service file as read back: UTF-16 with its byte-order mark (a task's), else UTF-8.
fn decode(bytes: &[u8]) -> String {
    match bytes {
        [0xFF, 0xFE, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The service for this OS: a systemd unit on Linux (under `$XDG_CONFIG_HOME/systemd/user/` for
/// a user service, `/etc/systemd/system/` otherwise), a launchd job on macOS, a Task Scheduler
/// task on Windows (its definition kept under `%LOCALAPPDATA%\agentq\tasks\`).
pub fn plan(s: &Service, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    match Kind::here() {
        Some(kind) => plan_for(kind, s, env),
        None => Err(Error::Usage(
            "agentq service installs systemd units (Linux), launchd jobs (macOS) and Task Scheduler tasks (Windows); elsewhere run `agentq run` in the project folder from your service manager (README.md: Running as a service)".into(),
        )),
    }
}

/// The service of `kind` for `s`, with the user's folders from `env`.
pub fn plan_for(kind: Kind, s: &Service, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    let set = |key: &str| env(key).filter(|v| !v.is_empty());
    let home = || {
        set("HOME").ok_or_else(|| {
            Error::Usage(
                "HOME is not set, so the user's service folder is unknown; set HOME".into(),
            )
        })
    };
    match kind {
        Kind::Launchd => {
            let label = format!("com.agentq.{}", s.name());
            let dir = if s.user {
                PathBuf::from(home()?).join("Library/LaunchAgents")
            } else {
                PathBuf::from("/Library/LaunchDaemons")
            };
            let path = dir.join(format!("{label}.plist"));
            let domain = if s.user { "gui/$(id -u)" } else { "system" };
            let sudo = if s.user { "" } else { "sudo " };
            Ok(Plan {
                kind,
                user: s.user,
                env_file: None,
                private: !s.env.0.is_empty(),
                text: launchd_plist(s, &label),
                enable: vec![format!(
                    "{sudo}launchctl bootstrap {domain} {}",
                    path.display()
                )],
                name: label,
                path,
            })
        }
        Kind::Systemd => {
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
            let path = dir.join(&name);
            let env_file = env_file(s, path.with_extension("env"));
            Ok(Plan {
                kind,
                user: s.user,
                text: systemd_unit(s, env_file.as_ref().map(|f| f.path.as_path())),
                env_file,
                private: false,
                path,
                enable,
                name,
            })
        }
        Kind::Task => {
            let local = set("LOCALAPPDATA").ok_or_else(|| {
                Error::Usage(
                    "LOCALAPPDATA is not set, so there is no folder for the task's definition; set it (usually %USERPROFILE%\\AppData\\Local)".into(),
                )
            })?;
            let name = s.name();
            // Whom the task runs as and whose logon starts it: the installing user, as Windows
            // names accounts (DOMAIN\name; the machine's name for a local account).
            let user = match (set("USERDOMAIN"), set("USERNAME")) {
                (Some(domain), Some(user)) => Some(format!("{domain}\\{user}")),
                (None, user) => user,
                (Some(_), None) => None,
            };
            let log = s
                .root
                .join(agentq_daemon::config::STATE_DIR)
                .join(SERVICE_LOG);
            let path = PathBuf::from(local)
                .join("agentq")
                .join("tasks")
                .join(format!("{name}.xml"));
            let env_file = env_file(s, path.with_extension("env"));
            Ok(Plan {
                kind,
                user: true,
                text: task_xml(
                    s,
                    user.as_deref(),
                    env_file.as_ref().map(|f| f.path.as_path()),
                ),
                env_file,
                private: false,
                path,
                enable: vec![
                    format!("schtasks /Run /TN {name}   # now; it starts at every logon"),
                    format!("schtasks /Query /TN {name} /V /FO LIST   # its state"),
                    format!(
                        "type {}   # its log",
                        windows_arg(&log.display().to_string())
                    ),
                ],
                name,
            })
        }
    }
}

/// The environment file of `s` at `path`, if it carries anything.
fn env_file(s: &Service, path: PathBuf) -> Option<EnvFile> {
    (!s.env.0.is_empty()).then(|| EnvFile {
        text: env_file_text(s),
        path,
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
pub fn install(plan: &Plan, force: bool) -> Result<Installed> {
    let path = &plan.path;
    let bytes = plan.bytes();
    let existing = match std::fs::read(path) {
        Ok(existing) => Some(existing),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading the existing service file", path, e)),
    };
    let outcome = match &existing {
        Some(existing) if *existing == bytes && plan.env_file.is_none() => {
            return Ok(Installed::Unchanged);
        }
        Some(existing) if *existing == bytes => Installed::Unchanged,
        Some(_) if !force => {
            return Err(Error::Usage(format!(
                "{} exists and differs from what agentq would write; compare it with `agentq service install --print{}`, then pass --force to replace it",
                path.display(),
                plan.user_flag(),
            )));
        }
        Some(_) => Installed::Replaced,
        None => Installed::Written,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    // The environment first, so that the unit never names a file not yet there; one left by an
    // install that carried variables goes when this one carries none.
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| match (&plan.env_file, plan.env_path()) {
            (Some(env), _) => agentq_core::files::write_private(&env.path, env.text.as_bytes()),
            (None, Some(stale)) => remove_if_there(&stale),
            (None, None) => Ok(()),
        })
        .and_then(|()| {
            if plan.private {
                agentq_core::files::write_private(path, &bytes)
            } else {
                agentq_core::files::write_atomic(path, &bytes)
            }
        });
    match written {
        Ok(()) => Ok(outcome),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !plan.user => {
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

/// Removes `path`; one already gone is no failure.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whose the plan's file is.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// There is no file.
    Nothing,
    /// It runs agentq in this folder.
    Ours,
    /// It runs agentq in another folder (named), or names none.
    Other(Option<String>),
}

/// Whether the plan's file is there, and whether it runs agentq in `root`.
pub fn found(plan: &Plan, root: &Path) -> Result<Found> {
    let bytes = match std::fs::read(&plan.path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(Error::io("reading the service file", &plan.path, e)),
    };
    Ok(match folder_of(plan.kind, &decode(&bytes)) {
        Some(folder) if folder == root.display().to_string() => Found::Ours,
        other => Found::Other(other),
    })
}

/// What `uninstall` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Uninstalled {
    /// There was no file.
    Nothing,
    /// The file, and the environment file that went with it, if there was one.
    Removed { env_file: Option<PathBuf> },
}

/// Removes what `install` wrote for `root`: when the file runs agentq in this folder, `stop` (the
/// service manager's part: see [`manager::stop`]) and then the file. A file that runs agentq
/// elsewhere, or names no folder, is refused and left as it is; so is the file when `stop` fails.
pub fn uninstall(
    plan: &Plan,
    root: &Path,
    stop: impl FnOnce(&Plan) -> Result<()>,
) -> Result<Uninstalled> {
    match found(plan, root)? {
        Found::Nothing => Ok(Uninstalled::Nothing),
        Found::Other(folder) => Err(Error::Usage(format!(
            "{} is not this folder's: it runs agentq {}, not in {}; it is left as it is (uninstall it from its own folder, or remove it yourself)",
            plan.path.display(),
            match folder {
                Some(f) => format!("in {f}"),
                None => "in no folder it names".into(),
            },
            root.display(),
        ))),
        Found::Ours => {
            stop(plan)?;
            remove_if_there(&plan.path)
                .map_err(|e| Error::io("removing the service file", &plan.path, e))?;
            let env_file = plan.env_path().filter(|env| env.exists());
            if let Some(env) = &env_file {
                remove_if_there(env)
                    .map_err(|e| Error::io("removing the service's environment file", env, e))?;
            }
            Ok(Uninstalled::Removed { env_file })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project of Ann's, with a space in its folder's name.
    pub(super) fn service(user: bool) -> Service {
        Service {
            exe: "/usr/local/bin/agentq".into(),
            config: "/home/ann/my proj/agentq.toml".into(),
            root: "/home/ann/my proj".into(),
            path_env: "/home/ann/.local/bin:/usr/bin:/bin".into(),
            stop_timeout: Duration::from_secs(45),
            user,
            run_as: (!user).then(|| "ann".to_string()),
            env: Carried::default(),
        }
    }

    /// An environment of these variables only.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_stop_timeout_outlasts_grace_and_the_slowest_kill() {
        let text = "[daemon]\nshutdown_grace = \"20s\"\n[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"cat\"]\nkill_timeout = \"7500ms\"\n[[worker]]\nname = \"b\"\nagent = \"command\"\ncommand = [\"cat\"]\n";
        let config = Config::parse(Path::new("/p/agentq.toml"), text).unwrap();
        assert_eq!(stop_timeout(&config), Duration::from_secs(38));
    }

    // Unix paths: on Windows "/home/ann" is not absolute.
    #[cfg(unix)]
    #[test]
    fn units_go_where_systemd_and_launchd_look_and_say_how_to_start_them() {
        let s = service(true);
        let name = s.name();
        let e = env(&[("HOME", "/home/ann"), ("XDG_CONFIG_HOME", "/home/ann/.cfg")]);
        let unit = plan_for(Kind::Systemd, &s, &e).unwrap();
        assert_eq!(
            unit.path,
            PathBuf::from(format!("/home/ann/.cfg/systemd/user/{name}.service"))
        );
        assert_eq!(unit.name, format!("{name}.service"));
        assert_eq!(
            unit.enable[0],
            format!(
                "systemctl --user daemon-reload && systemctl --user enable --now {name}.service"
            )
        );
        let system = plan_for(Kind::Systemd, &service(false), &e).unwrap();
        assert_eq!(
            system.path,
            PathBuf::from(format!("/etc/systemd/system/{name}.service"))
        );
        let job = plan_for(Kind::Launchd, &s, &e).unwrap();
        assert_eq!(
            job.path,
            PathBuf::from(format!(
                "/home/ann/Library/LaunchAgents/com.agentq.{name}.plist"
            ))
        );
        let err = plan_for(Kind::Systemd, &s, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("HOME is not set"), "{err}");
    }

    #[test]
    fn a_task_is_kept_under_local_app_data_and_started_with_schtasks() {
        let s = service(true);
        let name = s.name();
        let e = env(&[
            ("LOCALAPPDATA", "/c/Users/ann/AppData/Local"),
            ("USERDOMAIN", "DESKTOP-1"),
            ("USERNAME", "ann"),
        ]);
        let task = plan_for(Kind::Task, &s, &e).unwrap();
        assert_eq!(task.name, name);
        assert_eq!(
            task.path,
            PathBuf::from(format!(
                "/c/Users/ann/AppData/Local/agentq/tasks/{name}.xml"
            ))
        );
        assert!(
            task.text.contains("<UserId>DESKTOP-1\\ann</UserId>"),
            "{}",
            task.text
        );
        assert_eq!(
            task.enable[0],
            format!("schtasks /Run /TN {name}   # now; it starts at every logon")
        );
        assert!(task.enable[2].contains("service.log"), "{:?}", task.enable);
        let err = plan_for(Kind::Task, &s, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("LOCALAPPDATA"), "{err}");
    }

    #[test]
    fn a_task_file_is_utf16_with_its_byte_order_mark_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let mut plan = plan_for(
            Kind::Task,
            &service(true),
            &env(&[("LOCALAPPDATA", d.path().to_str().unwrap())]),
        )
        .unwrap();
        plan.text = "<WorkingDirectory>Ærø</WorkingDirectory>\n".into();
        let bytes = plan.bytes();
        assert_eq!(bytes[..4], [0xFF, 0xFE, b'<', 0]);
        assert_eq!(bytes.len(), 2 + 2 * plan.text.encode_utf16().count());
        assert_eq!(decode(&bytes), plan.text);
        assert_eq!(install(&plan, false).unwrap(), Installed::Written);
        assert_eq!(std::fs::read(&plan.path).unwrap(), bytes);
        assert_eq!(install(&plan, false).unwrap(), Installed::Unchanged);
        assert_eq!(found(&plan, Path::new("Ærø")).unwrap(), Found::Ours);
    }

    /// A plan for a unit at `path` with `text`.
    fn unit_at(path: PathBuf, text: &str) -> Plan {
        Plan {
            kind: Kind::Systemd,
            user: true,
            env_file: None,
            private: false,
            name: "x.service".into(),
            path,
            text: text.into(),
            enable: vec![],
        }
    }

    #[test]
    fn a_different_file_is_kept_unless_forced() {
        let d = tempfile::tempdir().unwrap();
        let plan = unit_at(d.path().join("sub/x.service"), "one\n");
        assert_eq!(install(&plan, false).unwrap(), Installed::Written);
        assert_eq!(install(&plan, false).unwrap(), Installed::Unchanged);
        let other = Plan {
            text: "two\n".into(),
            ..plan
        };
        let err = install(&other, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert!(err.contains("--print --user"), "{err}");
        assert_eq!(std::fs::read_to_string(&other.path).unwrap(), "one\n");
        assert_eq!(install(&other, true).unwrap(), Installed::Replaced);
        assert_eq!(std::fs::read_to_string(&other.path).unwrap(), "two\n");
    }

    #[test]
    fn uninstall_removes_only_this_folders_file_and_only_once_the_manager_let_it_go() {
        let d = tempfile::tempdir().unwrap();
        let s = service(true);
        let xdg = d.path().to_str().unwrap();
        let plan = plan_for(Kind::Systemd, &s, &env(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        let mut stops = 0;

        // Nothing there: nothing asked of the manager.
        let gone = uninstall(&plan, &s.root, |_| {
            stops += 1;
            Ok(())
        });
        assert_eq!(gone.unwrap(), Uninstalled::Nothing);
        assert_eq!(stops, 0);

        // Another folder's unit under this name: refused, kept, the manager not asked.
        let mut other = s.clone();
        other.root = "/srv/elsewhere".into();
        std::fs::create_dir_all(plan.path.parent().unwrap()).unwrap();
        std::fs::write(&plan.path, systemd_unit(&other, None)).unwrap();
        let err = uninstall(&plan, &s.root, |_| {
            stops += 1;
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("runs agentq in /srv/elsewhere"), "{err}");
        assert_eq!(stops, 0);
        assert!(plan.path.exists());

        // One that names no folder: refused too.
        std::fs::write(&plan.path, "[Service]\nExecStart=/bin/true\n").unwrap();
        let err = uninstall(&plan, &s.root, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("in no folder it names"), "{err}");
        assert!(plan.path.exists());

        // This folder's, but the manager would not let it go: kept, so it can still stop it.
        assert_eq!(install(&plan, true).unwrap(), Installed::Replaced);
        let err = uninstall(&plan, &s.root, |_| {
            Err(Error::ServiceManager {
                command: "systemctl".into(),
                message: "no".into(),
            })
        })
        .unwrap_err();
        assert!(matches!(err, Error::ServiceManager { .. }), "{err}");
        assert!(plan.path.exists());

        // And then it does.
        let gone = uninstall(&plan, &s.root, |p| {
            assert_eq!(p.name, plan.name);
            stops += 1;
            Ok(())
        });
        assert_eq!(gone.unwrap(), Uninstalled::Removed { env_file: None });
        assert_eq!(stops, 1);
        assert!(!plan.path.exists());
    }

    #[test]
    fn the_installing_shells_database_url_and_api_variables_are_carried_and_env_adds_more() {
        let e = env(&[
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("GEMINI_API_KEY", ""),
            ("AGENTQ_DATABASE_URL", "postgres://u:pw@db/q"),
            ("HOME", "/home/ann"),
            ("LANG", "C"),
        ]);
        let asked = ["EXTRA=a=b".to_string(), "LANG".into(), "EMPTY=".into()];
        let got = carried(&asked, &e).unwrap();
        assert_eq!(
            got.0,
            BTreeMap::from(
                [
                    ("AGENTQ_DATABASE_URL", "postgres://u:pw@db/q"),
                    ("ANTHROPIC_API_KEY", "sk-ant"),
                    ("EMPTY", ""),
                    ("EXTRA", "a=b"),
                    ("LANG", "C"),
                    ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
            )
        );
        let debug = format!("{got:?}");
        assert!(
            !debug.contains("sk-ant") && debug.contains("ANTHROPIC_API_KEY"),
            "{debug}"
        );
        for name in [
            "CLAUDE_CODE_OAUTH_TOKEN",
            "OPENAI_API_KEY",
            "GOOGLE_API_KEY",
        ] {
            assert!(carried_by_default().contains(&name), "{name}");
        }

        for (asked, says) in [
            (
                "NOPE",
                "--env NOPE: NOPE is not set in this shell; set it, or give its value with --env NOPE=VALUE",
            ),
            ("1A=x", "\"1A\" is not a variable name"),
            ("A B=x", "\"A B\" is not a variable name"),
            ("=x", "\"\" is not a variable name"),
            ("K=a\nb", "--env K: its value has a line break"),
        ] {
            let err = carried(&[asked.to_string()], &e).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err}");
            assert!(err.to_string().contains(says), "{asked:?}: {err}");
        }
    }

    #[test]
    fn the_environment_file_is_written_private_beside_the_unit_and_goes_with_it() {
        let d = tempfile::tempdir().unwrap();
        let xdg = d.path().to_str().unwrap();
        let mut s = service(true);
        s.env.0.insert("ANTHROPIC_API_KEY".into(), "sk-ant".into());
        let plan = plan_for(Kind::Systemd, &s, &env(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        let env_file = plan.env_file.as_ref().unwrap();
        assert_eq!(env_file.path, plan.path.with_extension("env"));
        assert_eq!(plan.env_path().as_ref(), Some(&env_file.path));
        assert!(!format!("{plan:?}").contains("sk-ant"));
        assert_eq!(install(&plan, false).unwrap(), Installed::Written);
        let text = std::fs::read_to_string(&env_file.path).unwrap();
        assert!(text.ends_with("ANTHROPIC_API_KEY=\"sk-ant\"\n"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&env_file.path), 0o600);
            assert_ne!(mode(&plan.path), 0o600, "the unit holds no secret");
        }
        // Installed again with another key: the unit is the same, the file new.
        s.env.0.insert("ANTHROPIC_API_KEY".into(), "sk-new".into());
        let again = plan_for(Kind::Systemd, &s, &env(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        assert_eq!(install(&again, false).unwrap(), Installed::Unchanged);
        assert!(
            std::fs::read_to_string(&env_file.path)
                .unwrap()
                .contains("sk-new")
        );

        // Installed carrying nothing (forced: the unit differs), the file goes.
        s.env = Carried::default();
        let bare = plan_for(Kind::Systemd, &s, &env(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        assert!(bare.env_file.is_none());
        assert!(install(&bare, false).is_err());
        assert_eq!(install(&bare, true).unwrap(), Installed::Replaced);
        assert!(!env_file.path.exists());

        // Uninstall takes both.
        install(&again, true).unwrap();
        let gone = uninstall(&again, &s.root, |_| Ok(())).unwrap();
        assert_eq!(
            gone,
            Uninstalled::Removed {
                env_file: Some(env_file.path.clone())
            }
        );
        assert!(!env_file.path.exists() && !again.path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_launchd_job_that_carries_variables_is_written_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        let mut s = service(true);
        let bare = plan_for(Kind::Launchd, &s, &env(&[("HOME", home)])).unwrap();
        assert!(!bare.private && bare.env_path().is_none());
        s.env.0.insert("OPENAI_API_KEY".into(), "sk-oa".into());
        let plan = plan_for(Kind::Launchd, &s, &env(&[("HOME", home)])).unwrap();
        assert!(plan.private && plan.env_file.is_none());
        assert_eq!(install(&plan, false).unwrap(), Installed::Written);
        let mode = std::fs::metadata(&plan.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(&plan.path)
                .unwrap()
                .contains("sk-oa")
        );
    }

    #[test]
    fn a_task_of_another_folder_is_not_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = service(true);
        let e = env(&[("LOCALAPPDATA", d.path().to_str().unwrap())]);
        let mine = plan_for(Kind::Task, &s, &e).unwrap();
        let mut other = s.clone();
        other.root = "/home/bob/my proj".into();
        let theirs = Plan {
            path: mine.path.clone(),
            ..plan_for(Kind::Task, &other, &e).unwrap()
        };
        install(&theirs, false).unwrap();
        assert_eq!(
            found(&mine, &s.root).unwrap(),
            Found::Other(Some("/home/bob/my proj".into()))
        );
        let err = uninstall(&mine, &s.root, |_| panic!("the task is not ours to stop"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/home/bob/my proj"), "{err}");
        assert!(mine.path.exists());
    }
}
