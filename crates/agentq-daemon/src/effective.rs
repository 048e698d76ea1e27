//! The effective config: every setting as agentq uses it, in `agentq.toml`'s own shape, with each
//! default filled in and each worker resolved (its own settings over `[defaults]`'s over agentq's
//! own). It is what `agentq config show` prints: as TOML it is a file that loads as the same
//! config (a worker's `cwd` and paths made absolute), and as JSON it keeps the file's keys and
//! words (`"10m"`, `"4GiB"`), so both are read as the file is, and the JSON checks against
//! `agentq config schema`.
//!
//! Secrets are never in it: a database URL shows no password, and a worker variable whose name
//! says it holds a key, token or password shows `***` for its value. (So a PostgreSQL store or
//! such a variable does not load back as it was.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use agentq_agents::SessionPolicy;
use agentq_agents::claude::Mode;
use agentq_core::units::{format_duration, format_size};
use agentq_store::StoreSettings;

use crate::config::{Agent, ClassLimits, Config, Limits, POOL, WorkerConfig};

/// What stands in for a secret.
pub const HIDDEN: &str = "***";

/// The effective config of `config`.
#[derive(Debug, Serialize)]
pub struct Effective {
    defaults: Defaults,
    intake: Intake,
    daemon: Daemon,
    classify: Classify,
    http: Http,
    store: Store,
    retention: Retention,
    pool: Worker,
    class: Classes,
    #[serde(rename = "worker")]
    workers: Vec<Worker>,
}

#[derive(Debug, Serialize)]
struct Defaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
    max_prompt_size: String,
    #[serde(flatten)]
    limits: Limited,
}

/// A worker's limits, as `[defaults]` and a `[[worker]]` write them.
#[derive(Debug, Serialize)]
struct Limited {
    timeout: String,
    max_attempts: u32,
    backoff: String,
    max_backoff: String,
    kill_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    linger_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_processes: Option<u32>,
    memory_report_interval: String,
    // The restart policy of a long-lived agent, which the pool has not.
    #[serde(skip_serializing_if = "Option::is_none")]
    autorestart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_restarts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_uptime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_delay: Option<String>,
}

#[derive(Debug, Serialize)]
struct Intake {
    settle: String,
    poll: bool,
    poll_interval: String,
    rescan_interval: String,
}

#[derive(Debug, Serialize)]
struct Daemon {
    lease: String,
    shutdown_grace: String,
    output_cap: String,
    stderr_cap: String,
    memory_sample_interval: String,
    log_max_size: String,
    log_backups: u32,
    task_logs_keep: u32,
    host: String,
    shared_sessions: bool,
    containment: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    min_free_space: String,
}

#[derive(Debug, Serialize)]
struct Classify {
    long_keywords: Vec<String>,
    short_keywords: Vec<String>,
    high: f64,
    medium: f64,
    low: f64,
}

#[derive(Debug, Serialize)]
struct Http {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    allow_remote: bool,
    max_body: String,
    header_timeout: String,
    request_timeout: String,
    max_connections: u32,
    max_streams: u32,
}

#[derive(Debug, Serialize)]
struct Store {
    /// Without its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

#[derive(Debug, Serialize)]
struct Retention {
    keep_tasks: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_per_worker: Option<u32>,
    interval: String,
    batch: u32,
}

#[derive(Debug, Serialize)]
struct Classes {
    long: Class,
    short: Class,
}

#[derive(Debug, Serialize)]
struct Class {
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i64>,
}

/// A `[[worker]]`, or `[pool]` (no name, route or host, but `max_workers`).
#[derive(Debug, Serialize)]
struct Worker {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_workers: Option<u32>,
    agent: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    cwd: String,
    #[serde(flatten)]
    agent_settings: AgentSettings,
    #[serde(flatten)]
    limits: Limited,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    isolation: Option<Isolated>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
}

/// A worker's `isolation = "worktree"` settings, with their defaults.
#[derive(Debug, Serialize)]
struct Isolated {
    isolation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    base: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    worktree: Option<&'static str>,
    commit: agentq_core::worktree::CommitMode,
    keep: agentq_core::worktree::Keep,
    require_clean_base: bool,
    branch_prefix: String,
}

/// The keys of one agent's settings; the others' are left out.
#[derive(Debug, Default, Serialize)]
struct AgentSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claude_bin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    codex_bin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gemini_bin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permission_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_tools: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disallowed_tools: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    append_system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_turns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_budget_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_dirs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dangerously_skip_permissions: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_usd_per_day: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recycle_after_tasks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_git_repo_check: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust_workspace: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_after_tasks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_after_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_args: Option<Vec<String>>,
}

