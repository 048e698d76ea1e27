//! `agentq.toml`: finding it, parsing it, and turning it into settings with every default filled in.
//!
//! The file is parsed with unknown keys denied, so a typo is an error that names its line rather than
//! a setting silently ignored. Durations are written the way people say them (`"10m"`, `"1h 30m"`,
//! `"250ms"`, or a bare number of seconds) and sizes likewise (`"10MiB"`, `"512KB"`, or bytes).
//! Everything relative in the file is relative to the folder that holds it: that folder is the
//! project root, with the state folder `.agentq/`, the prompt folders `.queue/<worker>/` and the
//! result folders `.output/<worker>/` inside it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use agentq_core::error::{Error, Result};

pub const CONFIG_FILE: &str = "agentq.toml";
pub const STATE_DIR: &str = ".agentq";
/// The results folder, `.output/<worker>/`, in the project root.
pub const OUTPUT_DIR: &str = ".output";
/// `[daemon] min_free_space` unless the file sets it.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;
/// The database's file name in the state folder.
pub const DB_FILE: &str = "agentq.db";

/// Names that cannot be a worker's: they are folders or targets of their own.
const RESERVED_NAMES: &[&str] = &[POOL, "rejected"];

/// The pool's name where a worker's would be: its tasks' worker, its prompt folder
/// `.queue/pool/`, its results `.output/pool/`.
pub use agentq_core::domain::POOL;

/// What `agentq init` writes: short enough to read, with every knob a user reaches for first.
pub const INIT_TEMPLATE: &str = r#"# agentq configuration. Every setting not written here has a default; see README.md.

[defaults]
timeout = "10m"          # wall-clock limit of one attempt
max_attempts = 3         # attempts before a task is dead
# backoff = "5s"         # first retry delay; doubles each attempt, with jitter
# max_backoff = "10m"    # ceiling of the retry delay
# kill_timeout = "5s"    # grace between SIGTERM and SIGKILL when an agent is stopped
# max_prompt_size = "10MiB"

# One [[worker]] per named worker. Each runs its tasks one at a time, in priority order, and takes
# prompt files dropped into .queue/<name>/. Results land in .output/<name>/.
[[worker]]
name = "main"
agent = "command"        # "command": any program, prompt on stdin, stdout is the result
command = ["cat"]        # replace with your agent, e.g. ["python3", "agent.py"]
cwd = "."
# env = { KEY = "value" }
# timeout = "30m"        # overrides [defaults] for this worker

# The HTTP API and Prometheus metrics (off by default); `agentq token` prints the token it asks for.
# [http]
# listen = "127.0.0.1:7777"
# allow_remote = false     # an address other than loopback is refused unless true
# max_body = "1MiB"        # larger request bodies are answered 413
# header_timeout = "10s"   # a request's headers must arrive within this (else 408)
# request_timeout = "30s"  # its body within this of its headers (else 408)
# max_connections = 256    # served at once; more are answered 503
# max_streams = 64         # event streams open at once; more are answered 503

# The queue is an SQLite file in .agentq/ unless a PostgreSQL database is named here (or in
# AGENTQ_DATABASE_URL, which wins): then daemons on several hosts can share it.
# [store]
# url = "postgres://agentq:PASSWORD@db.example:5432/agentq"
# With several daemons on one database, each needs a host id of its own:
# [daemon]
# host = "build-1"         # default: the machine's name (`agentq run --host NAME` overrides)
# containment = "auto"     # Linux: a cgroup v2 per attempt where the daemon was given one (a service
#                          # with Delegate=yes, or `cgroup` below), else a keeper per attempt: either
#                          # ends what an agent started, setsid or not. "cgroup": refuse to start
#                          # without one; "keeper": never a cgroup; "group": the process group alone
# cgroup = "/sys/fs/cgroup/agentq"  # a cgroup v2 folder this user may divide (made if missing)
# min_free_space = "64MiB" # no task is claimed while .agentq/ or .output/ has less free (1MiB at
#                          # least); claiming resumes by itself when there is room again
# shared_sessions = false  # true if every host's Claude reads the same session store
# and a [[worker]] may be pinned to one of them with host = "build-1".
"#;

/// A length of time as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A number of bytes as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

pub use agentq_core::units::{parse_duration, parse_size};

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A value of the file with where it is in the text: toml's `Spanned`, which schemars knows
/// nothing of, so the schema describes the value alone. Every mistake found after parsing names
/// its line from one of these.
#[derive(Clone, Debug)]
struct Spanned<T> {
    span: Range<usize>,
    value: T,
}

impl<T> Spanned<T> {
    /// A value agentq fills in itself, which is nowhere in the file.
    fn new(span: Range<usize>, value: T) -> Self {
        Spanned { span, value }
    }

    fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    fn get_ref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let spanned = toml::Spanned::<T>::deserialize(d)?;
        Ok(Spanned {
            span: spanned.span(),
            value: spanned.into_inner(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A length of time: a number and a unit (\"250ms\", \"30s\", \"10m\", \"1h 30m\", \"7d\"), or a whole number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+\s*[a-zA-Zµ]*(\s*[0-9]+\s*[a-zA-Zµ]+)*\s*$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of bytes: a number and a unit (\"512KiB\", \"10MiB\", \"1GB\"; KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000), or a whole number of bytes.",
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9.]+\s*([KkMmGg][Ii]?[Bb]?|[Bb])?\s*$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

/// `agentq.toml`: the settings of one project's agentq. Every setting has a default; unknown keys
/// are refused.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "agentq.toml")]
struct RawFile {
    /// Settings every worker (and the pool) inherits unless it sets its own.
    #[serde(default)]
    defaults: RawDefaults,
    /// Prompt files dropped into .queue/<worker>/.
    #[serde(default)]
    intake: RawIntake,
    /// The supervisor itself.
    #[serde(default)]
    daemon: RawDaemon,
    /// How a task is told long from short (the Worker Pattern seed's rules by default).
    #[serde(default)]
    classify: RawClassify,
    /// The HTTP API, Prometheus metrics and the dashboard: off unless `listen` is set.
    #[serde(default)]
    http: RawHttp,
    /// Where the queue lives: the SQLite file .agentq/agentq.db unless a PostgreSQL URL is given.
    #[serde(default)]
    store: RawStore,
    /// Which finished tasks the daemon removes, with their events, logs and output files.
    #[serde(default)]
    retention: RawRetention,
    /// The ephemeral pool: a worker's settings without a name, plus `max_workers`. Each pool task
    /// runs in a fresh process and conversation of its own.
    pool: Option<Spanned<RawWorker>>,
    /// Limits applied to tasks of a class (long or short) unless the task sets its own.
    #[serde(default)]
    class: RawClasses,
    /// The named workers: each runs its tasks one at a time, in priority order, and takes the
    /// prompt files dropped into .queue/<name>/.
    #[serde(default, rename = "worker")]
    workers: Vec<Spanned<RawWorker>>,
}

/// `[class.long]` and `[class.short]`.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Classes")]
struct RawClasses {
    /// Limits of long tasks.
    long: Option<RawClassLimits>,
    /// Limits of short tasks.
    short: Option<RawClassLimits>,
}

/// What a class sets for its tasks that do not set their own.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ClassLimits")]
struct RawClassLimits {
    /// Wall-clock limit of each attempt (above 0).
    timeout: Option<Spanned<Dur>>,
    /// The most memory the agent's process tree may hold (above 0).
    max_memory: Option<Spanned<Size>>,
    /// Attempts before the task is dead (at least 1).
    max_attempts: Option<Spanned<u32>>,
    /// Higher runs first; equal priorities run in submission order.
    priority: Option<i64>,
}

/// Settings a worker inherits unless it sets its own.
#[derive(Default, Clone)]
struct RawLimits {
    timeout: Option<Spanned<Dur>>,
    max_attempts: Option<Spanned<u32>>,
    backoff: Option<Spanned<Dur>>,
    max_backoff: Option<Spanned<Dur>>,
    kill_timeout: Option<Spanned<Dur>>,
    idle_timeout: Option<Spanned<Dur>>,
    linger_timeout: Option<Spanned<Dur>>,
    max_memory: Option<Spanned<Size>>,
    max_processes: Option<Spanned<u32>>,
    memory_report_interval: Option<Spanned<Dur>>,
    autorestart: Option<Spanned<bool>>,
    max_restarts: Option<Spanned<u32>>,
    min_uptime: Option<Spanned<Dur>>,
    restart_delay: Option<Spanned<Dur>>,
}

/// `[defaults]`: the limits every worker inherits, and a few settings of the whole file.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Defaults")]
struct RawDefaults {
    /// Wall-clock limit of one attempt (default 10m).
    timeout: Option<Spanned<Dur>>,
    /// Attempts before a task is dead (default 3, at least 1).
    max_attempts: Option<Spanned<u32>>,
    /// First retry delay; doubles each attempt, with jitter (default 5s).
    backoff: Option<Spanned<Dur>>,
    /// Ceiling of the retry delay (default 10m).
    max_backoff: Option<Spanned<Dur>>,
    /// Grace between SIGTERM and SIGKILL when an agent is stopped (default 5s).
    kill_timeout: Option<Spanned<Dur>>,
    /// No output for this long means the agent hangs (default: off).
    idle_timeout: Option<Spanned<Dur>>,
    /// How long an agent may live on after printing its final result (default 10s).
    linger_timeout: Option<Spanned<Dur>>,
    /// The most memory an agent's process tree may hold, sampled; over it the attempt is stopped
    /// (default: off).
    max_memory: Option<Spanned<Size>>,
    /// The most processes an attempt may have at once; past it all are killed (default: off; at
    /// least 2).
    max_processes: Option<Spanned<u32>>,
    /// How often a memory_report line is written while a task runs (default 10s).
    memory_report_interval: Option<Spanned<Dur>>,
    /// Persistent mode: start a long-lived agent again when it dies (default true).
    autorestart: Option<Spanned<bool>>,
    /// Persistent mode: deaths in a row, each within min_uptime of its start, before the worker is
    /// errored (default 10).
    max_restarts: Option<Spanned<u32>>,
    /// Persistent mode: a process that lived this long was stable (default 10s).
    min_uptime: Option<Spanned<Dur>>,
    /// Persistent mode: wait before a restart, doubling with each quick death, up to a minute
    /// (default 1s).
    restart_delay: Option<Spanned<Dur>>,
    /// Where `agentq submit` sends a task without --worker (default: the only worker).
    worker: Option<Spanned<String>>,
    /// Larger prompts (and prompt files) are refused (default 10MiB).
    max_prompt_size: Option<Spanned<Size>>,
    /// The claude binary of every Claude worker that names none (default: claude on PATH, or
    /// AGENTQ_CLAUDE_BIN).
    claude_bin: Option<PathBuf>,
    /// The codex binary of every Codex worker that names none (default: codex on PATH, or
    /// AGENTQ_CODEX_BIN).
    codex_bin: Option<PathBuf>,
    /// The gemini binary of every Gemini worker that names none (default: gemini on PATH, or
    /// AGENTQ_GEMINI_BIN).
    gemini_bin: Option<PathBuf>,
    /// Where a worker's tasks run unless it says: "worker" (its own agent), "pool" (a fresh
    /// process per task) or "auto" (short tasks on the worker, long ones in the pool).
    #[schemars(extend("enum" = ROUTES))]
    route: Option<Spanned<String>>,
}

/// `[intake]`: how prompt files are taken.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Intake")]
struct RawIntake {
    /// A prompt file must be unchanged this long before it is taken (default 200ms).
    settle: Option<Spanned<Dur>>,
    /// Scan the folders on a timer instead of waiting for file-system events (default false).
    poll: Option<bool>,
    /// The scan period when polling (default 1s, at least 10ms).
    poll_interval: Option<Spanned<Dur>>,
    /// With events, a full rescan this often anyway (default 30s, at least 100ms).
    rescan_interval: Option<Spanned<Dur>>,
}

/// `[daemon]`: the supervisor's own settings.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Daemon")]
struct RawDaemon {
    /// A claim expires this long after its last heartbeat (default 30s, at least 300ms).
    lease: Option<Spanned<Dur>>,
    /// On the first stop signal, running tasks may finish for this long (default 30s).
    shutdown_grace: Option<Spanned<Dur>>,
    /// The most of an agent's stdout kept as the result (default 16MiB).
    output_cap: Option<Spanned<Size>>,
    /// How much of the end of an agent's stderr is kept (default 64KiB).
    stderr_cap: Option<Spanned<Size>>,
    /// How often a running agent's memory is read (default 1s, at least 50ms).
    memory_sample_interval: Option<Spanned<Dur>>,
    /// events.jsonl and each task's agent log rotate past this size (default 10MiB, at least
    /// 4KiB).
    log_max_size: Option<Spanned<Size>>,
    /// Older event logs kept (default 5).
    log_backups: Option<u32>,
    /// Per worker, the newest task logs kept (default 200).
    task_logs_keep: Option<u32>,
    /// This daemon's host id (default: the machine's name; `agentq run --host` wins).
    host: Option<Spanned<String>>,
    /// Every host's Claude reads one session store (default false).
    shared_sessions: Option<bool>,
    /// What keeps an agent's processes from outliving its attempt (default "auto").
    #[schemars(extend("enum" = ["auto", "cgroup", "keeper", "group"]))]
    containment: Option<Spanned<String>>,
    /// A cgroup v2 folder this user may divide, absolute (made if missing).
    cgroup: Option<Spanned<String>>,
    /// No task is claimed while .agentq/ or .output/ has less free (default 64MiB, 1MiB at
    /// least).
    min_free_space: Option<Spanned<Size>>,
}

/// `[http]`: the HTTP API.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Http")]
struct RawHttp {
    /// The address to serve on, e.g. "127.0.0.1:7777" (default: off).
    listen: Option<Spanned<String>>,
    /// Allow an address other than loopback (default false).
    allow_remote: Option<bool>,
    /// Larger request bodies are answered 413 (default 1MiB).
    max_body: Option<Spanned<Size>>,
    /// A request's headers must arrive within this, else 408 (default 10s, at least 100ms).
    header_timeout: Option<Spanned<Dur>>,
    /// A request's body must arrive within this of its headers, else 408 (default 30s, at least
    /// 100ms).
    request_timeout: Option<Spanned<Dur>>,
    /// Connections served at once; more are answered 503 (default 256).
    max_connections: Option<Spanned<u32>>,
    /// Event streams open at once; more are answered 503 (default 64).
    max_streams: Option<Spanned<u32>>,
}

/// `[retention]`: which finished tasks the daemon removes.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Retention")]
struct RawRetention {
    /// Finished tasks older than this go (default "30d", at least 1m; "forever": none by age).
    keep_tasks: Option<Spanned<String>>,
    /// Beyond the newest this many finished tasks of a worker (the pool as one), they go too
    /// (default: no limit).
    keep_per_worker: Option<Spanned<u32>>,
    /// How often the daemon looks (default 10m, at least 1s).
    interval: Option<Spanned<Dur>>,
    /// Tasks removed per transaction (default 500).
    batch: Option<Spanned<u32>>,
}

/// `[store]`: where the queue lives.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Store")]
struct RawStore {
    /// A PostgreSQL database: a postgres:// URL or a libpq "key=value" string
    /// (AGENTQ_DATABASE_URL wins over it).
    url: Option<Spanned<String>>,
}

/// `[classify]`: long or short, by the Worker Pattern seed's rules.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Classify")]
struct RawClassify {
    /// Words that make a prompt a long task.
    long_keywords: Option<Spanned<Vec<String>>>,
    /// Words that make a prompt a short task.
    short_keywords: Option<Spanned<Vec<String>>>,
    /// Complexity at or above this: always long (default 0.8).
    high: Option<Spanned<f64>>,
    /// Between low and high with no keyword: long at or above this (default 0.5).
    medium: Option<Spanned<f64>>,
    /// At or below this: short unless a long keyword appears (default 0.3).
    low: Option<Spanned<f64>>,
}

/// A `[[worker]]`, or `[pool]`: its agent, folder, environment and limits (each limit as in
/// `[defaults]`, which it overrides), and the settings of its agent.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Worker")]
struct RawWorker {
    /// The worker's name: its folders .queue/<name>/ and .output/<name>/ (`[[worker]]` only,
    /// where it is required; 1 to 64 letters, digits, '-' or '_').
    name: Option<Spanned<String>>,
    /// What runs each task (default: "command" when a command is given, else "claude").
    #[schemars(extend("enum" = AGENTS))]
    agent: Option<Spanned<String>>,
    /// Where its tasks run: "worker", "pool" or "auto" (`[[worker]]` only).
    #[schemars(extend("enum" = ROUTES))]
    route: Option<Spanned<String>>,
    /// How many pool tasks may run at once (`[pool]` only; default 4).
    max_workers: Option<Spanned<u32>>,
    /// The only daemon host that runs it (`[[worker]]` only).
    host: Option<Spanned<String>>,
    /// agent = "command": the program and its arguments; the prompt goes to its stdin, its
    /// stdout is the result, exit code 0 is success.
    command: Option<Spanned<Vec<String>>>,
    /// The folder the agent runs in, relative to agentq.toml's (default ".").
    cwd: Option<PathBuf>,
    /// Variables added to the agent's environment.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Wall-clock limit of one attempt.
    timeout: Option<Spanned<Dur>>,
    /// Attempts before a task is dead (at least 1).
    max_attempts: Option<Spanned<u32>>,
    /// First retry delay; doubles each attempt, with jitter.
    backoff: Option<Spanned<Dur>>,
    /// Ceiling of the retry delay.
    max_backoff: Option<Spanned<Dur>>,
    /// Grace between SIGTERM and SIGKILL when the agent is stopped.
    kill_timeout: Option<Spanned<Dur>>,
    /// No output for this long means the agent hangs.
    idle_timeout: Option<Spanned<Dur>>,
    /// How long the agent may live on after printing its final result.
    linger_timeout: Option<Spanned<Dur>>,
    /// The most memory the agent's process tree may hold.
    max_memory: Option<Spanned<Size>>,
    /// The most processes an attempt may have at once (at least 2).
    max_processes: Option<Spanned<u32>>,
    /// How often a memory_report line is written while a task runs.
    memory_report_interval: Option<Spanned<Dur>>,
    /// Persistent mode: start the long-lived agent again when it dies (`[[worker]]` only).
    autorestart: Option<Spanned<bool>>,
    /// Persistent mode: quick deaths in a row before the worker is errored (`[[worker]]` only).
    max_restarts: Option<Spanned<u32>>,
    /// Persistent mode: a process that lived this long was stable (`[[worker]]` only).
    min_uptime: Option<Spanned<Dur>>,
    /// Persistent mode: wait before a restart, doubling with each quick death (`[[worker]]`
    /// only).
    restart_delay: Option<Spanned<Dur>>,
    // The settings of `agent = "claude"` workers (inline: serde cannot flatten them and still
    // deny unknown keys).
    /// Claude: the claude binary, a name on PATH or a path relative to agentq.toml's folder.
    claude_bin: Option<PathBuf>,
    /// Claude: "exec" (a process per task) or "persistent" (one long-lived process per worker,
    /// stream-json; `[[worker]]` only).
    #[schemars(extend("enum" = ["exec", "persistent"]))]
    mode: Option<Spanned<String>>,
    /// Claude, Codex, Gemini: the model (the CLI's --model).
    model: Option<String>,
    /// Claude: --permission-mode.
    permission_mode: Option<String>,
    /// Claude: --allowedTools.
    allowed_tools: Option<Vec<String>>,
    /// Claude: --disallowedTools.
    disallowed_tools: Option<Vec<String>>,
    /// Claude: --append-system-prompt.
    append_system_prompt: Option<String>,
    /// Claude: --max-turns.
    max_turns: Option<u32>,
    /// Claude: --max-budget-usd, per task.
    max_budget_usd: Option<f64>,
    /// Claude: --add-dir, each relative to agentq.toml's folder.
    add_dirs: Option<Vec<PathBuf>>,
    /// Claude, Codex, Gemini: more arguments for the CLI.
    extra_args: Option<Vec<String>>,
    /// Claude: --dangerously-skip-permissions (never a default).
    dangerously_skip_permissions: Option<bool>,
    /// Claude, Codex, Gemini: which conversation a task joins: "resume" (one for all tasks),
    /// "fresh" (one per task) or "rotate" (a new one after rotate_after_tasks or
    /// rotate_after_tokens; `[[worker]]` only).
    #[schemars(extend("enum" = ["resume", "fresh", "rotate"]))]
    session: Option<Spanned<String>>,
    /// session = "rotate": a new conversation after this many tasks (`[[worker]]` only).
    rotate_after_tasks: Option<Spanned<u32>>,
    /// session = "rotate": a new conversation after this many tokens (`[[worker]]` only).
    rotate_after_tokens: Option<Spanned<u64>>,
    /// Claude: pause the worker for the rest of the day once it has spent this much.
    budget_usd_per_day: Option<f64>,
    /// Claude, persistent mode: a new process (same conversation) after this many tasks
    /// (`[[worker]]` only).
    recycle_after_tasks: Option<Spanned<u32>>,
    // `agent = "codex"`.
    /// Codex: the codex binary, a name on PATH or a path relative to agentq.toml's folder.
    codex_bin: Option<PathBuf>,
    /// Codex: --sandbox (default: the CLI's own).
    #[schemars(extend("enum" = agentq_agents::codex::SANDBOXES))]
    sandbox: Option<Spanned<String>>,
    /// Codex: --skip-git-repo-check, to run outside a git repository.
    skip_git_repo_check: Option<bool>,
    // `agent = "gemini"`.
    /// Gemini: the gemini binary, a name on PATH or a path relative to agentq.toml's folder.
    gemini_bin: Option<PathBuf>,
    /// Gemini: --approval-mode (default: the CLI's own).
    #[schemars(extend("enum" = agentq_agents::gemini::APPROVAL_MODES))]
    approval_mode: Option<Spanned<String>>,
    /// Gemini: --skip-trust, to run in a folder gemini has not been told to trust.
    trust_workspace: Option<bool>,
    // Isolation: each task in a git worktree of its own.
    /// "worktree": each task runs in a git worktree of its own, on a branch of its own, and its
    /// change is kept for review (`agentq diff`, `merge`, `discard`); "none" (default): in cwd.
    #[schemars(extend("enum" = agentq_core::worktree::Isolation::NAMES))]
    isolation: Option<Spanned<String>>,
    /// isolation = "worktree": the git repository, relative to agentq.toml's folder (default:
    /// the cwd's repository).
    repo: Option<Spanned<PathBuf>>,
    /// isolation = "worktree": the commit or branch a task's branch starts from (default "HEAD",
    /// resolved when the task is submitted).
    base: Option<Spanned<String>>,
    /// isolation = "worktree", a `[[worker]]`: "shared" (default; one worktree for the worker's
    /// conversation, each task's change measured from where it started) or "per-task".
    #[schemars(extend("enum" = ["shared", "per-task"]))]
    worktree: Option<Spanned<String>>,
    /// isolation = "worktree": "auto" (default) commits what the agent left uncommitted on the
    /// task's branch, "never" leaves it in the worktree.
    #[schemars(extend("enum" = agentq_core::worktree::CommitMode::NAMES))]
    commit: Option<Spanned<String>>,
    /// isolation = "worktree": when a task's worktree folder goes: "until-merged" (default),
    /// "on-failure" (kept only when the task failed) or "never" (at once; the branch stays).
    #[schemars(extend("enum" = agentq_core::worktree::Keep::NAMES))]
    keep: Option<Spanned<String>>,
    /// isolation = "worktree": refuse a task when the repository has uncommitted changes
    /// (default false).
    require_clean_base: Option<bool>,
    /// isolation = "worktree": branches are named <branch_prefix>/<worker>/<task id> (default
    /// "agentq").
    branch_prefix: Option<Spanned<String>>,
}

/// The agent settings of a worker: each key, whether a worker sets it, and the agents that take it.
type AgentKey = (
    &'static str,
    fn(&RawWorker) -> bool,
    &'static [&'static str],
);
const AGENT_KEYS: &[AgentKey] = &[
    ("command", |w| w.command.is_some(), &["command"]),
    ("claude_bin", |w| w.claude_bin.is_some(), &["claude"]),
    ("mode", |w| w.mode.is_some(), &["claude"]),
    (
        "model",
        |w| w.model.is_some(),
        &["claude", "codex", "gemini"],
    ),
    (
        "permission_mode",
        |w| w.permission_mode.is_some(),
        &["claude"],
    ),
    ("allowed_tools", |w| w.allowed_tools.is_some(), &["claude"]),
    (
        "disallowed_tools",
        |w| w.disallowed_tools.is_some(),
        &["claude"],
    ),
    (
        "append_system_prompt",
        |w| w.append_system_prompt.is_some(),
        &["claude"],
    ),
    ("max_turns", |w| w.max_turns.is_some(), &["claude"]),
    (
        "max_budget_usd",
        |w| w.max_budget_usd.is_some(),
        &["claude"],
    ),
    ("add_dirs", |w| w.add_dirs.is_some(), &["claude"]),
    (
        "extra_args",
        |w| w.extra_args.is_some(),
        &["claude", "codex", "gemini"],
    ),
    (
        "dangerously_skip_permissions",
        |w| w.dangerously_skip_permissions.is_some(),
        &["claude"],
    ),
    (
        "session",
        |w| w.session.is_some(),
        &["claude", "codex", "gemini"],
    ),
    (
        "rotate_after_tasks",
        |w| w.rotate_after_tasks.is_some(),
        &["claude", "codex", "gemini"],
    ),
    (
        "rotate_after_tokens",
        |w| w.rotate_after_tokens.is_some(),
        &["claude", "codex", "gemini"],
    ),
    (
        "budget_usd_per_day",
        |w| w.budget_usd_per_day.is_some(),
        &["claude"],
    ),
    (
        "recycle_after_tasks",
        |w| w.recycle_after_tasks.is_some(),
        &["claude"],
    ),
    ("codex_bin", |w| w.codex_bin.is_some(), &["codex"]),
    ("sandbox", |w| w.sandbox.is_some(), &["codex"]),
    (
        "skip_git_repo_check",
        |w| w.skip_git_repo_check.is_some(),
        &["codex"],
    ),
    ("gemini_bin", |w| w.gemini_bin.is_some(), &["gemini"]),
    ("approval_mode", |w| w.approval_mode.is_some(), &["gemini"]),
    (
        "trust_workspace",
        |w| w.trust_workspace.is_some(),
        &["gemini"],
    ),
];

/// The drivers `agent = "..."` may name.
pub const AGENTS: [&str; 4] = ["claude", "codex", "gemini", "command"];

/// The words `route = "..."` may be.
const ROUTES: [&str; 3] = ["worker", "pool", "auto"];

/// "a Claude worker", "a Claude, Codex or Gemini worker".
fn agents_in_words(agents: &[&str]) -> String {
    let names: Vec<String> = agents
        .iter()
        .map(|a| match *a {
            "claude" => "Claude".to_string(),
            "codex" => "Codex".to_string(),
            "gemini" => "Gemini".to_string(),
            other => other.to_string(),
        })
        .collect();
    match names.split_last() {
        Some((last, [])) => format!("a {last} worker"),
        Some((last, rest)) => format!("a {} or {last} worker", rest.join(", ")),
        None => "no worker".into(),
    }
}

impl RawWorker {
    /// The first agent setting this worker sets that `agent` does not take, with the agents
    /// that do take it.
    fn foreign_key(&self, agent: &str) -> Option<(&'static str, &'static [&'static str])> {
        AGENT_KEYS
            .iter()
            .find(|(_, set, takers)| set(self) && !takers.contains(&agent))
            .map(|(key, _, takers)| (*key, *takers))
    }
}

/// The JSON Schema (draft 2020-12) of `agentq.toml`, derived from the types the file is parsed
/// into, each key described by its doc comment: for editors, and for checking a file before
/// agentq reads it. Beyond what the types say, it holds the rules the parser keeps in tables:
/// the keys each agent takes ([`AGENT_KEYS`], with the default agent as `build_agent` chooses
/// it), and the keys `[pool]` and a `[[worker]]` each have not. TOML has no null, so no setting
/// may be one.
pub fn schema() -> serde_json::Value {
    use serde_json::{Value, json};
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.transforms
            .push(Box::new(schemars::transform::RecursiveTransform(no_null)));
    });
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<RawFile>()
        .to_value();

    let is_agent =
        |agent: &str| json!({"required": ["agent"], "properties": {"agent": {"const": agent}}});
    let rules: Vec<Value> = AGENTS
        .iter()
        .map(|&agent| {
            let when = match agent {
                "claude" => json!({"anyOf": [
                    is_agent(agent),
                    {"not": {"anyOf": [{"required": ["agent"]}, {"required": ["command"]}]}}
                ]}),
                "command" => json!({"anyOf": [
                    is_agent(agent),
                    {"required": ["command"], "not": {"required": ["agent"]}}
                ]}),
                _ => is_agent(agent),
            };
            let foreign: serde_json::Map<String, Value> = AGENT_KEYS
                .iter()
                .filter(|(_, _, takers)| !takers.contains(&agent))
                .map(|(key, _, _)| (key.to_string(), Value::Bool(false)))
                .collect();
            json!({
                "if": when,
                "then": {
                    "description": format!("The keys {} has not.", agents_in_words(&[agent])),
                    "properties": foreign
                }
            })
        })
        .collect();
    schema["$defs"]["Worker"]["allOf"] = Value::Array(rules);

    let refused = |keys: &[&[(&str, KeySpan)]]| -> serde_json::Map<String, Value> {
        keys.iter()
            .flat_map(|k| k.iter())
            .map(|(key, _)| (key.to_string(), Value::Bool(false)))
            .collect()
    };
    let mut pool_refuses = refused(&[NAMED_ONLY, LONG_LIVED_ONLY]);
    pool_refuses.insert("mode".into(), json!({"not": {"const": "persistent"}}));
    let properties = &mut schema["properties"];
    properties["pool"]["properties"] = Value::Object(pool_refuses);
    properties["worker"]["items"]["required"] = json!(["name"]);
    properties["worker"]["items"]["properties"] = json!({"max_workers": false});
    schema
}

/// Takes null out of a schema: schemars lets an `Option` be null, which TOML cannot write.
fn no_null(schema: &mut Schema) {
    use serde_json::Value;
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            object.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any)) = object.get_mut("anyOf") {
        any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
        if let [Value::Object(only)] = any.as_slice() {
            let only = only.clone();
            object.remove("anyOf");
            for (key, value) in only {
                object.entry(key).or_insert(value);
            }
        }
    }
}

/// The limit fields of `[defaults]` and of a `[[worker]]` are the same; serde cannot flatten them
/// into both while also denying unknown keys, so they are gathered here.
impl RawLimits {
    /// Whether one of these settings is written at `offset` of the file.
    fn holds(&self, offset: usize) -> bool {
        let spans = [
            self.timeout.as_ref().map(Spanned::span),
            self.max_attempts.as_ref().map(Spanned::span),
            self.backoff.as_ref().map(Spanned::span),
            self.max_backoff.as_ref().map(Spanned::span),
            self.kill_timeout.as_ref().map(Spanned::span),
            self.idle_timeout.as_ref().map(Spanned::span),
            self.linger_timeout.as_ref().map(Spanned::span),
            self.max_memory.as_ref().map(Spanned::span),
            self.max_processes.as_ref().map(Spanned::span),
            self.memory_report_interval.as_ref().map(Spanned::span),
            self.autorestart.as_ref().map(Spanned::span),
            self.max_restarts.as_ref().map(Spanned::span),
            self.min_uptime.as_ref().map(Spanned::span),
            self.restart_delay.as_ref().map(Spanned::span),
        ];
        spans
            .into_iter()
            .flatten()
            .any(|s| s.contains(&offset) || s.start == offset)
    }
}

macro_rules! limits_of {
    ($raw:expr) => {
        RawLimits {
            timeout: $raw.timeout.clone(),
            max_attempts: $raw.max_attempts.clone(),
            backoff: $raw.backoff.clone(),
            max_backoff: $raw.max_backoff.clone(),
            kill_timeout: $raw.kill_timeout.clone(),
            idle_timeout: $raw.idle_timeout.clone(),
            linger_timeout: $raw.linger_timeout.clone(),
            max_memory: $raw.max_memory.clone(),
            max_processes: $raw.max_processes.clone(),
            memory_report_interval: $raw.memory_report_interval.clone(),
            autorestart: $raw.autorestart.clone(),
            max_restarts: $raw.max_restarts.clone(),
            min_uptime: $raw.min_uptime.clone(),
            restart_delay: $raw.restart_delay.clone(),
        }
    };
}

/// The agent a worker runs for each task, with its settings: one variant per driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Agent {
    /// Any program: the prompt on its stdin, its stdout the result, exit code 0 success.
    Command(agentq_agents::command::Settings),
    /// Claude Code.
    Claude(Box<agentq_agents::claude::Settings>),
    /// OpenAI's Codex CLI.
    Codex(Box<agentq_agents::codex::Settings>),
    /// Google's Gemini CLI.
    Gemini(Box<agentq_agents::gemini::Settings>),
}

impl Agent {
    /// What runs it.
    pub fn driver(&self) -> &dyn agentq_agents::Driver {
        match self {
            Agent::Command(s) => s,
            Agent::Claude(s) => s.as_ref(),
            Agent::Codex(s) => s.as_ref(),
            Agent::Gemini(s) => s.as_ref(),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.driver().name()
    }
}

/// Retry and stop limits of a worker, with defaults filled in.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub kill_timeout: Duration,
    /// No output for this long means the agent hangs.
    pub idle_timeout: Option<Duration>,
    /// How long an agent may live on after printing its final result.
    pub linger_timeout: Duration,
    /// The most resident memory the agent's process tree may hold.
    pub max_memory: Option<u64>,
    /// The most processes an attempt may have at once (the agent and all it started); past it,
    /// all of them are killed (`process_limit`). Enforced by the keeper (Linux).
    pub max_processes: Option<u32>,
    pub memory_report_interval: Duration,
    pub restart: RestartPolicy,
}

/// What happens when a worker's long-lived agent process dies, in PM2's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Start a new process when it dies; without it the worker goes `errored` at the first death.
    pub autorestart: bool,
    /// Deaths in a row, each within `min_uptime` of its start, before the worker goes `errored`.
    pub max_restarts: u32,
    /// A process that lived this long was stable: the count of quick deaths starts over.
    pub min_uptime: Duration,
    /// Wait before a restart, doubling with each quick death in a row (capped at a minute).
    pub restart_delay: Duration,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub name: String,
    pub agent: Agent,
    /// Absolute: resolved against the project root.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    /// Where the tasks submitted to it run.
    pub route: Route,
    /// Pinned to the daemon whose host id this is; `None`: any daemon's (one at a time).
    pub host: Option<String>,
    /// `isolation = "worktree"`: how its tasks get worktrees; `None`: they run in `cwd`.
    pub worktree: Option<WorktreeSettings>,
}

/// How a worker's (or the pool's) tasks run in git worktrees of their own.
#[derive(Clone, Debug, PartialEq)]
pub struct WorktreeSettings {
    /// The repository (absolute), `None`: the one `cwd` is in.
    pub repo: Option<PathBuf>,
    /// What a task's branch starts from, resolved at submit time.
    pub base: String,
    /// One worktree per task, rather than one for the worker's conversation.
    pub per_task: bool,
    pub commit: agentq_core::worktree::CommitMode,
    pub keep: agentq_core::worktree::Keep,
    /// Refuse a task while the repository has uncommitted changes.
    pub require_clean_base: bool,
    pub branch_prefix: String,
}

impl WorktreeSettings {
    /// What a task asking for a worktree on a worker without settings gets.
    pub fn default_for(per_task: bool) -> WorktreeSettings {
        WorktreeSettings {
            repo: None,
            base: "HEAD".into(),
            per_task,
            commit: agentq_core::worktree::CommitMode::Auto,
            keep: agentq_core::worktree::Keep::UntilMerged,
            require_clean_base: false,
            branch_prefix: "agentq".into(),
        }
    }
}

/// Where a worker's tasks run: on its own long-lived agent, in the pool (a fresh process and
/// conversation each, with the worker's settings), or by class (short on the worker, long in the
/// pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Worker,
    Pool,
    Auto,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Worker => "worker",
            Route::Pool => "pool",
            Route::Auto => "auto",
        }
    }
}

/// The ephemeral pool: isolated runs, at most `max_workers` at once.
#[derive(Clone, Debug)]
pub struct Pool {
    /// The settings of tasks submitted to the pool itself (worker `pool`); a worker's tasks routed
    /// to the pool run with that worker's settings instead.
    pub worker: WorkerConfig,
    pub max_workers: u32,
    /// Whether agentq.toml has a `[pool]` table (a daemon with only a pool is a daemon).
    pub defined: bool,
}

/// What `[class.long]` or `[class.short]` sets, for tasks that do not set their own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassLimits {
    pub timeout: Option<Duration>,
    pub max_memory: Option<u64>,
    pub max_attempts: Option<u32>,
    pub priority: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Classes {
    pub long: ClassLimits,
    pub short: ClassLimits,
}

impl Classes {
    pub fn of(&self, class: agentq_core::classify::Class) -> &ClassLimits {
        match class {
            agentq_core::classify::Class::Long => &self.long,
            agentq_core::classify::Class::Short => &self.short,
        }
    }
}

#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// A prompt file is taken only once it has not changed for this long, so a file still being
    /// written is not read half-way.
    pub settle: Duration,
    /// Scan folders on a timer instead of waiting for file-system events.
    pub poll: bool,
    pub poll_interval: Duration,
    /// With events, a full rescan this often anyway, in case events were dropped.
    pub rescan_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct DaemonSettings {
    /// How long a claim holds without a heartbeat; heartbeats come every third of it.
    pub lease: Duration,
    /// After the first stop signal, how long running tasks may go on before they are stopped and
    /// queued again.
    pub shutdown_grace: Duration,
    /// The most of an agent's stdout kept as the result.
    pub output_cap: u64,
    /// The most of the end of an agent's stderr kept.
    pub stderr_cap: u64,
    /// How often a running agent's memory is sampled (for `max_memory` and its peak).
    pub memory_sample_interval: Duration,
    /// The event log and each task's agent log are rotated past this size...
    pub log_max_size: u64,
    /// ...the event log keeping this many older files (a task's log keeps one).
    pub log_backups: u32,
    /// Per-task agent logs kept per worker; older ones are removed.
    pub task_logs_keep: u32,
    /// This daemon's host id (`[daemon] host`, `run --host`, or the machine's name): which
    /// daemon holds a worker, and what a worker's `host` pins it to.
    pub host: String,
    /// Every host's Claude reads the same session store, so a worker that moves to another host
    /// resumes its conversation there instead of starting a new one.
    pub shared_sessions: bool,
    /// How each attempt's processes are held together (`[daemon] containment`).
    pub containment: Containment,
    /// `[daemon] cgroup`: the cgroup v2 folder to make the attempts' cgroups in.
    pub cgroup: Option<PathBuf>,
    /// No task is claimed while the file system of `.agentq/` or `.output/` has less than this
    /// free (never less than [`crate::space::FLOOR`]); see [`crate::space`].
    pub min_free_space: u64,
}

/// `[daemon] containment`: what keeps an agent's processes from outliving its attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containment {
    /// The strongest this platform has: on Linux a cgroup v2 per attempt where the daemon was
    /// given a cgroup to divide (`cgroup.rs` in agentq-platform says when), else a keeper
    /// process per attempt (a child subreaper: nothing the agent starts gets away, `setsid` and
    /// double forks included); on Windows a Job Object; elsewhere the process group.
    Auto,
    /// A cgroup per attempt, or the daemon does not start (Linux).
    Cgroup,
    /// A keeper per attempt, never a cgroup (Linux).
    Keeper,
    /// The agent's process group (a Job Object on Windows) and nothing more: one process fewer
    /// per attempt, but what leaves the group (`setsid`) lives until the daemon stops.
    Group,
}

impl Containment {
    /// As `[daemon] containment` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::Auto => "auto",
            Containment::Cgroup => "cgroup",
            Containment::Keeper => "keeper",
            Containment::Group => "group",
        }
    }
}

/// Where each attempt's processes are held, as the daemon settled it at start: the mode, and
/// the cgroups it divides, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contained {
    pub mode: Containment,
    pub cgroups: Option<std::sync::Arc<agentq_platform::process::cgroup::Cgroups>>,
    /// Why there are no cgroups, where the mode would have used them.
    pub no_cgroup: Option<String>,
}

impl Contained {
    /// What the settings say, before the daemon has looked for a cgroup (and in tests).
    pub fn without_cgroups(mode: Containment) -> Contained {
        Contained {
            mode,
            cgroups: None,
            no_cgroup: None,
        }
    }

    /// The keeper each attempt runs under, if any (Linux, unless `group`), with the cgroups it
    /// makes each attempt's in.
    pub fn keep(&self, limits: &Limits) -> Option<agentq_platform::process::Keep> {
        use agentq_platform::process::Keep;
        // Windows has no keeper, but its job counts the processes against `max_processes`.
        if cfg!(windows) && limits.max_processes.is_some() {
            return Keep::this_binary(limits.kill_timeout, limits.max_processes).ok();
        }
        if self.mode == Containment::Group || !Keep::AVAILABLE {
            return None;
        }
        Keep::this_binary(limits.kill_timeout, limits.max_processes)
            .ok()
            .map(|k| k.in_cgroups(self.cgroups.clone()))
    }

    /// What `doctor` and the start-up log say is in force, and why.
    pub fn describe(&self) -> String {
        use agentq_platform::process::Keep;
        if cfg!(windows) {
            return "a Job Object per attempt (nothing breaks away)".into();
        }
        if let Some(cgroups) = &self.cgroups {
            return format!(
                "{}, each under a keeper process (the cgroup is the fence: cgroup.kill ends everything in it at once)",
                cgroups.describe()
            );
        }
        let keeper = "a keeper process per attempt (a child subreaper: what leaves the process group stays below it)";
        match (self.mode, Keep::AVAILABLE) {
            (Containment::Group, _) => "the process group of each attempt ([daemon] containment = \"group\": what leaves the group lives until the daemon stops)".into(),
            (_, false) => "the process group of each attempt (no subreaper on this system: what leaves the group lives until the daemon stops)".into(),
            (Containment::Keeper, true) => format!("{keeper} ([daemon] containment = \"keeper\": no cgroup)"),
            (_, true) => match &self.no_cgroup {
                Some(why) => format!("{keeper}; no cgroup: {why}"),
                None => keeper.into(),
            },
        }
    }
}