impl Effective {
    pub fn of(config: &Config) -> Effective {
        let d = &config.daemon;
        Effective {
            defaults: Defaults {
                worker: config.default_worker.clone(),
                max_prompt_size: format_size(config.max_prompt_size),
                limits: limited(&config.defaults, true),
            },
            intake: Intake {
                settle: format_duration(config.intake.settle),
                poll: config.intake.poll,
                poll_interval: format_duration(config.intake.poll_interval),
                rescan_interval: format_duration(config.intake.rescan_interval),
            },
            daemon: Daemon {
                lease: format_duration(d.lease),
                shutdown_grace: format_duration(d.shutdown_grace),
                output_cap: format_size(d.output_cap),
                stderr_cap: format_size(d.stderr_cap),
                memory_sample_interval: format_duration(d.memory_sample_interval),
                log_max_size: format_size(d.log_max_size),
                log_backups: d.log_backups,
                task_logs_keep: d.task_logs_keep,
                host: d.host.clone(),
                shared_sessions: d.shared_sessions,
                containment: d.containment.as_str(),
                cgroup: d.cgroup.as_ref().map(|c| c.display().to_string()),
                min_free_space: format_size(d.min_free_space),
            },
            classify: Classify {
                long_keywords: config.classify.long_keywords.clone(),
                short_keywords: config.classify.short_keywords.clone(),
                high: config.classify.high,
                medium: config.classify.medium,
                low: config.classify.low,
            },
            http: Http {
                listen: config.http.listen.map(|a| a.to_string()),
                allow_remote: config.http.allow_remote,
                max_body: format_size(config.http.max_body),
                header_timeout: format_duration(config.http.header_timeout),
                request_timeout: format_duration(config.http.request_timeout),
                max_connections: config.http.max_connections,
                max_streams: config.http.max_streams,
            },
            store: Store {
                url: match &config.store {
                    StoreSettings::Sqlite => None,
                    StoreSettings::Postgres(url) => Some(url.redacted()),
                },
            },
            retention: Retention {
                keep_tasks: config
                    .retention
                    .keep_for
                    .map_or_else(|| "forever".into(), format_duration),
                keep_per_worker: config.retention.keep_per_worker,
                interval: format_duration(config.retention.interval),
                batch: config.retention.batch,
            },
            pool: Worker {
                max_workers: Some(config.pool.max_workers),
                ..worker(&config.pool.worker)
            },
            class: Classes {
                long: class(&config.classes.long),
                short: class(&config.classes.short),
            },
            workers: config.workers.iter().map(worker).collect(),
        }
    }