/// The HTTP API (`[http]`): off unless `listen` is set.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub listen: Option<std::net::SocketAddr>,
    /// Listening on an address other than loopback is allowed only when this says so.
    pub allow_remote: bool,
    /// The largest request body accepted, bytes.
    pub max_body: u64,
    /// How long a client may take to send a request's headers, and keep an idle connection open.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body once its headers are in, and the
    /// longest it may leave an answer (or the event stream) untaken.
    pub request_timeout: Duration,
    /// Connections served at once; as many again are answered 503, the rest closed at once.
    pub max_connections: u32,
    /// Event streams (`/api/events?follow=1`) open at once; more are answered 503.
    pub max_streams: u32,
}

impl HttpSettings {
    /// Parses a listen address, refusing one reachable from other machines unless
    /// `allow_remote`.
    pub fn parse_listen(
        text: &str,
        allow_remote: bool,
    ) -> std::result::Result<std::net::SocketAddr, String> {
        let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
            format!(
                "invalid listen address {text:?}: write an IP address and a port, e.g. \"127.0.0.1:7777\""
            )
        })?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "listen address {addr} is reachable from other machines; use 127.0.0.1 (or ::1), or set [http] allow_remote = true to serve the API beyond this host"
            ));
        }
        Ok(addr)
    }
}

/// The variable that chooses the store over `[store] url`.
pub const DATABASE_URL_ENV: &str = "AGENTQ_DATABASE_URL";

/// Variables of agentq's own environment that no agent inherits: the database's URL holds its
/// password, and would give an agent write access to the queue. (A worker's `env` can still set
/// them on purpose.)
pub const PRIVATE_ENV: &[&str] = &[DATABASE_URL_ENV, "AGENTQ_TEST_DATABASE_URL"];

pub use agentq_store::StoreSettings;

#[derive(Clone, Debug)]
pub struct Config {
    /// The agentq.toml this came from.
    pub path: PathBuf,
    /// The folder holding it: everything relative is relative to this.
    pub root: PathBuf,
    pub default_worker: Option<String>,
    /// What `[defaults]` sets, over agentq's own: the limits of a worker that sets none.
    pub defaults: Limits,
    pub max_prompt_size: u64,
    pub intake: IntakeSettings,
    pub daemon: DaemonSettings,
    /// How tasks are told long from short.
    pub classify: agentq_core::classify::Rules,
    /// Limits by class.
    pub classes: Classes,
    pub pool: Pool,
    pub workers: Vec<WorkerConfig>,
    pub http: HttpSettings,
    pub store: StoreSettings,
    pub retention: RetentionSettings,
}

/// `[retention]`: which finished tasks the daemon removes, with their events, agent logs and
/// output files (`agentq clean` does the same on demand).
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionSettings {
    /// Finished tasks older than this go (`keep_tasks`; default 30 days, `"forever"`: none).
    pub keep_for: Option<Duration>,
    /// Beyond the newest this many finished tasks of a worker (the pool counting as one), they
    /// go too (`keep_per_worker`; default: no such limit).
    pub keep_per_worker: Option<u32>,
    /// How often the daemon looks (default 10 minutes; and a minute after it starts).
    pub interval: Duration,
    /// Tasks removed per transaction (default 500), so that a large backlog never holds the
    /// store for long.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            keep_for: Some(Duration::from_secs(30 * 24 * 3600)),
            keep_per_worker: None,
            interval: Duration::from_secs(600),
            batch: 500,
        }
    }
}

impl RetentionSettings {
    /// Whether the daemon removes anything at all.
    pub fn on(&self) -> bool {
        self.keep_for.is_some() || self.keep_per_worker.is_some()
    }
}

/// `[retention]`, with its defaults.
fn retention_settings(raw: &RawRetention) -> std::result::Result<RetentionSettings, SpanError> {
    let mut settings = RetentionSettings::default();
    if let Some(keep) = &raw.keep_tasks {
        settings.keep_for = match keep.get_ref().trim() {
            "forever" => None,
            text => {
                let d = parse_duration(text).map_err(|e| {
                    (
                        Some(keep.span().into()),
                        format!("[retention] keep_tasks: {e} (a duration such as \"30d\", or \"forever\")"),
                    )
                })?;
                if d < Duration::from_secs(60) {
                    return Err((
                        Some(keep.span().into()),
                        "[retention] keep_tasks must be at least 1m (or \"forever\")".into(),
                    ));
                }
                Some(d)
            }
        };
    }
    if let Some(n) = &raw.keep_per_worker {
        if *n.get_ref() == 0 {
            return Err((
                Some(n.span().into()),
                "[retention] keep_per_worker must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        settings.keep_per_worker = Some(*n.get_ref());
    }
    if let Some(i) = &raw.interval {
        if i.get_ref().0 < Duration::from_secs(1) {
            return Err((
                Some(i.span().into()),
                "[retention] interval must be at least 1s".into(),
            ));
        }
        settings.interval = i.get_ref().0;
    }
    if let Some(b) = &raw.batch {
        if *b.get_ref() == 0 {
            return Err((
                Some(b.span().into()),
                "[retention] batch must be at least 1".into(),
            ));
        }
        settings.batch = *b.get_ref();
    }
    Ok(settings)
}

impl Config {
    /// Finds `agentq.toml` in `start` or the nearest folder above it that has one.
    pub fn discover(start: &Path) -> Result<Config> {
        match Config::find(start) {
            Some(path) => Config::load(&path),
            None => Err(Error::ConfigNotFound {
                start: start.to_path_buf(),
            }),
        }
    }

    /// The `agentq.toml` that [`Config::discover`] would load, without reading it.
    pub fn find(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .map(|d| d.join(CONFIG_FILE))
            .find(|candidate| candidate.is_file())
    }

    /// Loads the config at `path`: with `--config`, or after discovery.
    pub fn load(path: &Path) -> Result<Config> {
        let path = std::path::absolute(path).map_err(|e| Error::io("resolving", path, e))?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        Config::parse(&path, &text)?.with_env(|key| std::env::var(key).ok())
    }

    /// Applies the settings the environment overrides: `AGENTQ_DATABASE_URL` (when set and not
    /// empty) chooses the store over `[store] url`.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        if let Some(text) = env(DATABASE_URL_ENV).filter(|t| !t.trim().is_empty()) {
            let url = agentq_store::url::DatabaseUrl::parse(&text, DATABASE_URL_ENV)
                .map_err(Error::Usage)?;
            self.store = StoreSettings::Postgres(url);
        }
        Ok(self)
    }

    /// Parses the text of a config file that lives at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let at = |(place, message): SpanError| {
            let offset = match place {
                Some(Place::Value(span)) => span.start,
                Some(Place::Key(span)) => line_start(text, span.start),
                None => 0,
            };
            let (line, column) = line_col(text, offset);
            Error::Config {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| at((e.span().map(Place::Value), plain_words(e.message()))))?;
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));

        let base = limits_of!(raw.defaults);
        let max_prompt_size = max_prompt_size(&raw.defaults).map_err(at)?;
        let workers = parse_workers(&raw, &base, &root).map_err(at)?;
        let pool = parse_pool(&raw, &base, &root).map_err(at)?;
        let classes = Classes {
            long: class_limits(raw.class.long.as_ref(), "long").map_err(at)?,
            short: class_limits(raw.class.short.as_ref(), "short").map_err(at)?,
        };
        // Defaults that name no worker are still checked, so a typo there is caught before submit.
        let defaults = resolve_limits(&RawLimits::default(), &base).map_err(at)?;
        let default_worker = default_worker(&raw.defaults, &workers).map_err(at)?;
        let intake = intake_settings(&raw.intake).map_err(at)?;
        let daemon = daemon_settings(&raw.daemon).map_err(at)?;
        let classify = classify_rules(&raw.classify).map_err(at)?;
        let http = http_settings(&raw.http).map_err(at)?;
        let store = store_settings(&raw.store).map_err(at)?;
        let retention = retention_settings(&raw.retention).map_err(at)?;
        Ok(Config {
            defaults,
            retention,
            http,
            store,
            classify,
            pool,
            classes,
            path: path.to_path_buf(),
            root,
            default_worker,
            max_prompt_size,
            intake,
            daemon,
            workers,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir().join(DB_FILE)
    }

    /// Opens the store this config names (see [`agentq_store::open`]).
    pub async fn open_store(
        &self,
        log: Option<std::sync::Arc<agentq_core::logfile::EventLog>>,
    ) -> agentq_core::error::Result<Box<dyn agentq_store::Store>> {
        agentq_store::open(&self.store, &self.state_dir(), &self.db_path(), log).await
    }

    /// The JSON-lines event log.
    pub fn event_log_path(&self) -> PathBuf {
        self.state_dir().join("events.jsonl")
    }

    /// Where a worker's per-task agent logs go.
    pub fn task_log_dir(&self, worker: &str) -> PathBuf {
        self.state_dir().join("logs").join(worker)
    }

    /// Where a task's transcripts are kept: `.agentq/transcripts/<worker or pool>/`.
    pub fn transcript_dir(&self, folder: &str) -> PathBuf {
        self.state_dir()
            .join(agentq_core::transcript::DIR)
            .join(folder)
    }

    /// A task's transcript, `.agentq/transcripts/<worker or pool>/task_<id>.jsonl`.
    pub fn transcript_path(&self, folder: &str, task: i64) -> PathBuf {
        agentq_core::transcript::path(&self.state_dir(), folder, task)
    }

    pub fn queue_dir(&self, worker: &str) -> PathBuf {
        self.root.join(".queue").join(worker)
    }

    /// Where every worker's result folder is.
    pub fn output_root(&self) -> PathBuf {
        self.root.join(OUTPUT_DIR)
    }

    pub fn output_dir(&self, worker: &str) -> PathBuf {
        self.output_root().join(worker)
    }

    pub fn worker(&self, name: &str) -> Option<&WorkerConfig> {
        self.workers.iter().find(|w| w.name == name)
    }

    /// The settings a task of `name` runs with: a worker's, or the pool's for `pool`.
    pub fn settings_of(&self, name: &str) -> Option<&WorkerConfig> {
        if name == POOL {
            Some(&self.pool.worker)
        } else {
            self.worker(name)
        }
    }

    /// A worker named on the command line, or `pool` for the pool's own tasks.
    pub fn resolve_queue(&self, name: &str) -> Result<&WorkerConfig> {
        match self.settings_of(name) {
            Some(w) => Ok(w),
            None => self.resolve_worker(Some(name)),
        }
    }

    /// Every name tasks can be queued under: the workers, then the pool.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.workers
            .iter()
            .map(|w| w.name.as_str())
            .chain(std::iter::once(POOL))
    }

    /// The worker a task goes to when `--worker` is not given: `[defaults] worker`, or the only one.
    pub fn resolve_worker(&self, asked: Option<&str>) -> Result<&WorkerConfig> {
        let names = || {
            self.workers
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match asked.or(self.default_worker.as_deref()) {
            Some(name) => self.worker(name).ok_or_else(|| {
                Error::Usage(format!(
                    "no worker named {name:?} in {} (workers: {})",
                    self.path.display(),
                    names()
                ))
            }),
            None => match self.workers.as_slice() {
                [only] => Ok(only),
                [] if self.pool.defined => Err(Error::Usage(format!(
                    "{} defines no [[worker]]: submit to the pool with --pool, or add a worker",
                    self.path.display()
                ))),
                [] => Err(Error::Usage(format!(
                    "{} defines no [[worker]]; add one (see `agentq init`)",
                    self.path.display()
                ))),
                _ => Err(Error::Usage(format!(
                    "several workers ({}): pick one with --worker, or set [defaults] worker",
                    names()
                ))),
            },
        }
    }
}

/// A mistake found after parsing: where it is, and what.
type SpanError = (Option<Place>, String);

/// Where in the file a mistake is, from the spans the parser kept: at a value, or, for a rule
/// about a setting as a whole ("idle_timeout must be above 0"), at the start of the line that
/// sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    Value(Range<usize>),
    Key(Range<usize>),
}

impl From<Range<usize>> for Place {
    fn from(span: Range<usize>) -> Place {
        Place::Value(span)
    }
}

/// Where the setting of `value` is: the line that sets it.
fn key_of<T>(value: &Spanned<T>) -> Option<Place> {
    Some(Place::Key(value.span()))
}

/// `[defaults] max_prompt_size`, 10 MiB when unset: a cap of 0 would refuse every prompt.
fn max_prompt_size(defaults: &RawDefaults) -> std::result::Result<u64, SpanError> {
    match &defaults.max_prompt_size {
        Some(s) if s.get_ref().0 == 0 => Err((
            key_of(s),
            "[defaults] max_prompt_size must be above 0".into(),
        )),
        Some(s) => Ok(s.get_ref().0),
        None => Ok(10 << 20),
    }
}

/// Every `[[worker]]`, in the file's order, each with its name checked against the others'.
fn parse_workers(
    raw: &RawFile,
    base: &RawLimits,
    root: &Path,
) -> std::result::Result<Vec<WorkerConfig>, SpanError> {
    let default_route = match &raw.defaults.route {
        Some(r) => parse_route(r)?,
        None => Route::Worker,
    };
    let mut workers: Vec<WorkerConfig> = Vec::new();
    for spanned in &raw.workers {
        let w = spanned.get_ref();
        let Some(name) = &w.name else {
            return Err((
                Some(spanned.span().into()),
                "a [[worker]] needs a name, e.g. name = \"main\"".into(),
            ));
        };
        validate_name(name.get_ref()).map_err(|m| (Some(name.span().into()), m))?;
        if workers.iter().any(|o| &o.name == name.get_ref()) {
            return Err((
                Some(name.span().into()),
                format!(
                    "worker {:?} is defined twice; worker names must be unique",
                    name.get_ref()
                ),
            ));
        }
        if let Some(m) = &w.max_workers {
            return Err((
                Some(m.span().into()),
                "max_workers is a [pool] setting; a worker runs one task at a time".into(),
            ));
        }
        let route = match &w.route {
            Some(r) => parse_route(r)?,
            None => default_route,
        };
        let host = match &w.host {
            Some(h) => Some(
                validate_host(h.get_ref())
                    .map(|()| h.get_ref().clone())
                    .map_err(|m| (Some(h.span().into()), m))?,
            ),
            None => None,
        };
        let worker = build_worker(
            w,
            name.get_ref().clone(),
            spanned.span(),
            &raw.defaults,
            base,
            root,
        )
        .map_err(|(place, message)| {
            // Said of the worker where the mistake is in its table; one it inherits from
            // [defaults] is said where that is written.
            let inside = match &place {
                Some(Place::Value(at) | Place::Key(at)) => !base.holds(at.start),
                None => true,
            };
            let message = if inside {
                of_worker(name.get_ref(), message)
            } else {
                message
            };
            (place, message)
        })?;
        workers.push(WorkerConfig {
            route,
            host,
            ..worker
        });
    }
    Ok(workers)
}

/// An error about a worker's setting, saying which worker (unless it already does).
fn of_worker(name: &str, message: String) -> String {
    let named = format!("worker {name:?}");
    if message.contains(&named) {
        message
    } else {
        format!("{named}: {message}")
    }
}

/// `[pool]`, or the pool with its defaults when the file has none (a worker's tasks may still
/// be routed there), with the pool's own limits under `[defaults]`.
fn parse_pool(
    raw: &RawFile,
    base: &RawLimits,
    root: &Path,
) -> std::result::Result<Pool, SpanError> {
    let Some(spanned) = &raw.pool else {
        return Ok(Pool {
            worker: build_worker(
                &RawWorker::default(),
                POOL.into(),
                0..0,
                &raw.defaults,
                &pool_base(base),
                root,
            )?,
            max_workers: 4,
            defined: false,
        });
    };
    let p = spanned.get_ref();
    refuse_worker_only_keys(p)?;
    let max_workers = p.max_workers.as_ref().map_or(4, |m| *m.get_ref());
    if max_workers == 0 {
        return Err((
            p.max_workers.as_ref().map(|m| m.span().into()),
            "[pool] max_workers must be at least 1".into(),
        ));
    }
    Ok(Pool {
        worker: build_worker(
            p,
            POOL.into(),
            spanned.span(),
            &raw.defaults,
            &pool_base(base),
            root,
        )?,
        max_workers,
        defined: true,
    })
}

/// Refuses in `[pool]` the settings of a named worker and of a long-lived agent, which the pool,
/// a fresh process and conversation per task, has not.
fn refuse_worker_only_keys(p: &RawWorker) -> std::result::Result<(), SpanError> {
    if let Some((key, span)) = set_in(p, NAMED_ONLY) {
        return Err((
            Some(span.into()),
            format!("[pool] has no {key}: it is the pool, and runs every task it is given"),
        ));
    }
    if let Some(mode) = p.mode.as_ref().filter(|m| m.get_ref() == "persistent") {
        return Err((
            Some(mode.span().into()),
            "[pool] runs every task in a fresh process: mode = \"persistent\" does not apply (leave mode out)".into(),
        ));
    }
    if let Some((key, span)) = set_in(p, LONG_LIVED_ONLY) {
        return Err((
            Some(Place::Key(span)),
            format!(
                "[pool] {key} does not apply: every pool task runs in a fresh process and conversation of its own"
            ),
        ));
    }
    Ok(())
}

/// Where a `[[worker]]` or `[pool]` table sets a key, if it does.
type KeySpan = fn(&RawWorker) -> Option<Range<usize>>;

/// The keys of a named worker, which `[pool]` has not: it is the pool.
const NAMED_ONLY: &[(&str, KeySpan)] = &[
    ("name", |w| w.name.as_ref().map(Spanned::span)),
    ("route", |w| w.route.as_ref().map(Spanned::span)),
    ("host", |w| w.host.as_ref().map(Spanned::span)),
];

/// The keys of a long-lived process or a kept conversation, which `[pool]` has not: each of its
/// tasks runs in a fresh process and conversation of its own.
const LONG_LIVED_ONLY: &[(&str, KeySpan)] = &[
    ("session", |w| w.session.as_ref().map(Spanned::span)),
    ("rotate_after_tasks", |w| {
        w.rotate_after_tasks.as_ref().map(Spanned::span)
    }),
    ("rotate_after_tokens", |w| {
        w.rotate_after_tokens.as_ref().map(Spanned::span)
    }),
    ("recycle_after_tasks", |w| {
        w.recycle_after_tasks.as_ref().map(Spanned::span)
    }),
    ("autorestart", |w| w.autorestart.as_ref().map(Spanned::span)),
    ("max_restarts", |w| {
        w.max_restarts.as_ref().map(Spanned::span)
    }),
    ("min_uptime", |w| w.min_uptime.as_ref().map(Spanned::span)),
    ("restart_delay", |w| {
        w.restart_delay.as_ref().map(Spanned::span)
    }),
];

/// The first of `keys` that `table` sets, with where.
fn set_in(
    table: &RawWorker,
    keys: &[(&'static str, KeySpan)],
) -> Option<(&'static str, Range<usize>)> {
    keys.iter()
        .find_map(|(key, span)| span(table).map(|s| (*key, s)))
}

/// `[defaults] worker`, which must name a `[[worker]]` of the file.
fn default_worker(
    defaults: &RawDefaults,
    workers: &[WorkerConfig],
) -> std::result::Result<Option<String>, SpanError> {
    match &defaults.worker {
        Some(w) if !workers.iter().any(|x| &x.name == w.get_ref()) => Err((
            Some(w.span().into()),
            format!(
                "[defaults] worker = {:?} names no [[worker]] in this file",
                w.get_ref()
            ),
        )),
        Some(w) => Ok(Some(w.get_ref().clone())),
        None => Ok(None),
    }
}

/// `[intake]`, with its defaults.
fn intake_settings(raw: &RawIntake) -> std::result::Result<IntakeSettings, SpanError> {
    // Scan periods of zero would make intake scan in a busy loop.
    for (key, value, floor) in [
        (
            "[intake] poll_interval",
            &raw.poll_interval,
            Duration::from_millis(10),
        ),
        (
            "[intake] rescan_interval",
            &raw.rescan_interval,
            Duration::from_millis(100),
        ),
    ] {
        if let Some(value) = value.as_ref().filter(|v| v.get_ref().0 < floor) {
            return Err((
                key_of(value),
                format!(
                    "{key} must be at least {}",
                    humantime::format_duration(floor)
                ),
            ));
        }
    }
    Ok(IntakeSettings {
        settle: dur_or(&raw.settle, Duration::from_millis(200)),
        poll: raw.poll.unwrap_or(false),
        poll_interval: dur_or(&raw.poll_interval, Duration::from_secs(1)),
        rescan_interval: dur_or(&raw.rescan_interval, Duration::from_secs(30)),
    })
}

/// `[daemon]`, with its defaults; the host id is the machine's name unless the file gives one.
fn daemon_settings(raw: &RawDaemon) -> std::result::Result<DaemonSettings, SpanError> {
    let host = match &raw.host {
        Some(h) => {
            validate_host(h.get_ref()).map_err(|m| (Some(h.span().into()), m))?;
            h.get_ref().clone()
        }
        None => machine_host(),
    };
    if let Some(lease) = raw
        .lease
        .as_ref()
        .filter(|d| d.get_ref().0 < Duration::from_millis(300))
    {
        return Err((
            key_of(lease),
            "[daemon] lease must be at least 300ms".into(),
        ));
    }
    if let Some(interval) = raw
        .memory_sample_interval
        .as_ref()
        .filter(|d| d.get_ref().0 < Duration::from_millis(50))
    {
        return Err((
            key_of(interval),
            "[daemon] memory_sample_interval must be at least 50ms".into(),
        ));
    }
    if let Some(size) = raw.log_max_size.as_ref().filter(|s| s.get_ref().0 < 4096) {
        return Err((
            key_of(size),
            "[daemon] log_max_size must be at least 4KiB".into(),
        ));
    }
    Ok(DaemonSettings {
        lease: dur_or(&raw.lease, Duration::from_secs(30)),
        shutdown_grace: dur_or(&raw.shutdown_grace, Duration::from_secs(30)),
        output_cap: size_or(&raw.output_cap, 16 << 20),
        stderr_cap: size_or(&raw.stderr_cap, 64 << 10),
        memory_sample_interval: dur_or(&raw.memory_sample_interval, Duration::from_secs(1)),
        log_max_size: size_or(&raw.log_max_size, 10 << 20),
        log_backups: raw.log_backups.unwrap_or(5),
        task_logs_keep: raw.task_logs_keep.unwrap_or(200),
        host,
        shared_sessions: raw.shared_sessions.unwrap_or(false),
        min_free_space: size_or(&raw.min_free_space, DEFAULT_MIN_FREE_SPACE),
        containment: match &raw.containment {
            None => Containment::Auto,
            Some(c) => match c.get_ref().as_str() {
                "auto" => Containment::Auto,
                "cgroup" => Containment::Cgroup,
                "keeper" => Containment::Keeper,
                "group" => Containment::Group,
                other => {
                    return Err((
                        Some(c.span().into()),
                        format!(
                            "[daemon] containment must be \"auto\", \"cgroup\", \"keeper\" or \"group\", not {other:?}"
                        ),
                    ));
                }
            },
        },
        cgroup: match &raw.cgroup {
            None => None,
            Some(c) if Path::new(c.get_ref()).is_absolute() => Some(PathBuf::from(c.get_ref())),
            Some(c) => {
                return Err((
                    Some(c.span().into()),
                    format!(
                        "[daemon] cgroup must be an absolute path under the cgroup v2 mount (e.g. \"/sys/fs/cgroup/agentq\"), not {:?}",
                        c.get_ref()
                    ),
                ));
            }
        },
    })
}

/// `[http]`, with its defaults.
fn http_settings(raw: &RawHttp) -> std::result::Result<HttpSettings, SpanError> {
    let allow_remote = raw.allow_remote.unwrap_or(false);
    Ok(HttpSettings {
        listen: match &raw.listen {
            Some(l) => Some(
                HttpSettings::parse_listen(l.get_ref(), allow_remote)
                    .map_err(|m| (Some(l.span().into()), format!("[http] {m}")))?,
            ),
            None => None,
        },
        allow_remote,
        max_body: match &raw.max_body {
            Some(s) if s.get_ref().0 == 0 => {
                return Err((
                    Some(s.span().into()),
                    "[http] max_body must be above 0".into(),
                ));
            }
            Some(s) => s.get_ref().0,
            None => 1 << 20,
        },
        header_timeout: http_timeout(&raw.header_timeout, "header_timeout", 10)?,
        request_timeout: http_timeout(&raw.request_timeout, "request_timeout", 30)?,
        max_connections: http_limit(&raw.max_connections, "max_connections", 256)?,
        max_streams: http_limit(&raw.max_streams, "max_streams", 64)?,
    })
}

/// `[store]`: PostgreSQL at `url`, or the SQLite file in the state folder.
fn store_settings(raw: &RawStore) -> std::result::Result<StoreSettings, SpanError> {
    Ok(match &raw.url {
        Some(url) => StoreSettings::Postgres(
            agentq_store::url::DatabaseUrl::parse(url.get_ref(), "[store] url")
                .map_err(|m| (Some(url.span().into()), m))?,
        ),
        None => StoreSettings::Sqlite,
    })
}

/// An `[http]` timeout, `default_secs` when unset. Under 100ms no real client keeps up.
fn http_timeout(
    value: &Option<Spanned<Dur>>,
    key: &str,
    default_secs: u64,
) -> std::result::Result<Duration, SpanError> {
    match value {
        Some(d) if d.get_ref().0 < Duration::from_millis(100) => Err((
            Some(d.span().into()),
            format!("[http] {key} must be at least 100ms"),
        )),
        Some(d) => Ok(d.get_ref().0),
        None => Ok(Duration::from_secs(default_secs)),
    }
}

/// An `[http]` count of things served at once, `default` when unset.
fn http_limit(
    value: &Option<Spanned<u32>>,
    key: &str,
    default: u32,
) -> std::result::Result<u32, SpanError> {
    match value {
        Some(n) if *n.get_ref() == 0 => Err((
            Some(n.span().into()),
            format!("[http] {key} must be at least 1"),
        )),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(default),
    }
}

/// A `[[worker]]` table, or `[pool]`, as settings: agent, folder, environment and limits.
fn build_worker(
    w: &RawWorker,
    name: String,
    table_span: std::ops::Range<usize>,
    defaults: &RawDefaults,
    base: &RawLimits,
    root: &Path,
) -> std::result::Result<WorkerConfig, SpanError> {
    let table = if name == POOL {
        "[pool]".to_string()
    } else {
        format!("worker {name:?}")
    };
    let agent = build_agent(w, &table, table_span, defaults, root)?;
    let cwd = w.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    let cwd = if cwd.is_absolute() {
        cwd
    } else {
        root.join(cwd)
    };
    let worktree = build_worktree(w, name == POOL, root)?;
    Ok(WorkerConfig {
        name,
        agent,
        cwd,
        env: w.env.clone(),
        limits: resolve_limits(&limits_of!(w), base)?,
        route: Route::Worker,
        host: None,
        worktree,
    })
}

/// The worktree settings of a `[[worker]]` or `[pool]`: `None` unless `isolation = "worktree"`;
/// the other keys without it are refused, as they would do nothing.
fn build_worktree(
    w: &RawWorker,
    pool: bool,
    root: &Path,
) -> std::result::Result<Option<WorktreeSettings>, SpanError> {
    use agentq_core::worktree::{CommitMode, Isolation, Keep};
    let isolation = match &w.isolation {
        Some(i) => Isolation::parse(i.get_ref()).map_err(|m| (Some(i.span().into()), m))?,
        None => Isolation::None,
    };
    let spans = [
        ("repo", w.repo.as_ref().map(|s| s.span())),
        ("base", w.base.as_ref().map(|s| s.span())),
        ("worktree", w.worktree.as_ref().map(|s| s.span())),
        ("commit", w.commit.as_ref().map(|s| s.span())),
        ("keep", w.keep.as_ref().map(|s| s.span())),
        ("branch_prefix", w.branch_prefix.as_ref().map(|s| s.span())),
    ];
    if isolation == Isolation::None {
        if let Some((key, span)) = spans.iter().find(|(_, s)| s.is_some()) {
            return Err((
                span.clone().map(Into::into),
                format!("{key} applies only with isolation = \"worktree\""),
            ));
        }
        return Ok(None);
    }
    let mut settings = WorktreeSettings::default_for(pool);
    if let Some(repo) = &w.repo {
        let path = repo.get_ref();
        settings.repo = Some(if path.is_absolute() {
            path.clone()
        } else {
            root.join(path)
        });
    }
    if let Some(base) = &w.base {
        if base.get_ref().trim().is_empty() {
            return Err((
                Some(base.span().into()),
                "base must name a commit or branch".into(),
            ));
        }
        settings.base = base.get_ref().clone();
    }
    if let Some(sharing) = &w.worktree {
        settings.per_task = match sharing.get_ref().as_str() {
            "per-task" => true,
            "shared" if pool => {
                return Err((
                    Some(sharing.span().into()),
                    "worktree = \"shared\" is for a [[worker]]: every pool task has its own".into(),
                ));
            }
            "shared" => false,
            other => {
                return Err((
                    Some(sharing.span().into()),
                    format!("unknown worktree {other:?}: expected \"shared\" or \"per-task\""),
                ));
            }
        };
    }
    if let Some(commit) = &w.commit {
        settings.commit =
            CommitMode::parse(commit.get_ref()).map_err(|m| (Some(commit.span().into()), m))?;
    }
    if let Some(keep) = &w.keep {
        settings.keep = Keep::parse(keep.get_ref()).map_err(|m| (Some(keep.span().into()), m))?;
    }
    settings.require_clean_base = w.require_clean_base.unwrap_or(false);
    if let Some(prefix) = &w.branch_prefix {
        let p = prefix.get_ref().trim_matches('/');
        if p.is_empty() || p.contains("..") || p.contains(char::is_whitespace) {
            return Err((
                Some(prefix.span().into()),
                format!(
                    "branch_prefix {:?} cannot start a git branch name",
                    prefix.get_ref()
                ),
            ));
        }
        settings.branch_prefix = p.to_string();
    }
    Ok(Some(settings))
}

/// The agent of a `[[worker]]` table or `[pool]` (`table` names it in errors), with the settings
/// its driver takes; a key that only another agent takes is refused.
fn build_agent(
    w: &RawWorker,
    table: &str,
    table_span: std::ops::Range<usize>,
    defaults: &RawDefaults,
    root: &Path,
) -> std::result::Result<Agent, SpanError> {
    // A worker that names a command but no agent means that command; with neither it is a
    // Claude Code worker, the default agent.
    let agent_kind = match (&w.agent, &w.command) {
        (Some(a), _) => a.get_ref().as_str(),
        (None, Some(_)) => "command",
        (None, None) => "claude",
    };
    if !AGENTS.contains(&agent_kind) {
        return Err((
            w.agent.as_ref().map(|a| a.span().into()),
            format!(
                "unknown agent {agent_kind:?}: expected one of {}",
                AGENTS.map(|a| format!("\"{a}\"")).join(", ")
            ),
        ));
    }
    if let Some((key, takers)) = w.foreign_key(agent_kind) {
        return Err((
            Some(table_span.clone().into()),
            format!(
                "{table} has agent = \"{agent_kind}\" but sets {key}, which only {} has",
                agents_in_words(takers)
            ),
        ));
    }
    let relative = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            root.join(p)
        }
    };
    // A bare name ("claude-beta") is looked up on PATH; a path is relative to the config's folder.
    let bin = |own: &Option<PathBuf>, default: &Option<PathBuf>| {
        own.as_ref().or(default.as_ref()).map(|b| {
            if b.components().count() > 1 {
                relative(b)
            } else {
                b.clone()
            }
        })
    };
    Ok(match agent_kind {
        "command" => {
            let argv = w
                .command
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_default();
            if argv.is_empty() || argv[0].trim().is_empty() {
                let span = w
                    .command
                    .as_ref()
                    .map(|c| c.span())
                    .unwrap_or(table_span.clone());
                return Err((
                    Some(span.into()),
                    format!(
                        "{table} has agent = \"command\" but no command: write e.g. command = [\"python3\", \"agent.py\"]"
                    ),
                ));
            }
            Agent::Command(agentq_agents::command::Settings { argv })
        }
        "claude" => Agent::Claude(Box::new(claude_settings(
            w,
            bin(&w.claude_bin, &defaults.claude_bin),
            root,
        )?)),
        "codex" if let Some(flag) = codex_exec_only_flag(w.extra_args.as_deref()) => {
            return Err((
                Some(table_span.clone().into()),
                format!(
                    "{table} has {flag} in extra_args, which `codex exec resume` refuses (every task after a worker's first resumes its thread): {}",
                    match flag {
                        "--sandbox" | "-s" => "use sandbox = \"...\" instead",
                        _ => "the worker's cwd is the folder codex runs in",
                    }
                ),
            ));
        }
        "codex" => Agent::Codex(Box::new(agentq_agents::codex::Settings {
            bin: bin(&w.codex_bin, &defaults.codex_bin),
            model: w.model.clone(),
            sandbox: one_of(&w.sandbox, "sandbox", &agentq_agents::codex::SANDBOXES)?,
            skip_git_repo_check: w.skip_git_repo_check.unwrap_or(false),
            session: session_policy(w)?,
            extra_args: w.extra_args.clone().unwrap_or_default(),
        })),
        _ => Agent::Gemini(Box::new(agentq_agents::gemini::Settings {
            bin: bin(&w.gemini_bin, &defaults.gemini_bin),
            model: w.model.clone(),
            approval_mode: one_of(
                &w.approval_mode,
                "approval_mode",
                &agentq_agents::gemini::APPROVAL_MODES,
            )?,
            trust_workspace: w.trust_workspace.unwrap_or(false),
            session: session_policy(w)?,
            extra_args: w.extra_args.clone().unwrap_or_default(),
        })),
    })
}