    /// As TOML, under a comment that says what it is.
    pub fn to_toml(&self, config: &Config) -> String {
        let mut text = format!(
            "# The effective configuration of {}: every setting as agentq uses it, defaults filled in.\n\
             # Secrets are shown as {HIDDEN}.\n",
            config.path.display()
        );
        if let StoreSettings::Postgres(url) = &config.store
            && url.origin != "[store] url"
        {
            text.push_str(&format!("# [store] url is {}'s.\n", url.origin));
        }
        text.push('\n');
        text.push_str(&toml::to_string(self).expect("the effective config is TOML"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

fn limited(l: &Limits, restarts: bool) -> Limited {
    let restart = &l.restart;
    Limited {
        timeout: format_duration(l.timeout),
        max_attempts: l.max_attempts,
        backoff: format_duration(l.backoff),
        max_backoff: format_duration(l.max_backoff),
        kill_timeout: format_duration(l.kill_timeout),
        idle_timeout: l.idle_timeout.map(format_duration),
        linger_timeout: format_duration(l.linger_timeout),
        max_memory: l.max_memory.map(format_size),
        max_processes: l.max_processes,
        memory_report_interval: format_duration(l.memory_report_interval),
        autorestart: restarts.then_some(restart.autorestart),
        max_restarts: restarts.then_some(restart.max_restarts),
        min_uptime: restarts.then(|| format_duration(restart.min_uptime)),
        restart_delay: restarts.then(|| format_duration(restart.restart_delay)),
    }
}

fn class(c: &ClassLimits) -> Class {
    Class {
        timeout: c.timeout.map(format_duration),
        max_memory: c.max_memory.map(format_size),
        max_attempts: c.max_attempts,
        priority: c.priority,
    }
}

fn worker(w: &WorkerConfig) -> Worker {
    let pool = w.name == POOL;
    Worker {
        name: (!pool).then(|| w.name.clone()),
        max_workers: None,
        agent: w.agent.kind(),
        route: (!pool).then(|| w.route.as_str()),
        host: w.host.clone(),
        // Without the "." a relative cwd leaves when joined to the project folder.
        cwd: w
            .cwd
            .components()
            .collect::<PathBuf>()
            .display()
            .to_string(),
        agent_settings: agent_settings(&w.agent, pool),
        limits: limited(&w.limits, !pool),
        isolation: w.worktree.as_ref().map(|t| Isolated {
            isolation: "worktree",
            repo: t.repo.as_ref().map(|r| r.display().to_string()),
            base: t.base.clone(),
            worktree: (!pool).then_some(if t.per_task { "per-task" } else { "shared" }),
            commit: t.commit,
            keep: t.keep,
            require_clean_base: t.require_clean_base,
            branch_prefix: t.branch_prefix.clone(),
        }),
        env: w
            .env
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    HIDDEN.into()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
    }
}

/// The settings of `agent`; a pool's keep no conversation (its tasks each have their own).
fn agent_settings(agent: &Agent, pool: bool) -> AgentSettings {
    let bin = Some(agent.driver().program().display().to_string());
    // (session, rotate_after_tasks, rotate_after_tokens)
    let session = |s: &SessionPolicy| match (pool, s) {
        (true, _) => (None, None, None),
        (false, SessionPolicy::Resume) => (Some("resume"), None, None),
        (false, SessionPolicy::Fresh) => (Some("fresh"), None, None),
        (
            false,
            SessionPolicy::Rotate {
                after_tasks,
                after_tokens,
            },
        ) => (Some("rotate"), *after_tasks, *after_tokens),
    };
    match agent {
        Agent::Command(s) => AgentSettings {
            command: Some(s.argv.clone()),
            ..AgentSettings::default()
        },
        Agent::Claude(s) => {
            let (session, rotate_after_tasks, rotate_after_tokens) = session(&s.session);
            AgentSettings {
                claude_bin: bin,
                mode: Some(match s.mode {
                    Mode::Exec => "exec",
                    Mode::Persistent => "persistent",
                }),
                model: s.model.clone(),
                permission_mode: s.permission_mode.clone(),
                allowed_tools: Some(s.allowed_tools.clone()),
                disallowed_tools: Some(s.disallowed_tools.clone()),
                append_system_prompt: s.append_system_prompt.clone(),
                max_turns: s.max_turns,
                max_budget_usd: s.max_budget_usd,
                add_dirs: Some(s.add_dirs.iter().map(|d| d.display().to_string()).collect()),
                dangerously_skip_permissions: Some(s.skip_permissions),
                budget_usd_per_day: s.budget_usd_per_day,
                recycle_after_tasks: if pool { None } else { s.recycle_after_tasks },
                session,
                rotate_after_tasks,
                rotate_after_tokens,
                extra_args: Some(s.extra_args.clone()),
                ..AgentSettings::default()
            }
        }
        Agent::Codex(s) => {
            let (session, rotate_after_tasks, rotate_after_tokens) = session(&s.session);
            AgentSettings {
                codex_bin: bin,
                model: s.model.clone(),
                sandbox: s.sandbox.clone(),
                skip_git_repo_check: Some(s.skip_git_repo_check),
                session,
                rotate_after_tasks,
                rotate_after_tokens,
                extra_args: Some(s.extra_args.clone()),
                ..AgentSettings::default()
            }
        }
        Agent::Gemini(s) => {
            let (session, rotate_after_tasks, rotate_after_tokens) = session(&s.session);
            AgentSettings {
                gemini_bin: bin,
                model: s.model.clone(),
                approval_mode: s.approval_mode.clone(),
                trust_workspace: Some(s.trust_workspace),
                session,
                rotate_after_tasks,
                rotate_after_tokens,
                extra_args: Some(s.extra_args.clone()),
                ..AgentSettings::default()
            }
        }
    }
}

/// Whether a variable's name says it holds a secret: a key, token, password or credential, or a
/// database URL (which may carry a password).
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "DATABASE_URL",
    ]
    .iter()
    .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// A duration as the config writes it.
    fn d(secs: u64) -> String {
        format_duration(Duration::from_secs(secs))
    }

    fn effective(text: &str) -> (Config, Effective) {
        let config = Config::parse(Path::new("/p/agentq.toml"), text).unwrap();
        let shown = Effective::of(&config);
        (config, shown)
    }

    #[test]
    fn every_default_is_filled_in_and_each_worker_resolved_over_defaults() {
        let (config, shown) = effective(
            "[defaults]\ntimeout = \"20m\"\nmax_memory = \"2GiB\"\n\
             [[worker]]\nname = \"a\"\ncommand = [\"cat\"]\nenv = { OPENAI_API_KEY = \"sk-1\", MODE = \"x\" }\n\
             [[worker]]\nname = \"c\"\ntimeout = \"1h\"\nsession = \"rotate\"\nrotate_after_tasks = 3\n",
        );
        let json = serde_json::to_value(&shown).unwrap();
        let a = &json["worker"][0];
        assert_eq!(a["timeout"], "20m", "{a}");
        assert_eq!(a["max_memory"], "2GiB");
        assert_eq!(a["kill_timeout"], d(5));
        assert_eq!(a["autorestart"], true);
        assert_eq!(a["route"], "worker");
        assert_eq!(a["cwd"], "/p");
        assert_eq!(a["command"], serde_json::json!(["cat"]));
        assert!(a.get("claude_bin").is_none() && a.get("session").is_none());
        assert_eq!(a["env"]["OPENAI_API_KEY"], HIDDEN);
        assert_eq!(a["env"]["MODE"], "x");
        let c = &json["worker"][1];
        assert_eq!(
            (&c["agent"], &c["timeout"]),
            (&"claude".into(), &"1h".into())
        );
        assert_eq!(
            (&c["mode"], &c["session"]),
            (&"exec".into(), &"rotate".into())
        );
        assert_eq!(c["rotate_after_tasks"], 3);
        assert_eq!(c["dangerously_skip_permissions"], false);
        assert!(c.get("idle_timeout").is_none(), "off is left out");
        // The pool has its own defaults, and none of a long-lived agent's settings.
        let pool = &json["pool"];
        assert_eq!(
            (&pool["max_workers"], &pool["timeout"]),
            (&4.into(), &"20m".into())
        );
        assert!(pool.get("session").is_none() && pool.get("autorestart").is_none());
        assert!(pool.get("name").is_none() && pool.get("route").is_none());
        assert_eq!(json["retention"]["keep_tasks"], "30days");
        assert_eq!(json["daemon"]["min_free_space"], "64MiB");
        assert_eq!(json["defaults"]["max_prompt_size"], "10MiB");
        assert!(json["store"].get("url").is_none());

        // As TOML it loads as the same config.
        let text = shown.to_toml(&config);
        assert!(!text.contains("sk-1"), "{text}");
        let again = Effective::of(&Config::parse(Path::new("/q/agentq.toml"), &text).unwrap());
        assert_eq!(serde_json::to_value(&again).unwrap(), json, "{text}");
    }

    #[test]
    fn a_database_urls_password_is_never_shown() {
        let (config, shown) = effective("[store]\nurl = \"postgres://agentq:s3cret@db:5432/q\"\n");
        let text = shown.to_toml(&config);
        assert!(
            text.contains("url = \"postgres://agentq:***@db:5432/q\""),
            "{text}"
        );
        assert!(!text.contains("s3cret"));
        let config = config
            .with_env(|k| (k == "AGENTQ_DATABASE_URL").then(|| "host=h password=pw2 user=u".into()))
            .unwrap();
        let text = Effective::of(&config).to_toml(&config);
        assert!(!text.contains("pw2"), "{text}");
        assert!(text.contains("AGENTQ_DATABASE_URL's"), "{text}");
    }

    #[test]
    fn secret_names() {
        for name in [
            "ANTHROPIC_API_KEY",
            "gh_token",
            "DB_PASSWORD",
            "AGENTQ_DATABASE_URL",
            "CLAUDE_CODE_OAUTH_TOKEN",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["HOME", "MODE", "ANTHROPIC_BASE_URL"] {
            assert!(!is_secret(name), "{name}");
        }
    }
}