/// `[defaults]` for the pool: the seed's pool ran each task for at most 10 minutes in 4 GiB.
fn pool_base(base: &RawLimits) -> RawLimits {
    RawLimits {
        timeout: (base.timeout.clone()).or(Some(Spanned::new(0..0, Dur(Duration::from_secs(600))))),
        max_memory: (base.max_memory.clone()).or(Some(Spanned::new(0..0, Size(4 << 30)))),
        ..base.clone()
    }
}

fn parse_route(raw: &Spanned<String>) -> std::result::Result<Route, SpanError> {
    match raw.get_ref().as_str() {
        "worker" => Ok(Route::Worker),
        "pool" => Ok(Route::Pool),
        "auto" => Ok(Route::Auto),
        other => Err((
            Some(raw.span().into()),
            format!(
                "unknown route {other:?}: expected \"worker\" (its own agent), \"pool\" (a fresh process per task) or \"auto\" (short tasks on the worker, long ones in the pool)"
            ),
        )),
    }
}

/// `[class.long]` or `[class.short]`, checked.
fn class_limits(
    raw: Option<&RawClassLimits>,
    class: &str,
) -> std::result::Result<ClassLimits, SpanError> {
    let Some(raw) = raw else {
        return Ok(ClassLimits::default());
    };
    if let Some(a) = raw.max_attempts.as_ref().filter(|a| *a.get_ref() == 0) {
        return Err((
            Some(a.span().into()),
            format!("[class.{class}] max_attempts must be at least 1"),
        ));
    }
    if let Some(t) = raw.timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
        return Err((
            key_of(t),
            format!("[class.{class}] timeout must be above 0"),
        ));
    }
    if let Some(m) = raw.max_memory.as_ref().filter(|m| m.get_ref().0 == 0) {
        return Err((
            key_of(m),
            format!("[class.{class}] max_memory must be above 0"),
        ));
    }
    Ok(ClassLimits {
        timeout: raw.timeout.as_ref().map(|t| t.get_ref().0),
        max_memory: raw.max_memory.as_ref().map(|m| m.get_ref().0),
        max_attempts: raw.max_attempts.as_ref().map(|a| *a.get_ref()),
        priority: raw.priority,
    })
}

/// A flag in a Codex worker's `extra_args` that `codex exec` takes but `codex exec resume`
/// refuses (checked against the pinned version).
fn codex_exec_only_flag(extra_args: Option<&[String]>) -> Option<&'static str> {
    const EXEC_ONLY: [&str; 4] = ["--sandbox", "-s", "--cd", "-C"];
    extra_args?.iter().find_map(|a| {
        let flag = a.split('=').next().unwrap_or(a);
        EXEC_ONLY.iter().copied().find(|f| *f == flag)
    })
}

/// A setting that must be one of a few words.
fn one_of(
    raw: &Option<Spanned<String>>,
    key: &str,
    words: &[&str],
) -> std::result::Result<Option<String>, SpanError> {
    match raw {
        None => Ok(None),
        Some(v) if words.contains(&v.get_ref().as_str()) => Ok(Some(v.get_ref().clone())),
        Some(v) => Err((
            Some(v.span().into()),
            format!(
                "unknown {key} {:?}: expected {}",
                v.get_ref(),
                words
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `session` (with `rotate_after_*`): which conversation a task joins.
fn session_policy(w: &RawWorker) -> std::result::Result<agentq_agents::SessionPolicy, SpanError> {
    use agentq_agents::SessionPolicy;
    Ok(
        match w.session.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("resume", _)) => SessionPolicy::Resume,
            Some(("fresh", _)) => SessionPolicy::Fresh,
            Some(("rotate", span)) => {
                if w.rotate_after_tasks.is_none() && w.rotate_after_tokens.is_none() {
                    return Err((
                        Some(span.into()),
                        "session = \"rotate\" needs rotate_after_tasks or rotate_after_tokens"
                            .into(),
                    ));
                }
                SessionPolicy::Rotate {
                    after_tasks: w.rotate_after_tasks.as_ref().map(|n| *n.get_ref()),
                    after_tokens: w.rotate_after_tokens.as_ref().map(|n| *n.get_ref()),
                }
            }
            Some((other, span)) => {
                return Err((
                    Some(span.into()),
                    format!(
                        "unknown session {other:?}: expected \"resume\", \"fresh\" or \"rotate\""
                    ),
                ));
            }
        },
    )
}

fn claude_settings(
    w: &RawWorker,
    bin: Option<PathBuf>,
    root: &Path,
) -> std::result::Result<agentq_agents::claude::Settings, SpanError> {
    use agentq_agents::claude::{Mode, Settings};
    let mode = match w.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("exec", _)) => Mode::Exec,
        Some(("persistent", _)) => Mode::Persistent,
        Some((other, span)) => {
            return Err((
                Some(span.into()),
                format!("unknown mode {other:?}: expected \"exec\" or \"persistent\""),
            ));
        }
    };
    let session = session_policy(w)?;
    let relative = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            root.join(p)
        }
    };
    Ok(Settings {
        bin,
        mode,
        model: w.model.clone(),
        permission_mode: w.permission_mode.clone(),
        allowed_tools: w.allowed_tools.clone().unwrap_or_default(),
        disallowed_tools: w.disallowed_tools.clone().unwrap_or_default(),
        append_system_prompt: w.append_system_prompt.clone(),
        max_turns: w.max_turns,
        max_budget_usd: w.max_budget_usd,
        add_dirs: w.add_dirs.iter().flatten().map(relative).collect(),
        extra_args: w.extra_args.clone().unwrap_or_default(),
        skip_permissions: w.dangerously_skip_permissions.unwrap_or(false),
        session,
        budget_usd_per_day: w.budget_usd_per_day,
        recycle_after_tasks: w.recycle_after_tasks.as_ref().map(|n| *n.get_ref()),
    })
}

fn resolve_limits(own: &RawLimits, base: &RawLimits) -> std::result::Result<Limits, SpanError> {
    // Each setting is the worker's own, else [defaults]'s, with the span of the one that counts.
    fn pick<'a, T>(
        own: &'a Option<Spanned<T>>,
        base: &'a Option<Spanned<T>>,
    ) -> Option<&'a Spanned<T>> {
        own.as_ref().or(base.as_ref())
    }
    let dur =
        |own, base, default| pick(own, base).map_or(default, |d: &Spanned<Dur>| d.get_ref().0);
    let attempts = pick(&own.max_attempts, &base.max_attempts);
    if let Some(a) = attempts.filter(|a| *a.get_ref() == 0) {
        return Err((
            Some(a.span().into()),
            "max_attempts must be at least 1".into(),
        ));
    }
    if let Some(m) = pick(&own.max_processes, &base.max_processes).filter(|m| *m.get_ref() < 2) {
        return Err((
            Some(m.span().into()),
            "max_processes must be at least 2 (the agent and one process it starts)".into(),
        ));
    }
    for (key, value) in [
        ("timeout", pick(&own.timeout, &base.timeout)),
        ("idle_timeout", pick(&own.idle_timeout, &base.idle_timeout)),
        (
            "memory_report_interval",
            pick(&own.memory_report_interval, &base.memory_report_interval),
        ),
    ] {
        if let Some(v) = value.filter(|v| v.get_ref().0.is_zero()) {
            return Err((key_of(v), format!("{key} must be above 0")));
        }
    }
    let max_memory = pick(&own.max_memory, &base.max_memory);
    if let Some(m) = max_memory.filter(|m| m.get_ref().0 == 0) {
        return Err((key_of(m), "max_memory must be above 0".into()));
    }
    Ok(Limits {
        timeout: dur(&own.timeout, &base.timeout, Duration::from_secs(600)),
        max_attempts: attempts.map_or(3, |a| *a.get_ref()),
        backoff: dur(&own.backoff, &base.backoff, Duration::from_secs(5)),
        max_backoff: dur(
            &own.max_backoff,
            &base.max_backoff,
            Duration::from_secs(600),
        ),
        kill_timeout: dur(
            &own.kill_timeout,
            &base.kill_timeout,
            Duration::from_secs(5),
        ),
        idle_timeout: pick(&own.idle_timeout, &base.idle_timeout).map(|d| d.get_ref().0),
        linger_timeout: dur(
            &own.linger_timeout,
            &base.linger_timeout,
            Duration::from_secs(10),
        ),
        max_memory: max_memory.map(|m| m.get_ref().0),
        max_processes: pick(&own.max_processes, &base.max_processes).map(|m| *m.get_ref()),
        memory_report_interval: dur(
            &own.memory_report_interval,
            &base.memory_report_interval,
            Duration::from_secs(10),
        ),
        restart: RestartPolicy {
            autorestart: pick(&own.autorestart, &base.autorestart).is_none_or(|a| *a.get_ref()),
            max_restarts: pick(&own.max_restarts, &base.max_restarts).map_or(10, |m| *m.get_ref()),
            min_uptime: dur(&own.min_uptime, &base.min_uptime, Duration::from_secs(10)),
            restart_delay: dur(
                &own.restart_delay,
                &base.restart_delay,
                Duration::from_secs(1),
            ),
        },
    })
}

/// A duration setting, or its default.
fn dur_or(value: &Option<Spanned<Dur>>, default: Duration) -> Duration {
    value.as_ref().map_or(default, |d| d.get_ref().0)
}

/// A size setting, or its default.
fn size_or(value: &Option<Spanned<Size>>, default: u64) -> u64 {
    value.as_ref().map_or(default, |s| s.get_ref().0)
}

/// `[classify]` over the seed's defaults: thresholds in order within 0..1, keywords non-empty.
fn classify_rules(
    raw: &RawClassify,
) -> std::result::Result<agentq_core::classify::Rules, SpanError> {
    let mut rules = agentq_core::classify::Rules::default();
    for (list, into) in [
        (&raw.long_keywords, &mut rules.long_keywords),
        (&raw.short_keywords, &mut rules.short_keywords),
    ] {
        if let Some(list) = list {
            if list.get_ref().iter().any(|k| k.trim().is_empty()) {
                return Err((
                    Some(list.span().into()),
                    "[classify] keywords cannot be empty strings".into(),
                ));
            }
            *into = list
                .get_ref()
                .iter()
                .map(|k| k.trim().to_lowercase())
                .collect();
        }
    }
    for (value, into) in [
        (&raw.high, &mut rules.high),
        (&raw.medium, &mut rules.medium),
        (&raw.low, &mut rules.low),
    ] {
        if let Some(v) = value {
            *into = *v.get_ref();
        }
    }
    let in_order = 0.0 <= rules.low
        && rules.low <= rules.medium
        && rules.medium <= rules.high
        && rules.high <= 1.0;
    if !in_order {
        let span = [&raw.low, &raw.medium, &raw.high]
            .into_iter()
            .flatten()
            .next()
            .map(|v| v.span().into());
        return Err((
            span,
            format!(
                "[classify] thresholds must be 0 <= low <= medium <= high <= 1; they are low = {}, medium = {}, high = {}",
                rules.low, rules.medium, rules.high
            ),
        ));
    }
    Ok(rules)
}

/// Worker names become folder names and URL segments, so they are kept to a safe alphabet.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('-') {
        return Err(format!(
            "invalid worker name {name:?}: use 1 to 64 letters, digits, '-' or '_' (not starting with '-')"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("worker name {name:?} is reserved; pick another"));
    }
    Ok(())
}

/// Checks a host id (`[daemon] host`, `run --host`, a worker's `host`): it begins every claim
/// owner's id (`host:pid:nonce`), so it must not hold a `:`, and it is shown in columns.
pub fn validate_host(host: &str) -> std::result::Result<(), String> {
    let ok_chars = host
        .chars()
        .all(|c| !c.is_whitespace() && !c.is_control() && c != ':');
    if host.is_empty() || host.len() > 255 || !ok_chars {
        return Err(format!(
            "invalid host id {host:?}: use 1 to 255 printable characters, without spaces or ':'"
        ));
    }
    Ok(())
}

/// The machine's name, the host id of a daemon that sets none (`localhost` when the name cannot
/// be read or is no valid host id).
pub fn machine_host() -> String {
    agentq_platform::host::hostname()
        .filter(|h| validate_host(h).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

/// serde names Rust types in its messages ("expected u32"); people read words.
fn plain_words(message: &str) -> String {
    let mut m = message.trim().to_string();
    for (rust, words) in [
        ("u32", "a whole number, e.g. 3"),
        ("u64", "a whole number"),
        ("i64", "a whole number"),
        ("a boolean", "true or false"),
        ("a sequence", "a list, e.g. [\"python3\", \"agent.py\"]"),
        ("struct RawWorker", "a table of worker settings"),
        ("a string", "a quoted string"),
    ] {
        m = m.replace(&format!("expected {rust}"), &format!("expected {words}"));
    }
    m
}

/// The offset of the first character of the line that holds `offset`, past its indentation: where
/// the key of a value on that line begins.
fn line_start(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
    let indent = text[start..]
        .find(|c: char| c != ' ' && c != '\t')
        .unwrap_or(0);
    (start + indent).min(offset)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/p/agentq.toml"), text)
    }

    fn err_text(text: &str) -> String {
        parse(text).expect_err("expected an error").to_string()
    }

    #[test]
    fn a_one_worker_config_is_a_few_lines() {
        let c =
            parse("[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = [\"cat\"]\n").unwrap();
        let w = &c.workers[0];
        assert_eq!(
            w.agent,
            Agent::Command(agentq_agents::command::Settings {
                argv: vec!["cat".into()]
            })
        );
        assert_eq!(w.cwd, PathBuf::from("/p/."));
        assert_eq!(w.limits.timeout, Duration::from_secs(600));
        assert_eq!(w.limits.max_attempts, 3);
        assert_eq!(c.max_prompt_size, 10 << 20);
        assert_eq!(c.resolve_worker(None).unwrap().name, "w");
    }

    #[test]
    fn supervision_settings_have_defaults_inherit_and_are_checked() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        let l = &c.workers[0].limits;
        assert_eq!(l.idle_timeout, None);
        assert_eq!(l.linger_timeout, Duration::from_secs(10));
        assert_eq!(l.memory_report_interval, Duration::from_secs(10));
        assert_eq!(l.max_memory, None);
        assert!(l.restart.autorestart);
        assert_eq!(c.daemon.memory_sample_interval, Duration::from_secs(1));
        assert_eq!(c.daemon.min_free_space, 64 << 20);
        let small = parse(
            "[daemon]\nmin_free_space = \"2MiB\"\n[[worker]]\nname = \"a\"\ncommand = [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(small.daemon.min_free_space, 2 << 20);

        let c = parse(
            "[defaults]\nidle_timeout = \"2m\"\nmax_memory = \"2GiB\"\nmax_restarts = 4\nrestart_delay = \"2s\"\n\
             [[worker]]\nname = \"a\"\ncommand = [\"x\"]\n\
             [[worker]]\nname = \"b\"\ncommand = [\"x\"]\nmax_memory = \"512MiB\"\nautorestart = false\nmin_uptime = \"30s\"\n",
        )
        .unwrap();
        let (a, b) = (&c.workers[0].limits, &c.workers[1].limits);
        assert_eq!(a.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(a.max_memory, Some(2 << 30));
        assert_eq!(b.max_memory, Some(512 << 20), "a worker's own setting wins");
        assert_eq!(
            (a.restart.max_restarts, a.restart.restart_delay),
            (4, Duration::from_secs(2))
        );
        assert!(a.restart.autorestart && !b.restart.autorestart);
        assert_eq!(b.restart.min_uptime, Duration::from_secs(30));

        let e = err_text("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\nidle_timeout = \"0s\"\n");
        assert!(
            e.contains("agentq.toml:4:1") && e.contains("idle_timeout must be above 0"),
            "{e}"
        );
        let e = err_text("[daemon]\nmemory_sample_interval = \"1ms\"\n");
        assert!(e.contains(":2:1") && e.contains("at least 50ms"), "{e}");
        let e = err_text("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\nautorestart = \"yes\"\n");
        assert!(e.contains(":4:") && e.contains("true or false"), "{e}");
    }

    #[test]
    fn classify_rules_are_read_and_checked() {
        let c = parse("[classify]\nlong_keywords = [\"Audit\"]\nhigh = 0.9\n").unwrap();
        assert_eq!(c.classify.long_keywords, ["audit"]);
        assert_eq!((c.classify.high, c.classify.low), (0.9, 0.3));
        assert_eq!(c.classify.short_keywords.len(), 7, "defaults kept");
        let e = err_text("[classify]\nlow = 0.6\nmedium = 0.5\n");
        assert!(e.contains(":2:7") && e.contains("low <= medium"), "{e}");
        let e = err_text("[classify]\nshort_keywords = [\"fix\", \" \"]\n");
        assert!(e.contains(":2:18") && e.contains("empty"), "{e}");
    }

    #[test]
    fn the_pool_and_classes_have_defaults_and_are_checked() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        assert!(!c.pool.defined);
        assert_eq!(c.pool.max_workers, 4);
        assert_eq!(c.pool.worker.name, "pool");
        assert_eq!(c.pool.worker.agent.kind(), "claude");
        assert_eq!(c.pool.worker.limits.timeout, Duration::from_secs(600));
        assert_eq!(c.pool.worker.limits.max_memory, Some(4 << 30));
        assert_eq!(
            c.workers[0].limits.max_memory, None,
            "the pool's own default"
        );
        assert_eq!(c.workers[0].route, Route::Worker);
        assert_eq!(c.classes, Classes::default());

        let c = parse(
            "[defaults]\nroute = \"auto\"\ntimeout = \"1h\"\n[pool]\nmax_workers = 2\ncommand = [\"y\"]\nmax_memory = \"1GiB\"\n[class.long]\ntimeout = \"2h\"\npriority = -3\n[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n[[worker]]\nname = \"v\"\ncommand = [\"x\"]\nroute = \"pool\"\n",
        )
        .unwrap();
        assert!(c.pool.defined);
        assert_eq!(c.pool.max_workers, 2);
        assert_eq!(c.pool.worker.agent.kind(), "command");
        assert_eq!(c.pool.worker.limits.timeout, Duration::from_secs(3600));
        assert_eq!(c.pool.worker.limits.max_memory, Some(1 << 30));
        assert_eq!(
            (c.workers[0].route, c.workers[1].route),
            (Route::Auto, Route::Pool)
        );
        assert_eq!(c.classes.long.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(c.classes.long.priority, Some(-3));
        assert_eq!(c.settings_of("pool").unwrap().name, "pool");
        assert_eq!(c.queue_names().collect::<Vec<_>>(), ["w", "v", "pool"]);

        for (text, at, says) in [
            ("[pool]\nmax_workers = 0\n", ":2:", "at least 1"),
            ("[pool]\nname = \"p\"\n", ":2:", "[pool] has no name"),
            ("[pool]\nroute = \"auto\"\n", ":2:", "[pool] has no route"),
            ("[pool]\nmode = \"persistent\"\n", ":2:", "fresh process"),
            (
                "[pool]\ncommand = [\"x\"]\nmodel = \"m\"\n",
                ":1:",
                "[pool] has agent = \"command\"",
            ),
            ("[pool]\ntimeout = 0\n", ":2:", "timeout must be above 0"),
            (
                "[pool]\nsession = \"fresh\"\n",
                ":2:",
                "[pool] session does not apply",
            ),
            (
                "[pool]\nmax_workers = 2\nautorestart = false\n",
                ":3:",
                "autorestart does not apply",
            ),
            (
                "[[worker]]\nname = \"w\"\ncommand = [\"x\"]\nmax_workers = 2\n",
                ":4:",
                "[pool] setting",
            ),
            ("[[worker]]\ncommand = [\"x\"]\n", ":1:", "needs a name"),
            ("[daemon]\nhost = \"a b\"\n", ":2:", "invalid host id"),
            ("[daemon]\nhost = \"\"\n", ":2:", "invalid host id"),
            ("[daemon]\nhost = \"a:1\"\n", ":2:", "invalid host id"),
            (
                "[[worker]]\nname = \"w\"\ncommand = [\"x\"]\nhost = \"\\t\"\n",
                ":4:",
                "invalid host id",
            ),
            ("[pool]\nhost = \"a\"\n", ":2:", "[pool] has no host"),
            (
                "[[worker]]\nname = \"w\"\ncommand = [\"x\"]\nroute = \"fast\"\n",
                ":4:",
                "unknown route",
            ),
            ("[defaults]\nroute = \"any\"\n", ":2:", "unknown route"),
            (
                "[class.long]\nmax_attempts = 0\n",
                ":2:",
                "[class.long] max_attempts",
            ),
            (
                "[class.short]\nmax_memory = 0\n",
                ":2:",
                "[class.short] max_memory",
            ),
            ("[class.medium]\ntimeout = \"1m\"\n", ":1:", "medium"),
            ("[class.long]\ncolour = 1\n", ":2:", "colour"),
        ] {
            let e = err_text(text);
            assert!(e.contains(at) && e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_readmes_example_config_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let len = readme[start..].find("```").unwrap();
        let c = parse(&readme[start..start + len]).unwrap();
        assert_eq!(c.workers.len(), 4);
        assert_eq!(c.workers[0].route, Route::Auto);
        let kinds: Vec<&str> = c.workers.iter().map(|w| w.agent.kind()).collect();
        assert_eq!(kinds, ["command", "claude", "codex", "gemini"]);
        assert!(c.pool.defined);
        assert_eq!(c.classes.long.priority, Some(-1));
    }

    #[test]
    fn a_host_id_is_the_machines_unless_set_and_a_worker_may_be_pinned() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(c.daemon.host, machine_host());
        assert!(!c.daemon.shared_sessions);
        assert_eq!(c.workers[0].host, None);
        let c = parse(
            "[daemon]\nhost = \"build-1\"\nshared_sessions = true\n\
             [[worker]]\nname = \"w\"\ncommand = [\"x\"]\nhost = \"build-2\"\n",
        )
        .unwrap();
        assert_eq!(c.daemon.host, "build-1");
        assert!(c.daemon.shared_sessions);
        assert_eq!(c.workers[0].host.as_deref(), Some("build-2"));
    }

    #[test]
    fn the_init_template_parses() {
        let c = parse(INIT_TEMPLATE).unwrap();
        assert_eq!(c.workers.len(), 1);
        assert_eq!(c.workers[0].limits.timeout, Duration::from_secs(600));
    }

    #[test]
    fn a_command_without_an_agent_is_a_command_agent() {
        let c = parse("[[worker]]\nname = \"a\"\ncommand = [\"x\"]\n[[worker]]\nname = \"b\"\n")
            .unwrap();
        assert_eq!(c.workers[0].agent.kind(), "command");
        assert_eq!(c.workers[1].agent.kind(), "claude");
    }

    #[test]
    fn claude_workers_take_their_settings() {
        let c = parse(
            "[defaults]\nclaude_bin = \"tools/claude\"\n[[worker]]\nname = \"c\"\nmodel = \"opus\"\nsession = \"rotate\"\nrotate_after_tasks = 5\nadd_dirs = [\"data\"]\nallowed_tools = [\"Read\"]\n",
        )
        .unwrap();
        let Agent::Claude(s) = &c.workers[0].agent else {
            panic!()
        };
        assert_eq!(s.bin, Some(PathBuf::from("/p/tools/claude")));
        assert_eq!(s.model.as_deref(), Some("opus"));
        assert_eq!(s.add_dirs, vec![PathBuf::from("/p/data")]);
        assert_eq!(
            s.session,
            agentq_agents::SessionPolicy::Rotate {
                after_tasks: Some(5),
                after_tokens: None
            }
        );
        assert!(!s.skip_permissions, "never a default");

        let e = err_text("[[worker]]\nname = \"c\"\nsession = \"rotate\"\n");
        assert!(
            e.starts_with("/p/agentq.toml:3:") && e.contains("rotate_after_tasks"),
            "{e}"
        );
        let e = err_text("[[worker]]\nname = \"c\"\nmode = \"daemon\"\n");
        assert!(
            e.starts_with("/p/agentq.toml:3:") && e.contains("\"exec\" or \"persistent\""),
            "{e}"
        );
        let e = err_text(
            "[[worker]]\nname = \"x\"\nagent = \"command\"\ncommand = [\"cat\"]\nmodel = \"opus\"\n",
        );
        assert!(
            e.contains("sets model, which only a Claude, Codex or Gemini worker has"),
            "{e}"
        );
        let e =
            err_text("[[worker]]\nname = \"x\"\nagent = \"codex\"\npermission_mode = \"plan\"\n");
        assert!(
            e.contains(
                "has agent = \"codex\" but sets permission_mode, which only a Claude worker has"
            ),
            "{e}"
        );
        let e = err_text(
            "[[worker]]\nname = \"x\"\nagent = \"codex\"\nextra_args = [\"--sandbox\", \"workspace-write\"]\n",
        );
        assert!(
            e.starts_with("/p/agentq.toml:1:")
                && e.contains("--sandbox in extra_args")
                && e.contains("use sandbox = "),
            "{e}"
        );
        let e = err_text("[[worker]]\nname = \"x\"\nagent = \"gemini\"\ncommand = [\"gemini\"]\n");
        assert!(
            e.contains("has agent = \"gemini\" but sets command, which only a command worker has"),
            "{e}"
        );
        let e = err_text("[[worker]]\nname = \"x\"\nagent = \"codex\"\nsandbox = \"open\"\n");
        assert!(
            e.starts_with("/p/agentq.toml:4:")
                && e.contains("unknown sandbox \"open\": expected \"read-only\""),
            "{e}"
        );
        let e = err_text("[[worker]]\nname = \"x\"\nagent = \"aider\"\n");
        assert!(
            e.starts_with("/p/agentq.toml:3:")
                && e.contains("unknown agent \"aider\": expected one of \"claude\", \"codex\", \"gemini\", \"command\""),
            "{e}"
        );
    }

    #[test]
    fn codex_and_gemini_workers_take_their_own_settings() {
        let c = parse(
            "[defaults]\ncodex_bin = \"bin/codex\"\n[[worker]]\nname = \"x\"\nagent = \"codex\"\nmodel = \"gpt-5.5\"\nsandbox = \"workspace-write\"\nskip_git_repo_check = true\nsession = \"fresh\"\n[[worker]]\nname = \"g\"\nagent = \"gemini\"\ngemini_bin = \"gemini-nightly\"\napproval_mode = \"yolo\"\ntrust_workspace = true\nextra_args = [\"--debug\"]\n",
        )
        .unwrap();
        let Agent::Codex(x) = &c.workers[0].agent else {
            panic!()
        };
        assert_eq!(x.bin, Some(PathBuf::from("/p/bin/codex")));
        assert_eq!(
            (
                x.model.as_deref(),
                x.sandbox.as_deref(),
                x.skip_git_repo_check
            ),
            (Some("gpt-5.5"), Some("workspace-write"), true)
        );
        assert_eq!(x.session, agentq_agents::SessionPolicy::Fresh);
        let Agent::Gemini(g) = &c.workers[1].agent else {
            panic!()
        };
        assert_eq!(
            g.bin,
            Some(PathBuf::from("gemini-nightly")),
            "a bare name is looked up on PATH"
        );
        assert_eq!(g.approval_mode.as_deref(), Some("yolo"));
        assert!(g.trust_workspace);
        assert_eq!(g.extra_args, ["--debug"]);
        assert_eq!(c.workers[1].agent.kind(), "gemini");
        let e = err_text("[[worker]]\nname = \"g\"\nagent = \"gemini\"\nsandbox = \"read-only\"\n");
        assert!(
            e.contains("sets sandbox, which only a Codex worker has"),
            "{e}"
        );
    }

    #[test]
    fn worker_settings_override_defaults() {
        let c = parse(
            "[defaults]\ntimeout = \"10m\"\nmax_attempts = 5\n[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"x\"]\ntimeout = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(c.workers[0].limits.timeout, Duration::from_secs(90));
        assert_eq!(c.workers[0].limits.max_attempts, 5);
    }

    #[test]
    fn errors_name_file_line_and_what_was_expected() {
        let e = err_text("[defaults]\ntimeout = \"10 minutez\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");

        let e = err_text("[defaults]\ntimeuot = \"10m\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
        assert!(e.contains("timeuot"), "{e}");

        let e = err_text(
            "[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"x\"]\n[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"x\"]\n",
        );
        assert!(e.starts_with("/p/agentq.toml:6:"), "{e}");
        assert!(e.contains("defined twice"), "{e}");

        let e = err_text("[[worker]]\nname = \"a b\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");

        let e = err_text("[[worker]]\nname = \"a\"\nagent = \"command\"\n");
        assert!(e.contains("no command"), "{e}");

        let e = err_text("[[worker]]\nname = \"a\"\nagent = \"robot\"\n");
        assert!(e.starts_with("/p/agentq.toml:3:"), "{e}");
        assert!(
            e.contains("expected one of \"claude\", \"codex\", \"gemini\", \"command\""),
            "{e}"
        );

        let e = err_text("[defaults]\nmax_attempts = 0\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");

        let e = err_text("[defaults]\nworker = \"ghost\"\n");
        assert!(e.contains("ghost"), "{e}");

        let e = err_text("[intake]\npoll_interval = \"0s\"\n");
        assert!(e.contains("poll_interval must be at least 10ms"), "{e}");

        let e = err_text("[[worker]\n");
        assert!(e.starts_with("/p/agentq.toml:1:"), "{e}");
    }

    /// Each mistake found after parsing is placed by the span the parser kept of the value it is
    /// about, not by looking for its key in the text: the same key set in several tables is told
    /// apart.
    #[test]
    fn errors_found_after_parsing_name_the_line_of_the_setting_that_is_wrong() {
        let two = |first: &str, second: &str| {
            format!(
                "[[worker]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = {first}\n\n\
                 [[worker]]\nname = \"b\"\ncommand = [\"x\"]\ntimeout = {second}\n"
            )
        };
        let e = err_text(&two("\"1m\"", "\"0s\""));
        assert!(
            e.starts_with("/p/agentq.toml:9:1: worker \"b\": timeout must be above 0"),
            "{e}"
        );
        let e = err_text(&two("\"0s\"", "\"1m\""));
        assert!(
            e.starts_with("/p/agentq.toml:4:1: worker \"a\": timeout must be above 0"),
            "{e}"
        );
        // [defaults]' own, though a worker below sets the same key.
        let e = err_text(
            "[defaults]\nmemory_report_interval = \"0s\"\n[[worker]]\nname = \"a\"\ncommand = [\"x\"]\nmemory_report_interval = \"5s\"\n",
        );
        assert!(
            e.starts_with("/p/agentq.toml:2:1: memory_report_interval"),
            "{e}"
        );
        // A worker inherits [defaults]' value: the mistake is where that is written.
        let e =
            err_text("[[worker]]\nname = \"a\"\ncommand = [\"x\"]\n[defaults]\n  max_memory = 0\n");
        assert!(
            e.starts_with("/p/agentq.toml:5:3: max_memory must be above 0"),
            "{e}"
        );

        let e = err_text(
            "[[worker]]\nname = \"a\"\ncommand = [\"x\"]\n[[worker]]\nname = \"b\"\ncommand = [\"x\"]\n\
             [[worker]]\n# the third\nname = \"a\"\ncommand = [\"x\"]\n",
        );
        assert!(
            e.starts_with("/p/agentq.toml:9:8: worker \"a\" is defined twice"),
            "{e}"
        );

        for (text, at) in [
            ("[defaults]\nmax_prompt_size = 0\n", "2:1"),
            ("[daemon]\nhost = \"h\"\nlease = \"1ms\"\n", "3:1"),
            ("[daemon]\n\nlog_max_size = 10\n", "3:1"),
            (
                "[intake]\nsettle = \"1s\"\nrescan_interval = \"1ms\"\n",
                "3:1",
            ),
            (
                "[class.long]\ntimeout = \"1m\"\n[class.short]\ntimeout = 0\n",
                "4:1",
            ),
            ("[class.short]\nmax_attempts = 1\nmax_memory = 0\n", "3:1"),
            (
                "[pool]\nmax_workers = 2\n\nrecycle_after_tasks = 3\n",
                "4:1",
            ),
            ("[pool]\nmin_uptime = \"1s\"\n", "2:1"),
        ] {
            let e = err_text(text);
            assert!(
                e.starts_with(&format!("/p/agentq.toml:{at}: ")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512 KB").unwrap(), 512_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn choosing_a_worker() {
        let c = parse("[[worker]]\nname = \"a\"\nagent = \"command\"\ncommand = [\"x\"]\n[[worker]]\nname = \"b\"\nagent = \"command\"\ncommand = [\"x\"]\n").unwrap();
        assert!(
            c.resolve_worker(None)
                .unwrap_err()
                .to_string()
                .contains("--worker")
        );
        assert_eq!(c.resolve_worker(Some("b")).unwrap().name, "b");
        assert!(
            c.resolve_worker(Some("z"))
                .unwrap_err()
                .to_string()
                .contains("workers: a, b")
        );
    }

    #[test]
    fn http_is_off_by_default_and_checked_when_on() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(c.http.listen, None);
        assert!(!c.http.allow_remote);
        assert_eq!(c.http.max_body, 1 << 20);

        let c = parse(
            "[http]\nlisten = \"127.0.0.1:7777\"\nmax_body = \"64KiB\"\n\n[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:7777".parse().unwrap()));
        assert_eq!(c.http.max_body, 64 << 10);
        assert!(parse("[http]\nlisten = \"[::1]:0\"\n").is_ok());

        let e = err_text("[http]\nlisten = \"0.0.0.0:7777\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
        assert!(e.contains("allow_remote"), "{e}");
        let c = parse("[http]\nlisten = \"0.0.0.0:7777\"\nallow_remote = true\n").unwrap();
        assert_eq!(c.http.listen, Some("0.0.0.0:7777".parse().unwrap()));

        let e = err_text("[http]\nlisten = \"localhost\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
        assert!(e.contains("127.0.0.1:7777"), "{e}");
        let e = err_text("[http]\n\nmax_body = 0\n");
        assert!(e.starts_with("/p/agentq.toml:3:"), "{e}");
        let e = err_text("[http]\nport = 1\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
    }

    #[test]
    fn http_timeouts_and_limits() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.request_timeout, Duration::from_secs(30));
        assert_eq!((c.http.max_connections, c.http.max_streams), (256, 64));

        let c = parse(
            "[http]\nheader_timeout = \"2s\"\nrequest_timeout = \"1m\"\nmax_connections = 8\nmax_streams = 2\n",
        )
        .unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_secs(2));
        assert_eq!(c.http.request_timeout, Duration::from_secs(60));
        assert_eq!((c.http.max_connections, c.http.max_streams), (8, 2));

        for (text, line, needle) in [
            (
                "[http]\n\nheader_timeout = \"0s\"\n",
                3,
                "header_timeout must be at least 100ms",
            ),
            (
                "[http]\nrequest_timeout = \"10ms\"\n",
                2,
                "request_timeout must be at least 100ms",
            ),
            (
                "[http]\nrequest_timeout = \"soon\"\n",
                2,
                "invalid duration",
            ),
            (
                "[http]\n\n\nmax_connections = 0\n",
                4,
                "max_connections must be at least 1",
            ),
            (
                "[http]\nmax_streams = 0\n",
                2,
                "max_streams must be at least 1",
            ),
            ("[http]\nmax_streams = -1\n", 2, "expected a whole number"),
        ] {
            let e = err_text(text);
            assert!(e.starts_with(&format!("/p/agentq.toml:{line}:")), "{e}");
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given_and_the_environment_wins() {
        let c = parse("[[worker]]\nname = \"w\"\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(c.store, StoreSettings::Sqlite);
        assert!(
            c.store
                .describe(&c.db_path())
                .ends_with(".agentq/agentq.db")
        );

        let c = parse("[store]\nurl = \"postgres://agentq:s3cret@db:5432/queue\"\n").unwrap();
        let StoreSettings::Postgres(url) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(url.expose(), "postgres://agentq:s3cret@db:5432/queue");
        assert_eq!(
            c.store.describe(&c.db_path()),
            "postgres://agentq:***@db:5432/queue"
        );
        assert!(!format!("{c:?}").contains("s3cret"));

        let env =
            |url: &'static str| move |k: &str| (k == DATABASE_URL_ENV).then(|| url.to_string());
        let c = c.with_env(env("host=other password=x")).unwrap();
        let StoreSettings::Postgres(url) = &c.store else {
            panic!()
        };
        assert_eq!(url.expose(), "host=other password=x");
        assert_eq!(url.origin, DATABASE_URL_ENV);
        let sqlite = parse("").unwrap();
        assert_eq!(
            sqlite.clone().with_env(env("")).unwrap().store,
            StoreSettings::Sqlite
        );
        let e = sqlite
            .with_env(env("mysql://root:s3cret@h/d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(DATABASE_URL_ENV), "{e}");
        assert!(!e.contains("s3cret"), "{e}");

        let e = err_text("[store]\n\nurl = \"mysql://root:s3cret@h/d\"\n");
        assert!(e.starts_with("/p/agentq.toml:3:"), "{e}");
        assert!(e.contains("PostgreSQL connection string"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = err_text("[store]\nurl = \"postgres://u:s3cret@h/d?sslmode=sometimes\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = err_text("[store]\npath = \"x\"\n");
        assert!(e.starts_with("/p/agentq.toml:2:"), "{e}");
    }
}
