//! The command line: what each command takes. What each one does is in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use agentq_core::domain::TaskState;

/// The end of `agentq -h`: where to begin. A macro, not a `const`, so that `concat!` can join it
/// to [`exit_codes!`] for `--help` and the man page.
macro_rules! start_here {
    () => {
        "Start with `agentq init`, then `agentq run`. Tasks come from `agentq submit` or from \
         *.prompt files dropped into .queue/<worker>/; results go to .output/<worker>/."
    };
}

/// What each exit code means, as `agentq_core::error::Error::exit_code` chooses it (and clap, for
/// a command line it cannot read: 2). README's list says the same. Lines short enough that `man`
/// does not fill them (each starts with a space, so each starts a line of its own there).
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0    success
  1    a task did not succeed (`result`, `wait`, `submit --wait`),
       or a `doctor` check failed
  2    a mistake in what was asked: the command line, the config (or
       none found), an unknown task, a task in the wrong state;
       `cancel` and `retry` act on every id, then exit 2 if any
       could not be done
  3    a problem of the environment: I/O, the database (unreachable,
       damaged, a newer schema), another `agentq run` on this folder
       or host id, the HTTP port, the service manager
  124  `wait --timeout` gave up before the tasks ended"
    };
}

#[derive(Parser, Debug)]
#[command(
    name = "agentq",
    version,
    about = "Run coding-agent CLIs as reliable, always-on workers, fed from a durable queue.",
    after_help = start_here!(),
    after_long_help = concat!(start_here!(), "\n\n", exit_codes!())
)]
pub struct Cli {
    /// The agentq.toml to use [default: ./agentq.toml or the nearest one above]
    #[arg(long, global = true, env = "AGENTQ_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// How logs are written to stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented agentq.toml here and create the private state folder .agentq/
    Init(InitArgs),
    /// Run the supervisor in the foreground until Ctrl-C or SIGTERM
    Run(RunArgs),
    /// Queue a task; prints its id
    Submit(SubmitArgs),
    /// Workers, what they are doing, and queue totals
    Status(StatusArgs),
    /// The status, refreshed live, with the latest events beneath (`status --watch --events`)
    Top(WatchArgs),
    /// List tasks, newest first
    Tasks(TasksArgs),
    /// Everything about one task: state, result, output, stderr, history
    Show(IdArgs),
    /// The event log: what happened to tasks, and files set aside by intake
    Events(EventsArgs),
    /// What agents write, as they work: every worker's latest lines interleaved, or those of the
    /// workers and tasks named; a task's whole transcript
    Logs(LogsArgs),
    /// Print a task's result text; exits 1 unless it succeeded
    Result(IdArgs),
    /// Wait for tasks to end; exits 1 if any did not succeed
    Wait(WaitArgs),
    /// Cancel queued or running tasks (a running agent is stopped)
    Cancel(IdsArgs),
    /// Queue failed, dead or cancelled tasks again, with their attempts reset
    Retry(IdsArgs),
    /// Say whether a prompt is a long or a short task, and why
    Classify(ClassifyArgs),
    /// Remove finished tasks with their events, agent logs and output files (never queued or
    /// running ones); the database's space is given back
    Clean(CleanArgs),
    /// Print the change a task made in its worktree (from its base to its branch)
    Diff(DiffArgs),
    /// Merge a task's change into a branch (refused, with the conflicting files, when it does not
    /// apply cleanly: the repository is left as it was)
    Merge(MergeArgs),
    /// Throw away a task's change: remove its worktree and branch
    Discard(IdArgs),
    /// List the tasks' worktrees with their size and state; `prune` removes what is no longer
    /// needed
    Worktrees(WorktreesArgs),
    /// Act on a worker
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Print the HTTP API's token (.agentq/token), creating it if there is none
    Token,
    /// Check the config, state folder, database and agents, and say how to fix what is wrong;
    /// exits 1 if a check failed
    Doctor(JsonArgs),
    /// Run agentq as a service of the system
    #[command(subcommand)]
    Service(ServiceCommand),
    /// agentq.toml's schema, and the settings agentq takes from it
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Turn another tool's setup into agentq workers
    #[command(subcommand)]
    Import(ImportCommand),

    /// Print a completion script for a shell, to save where the shell looks for one
    Completions(CompletionsArgs),
    /// Print the man page agentq(1), or write it and one page per command into a folder
    Man(ManArgs),
    /// (Internal) the daemon's guardian: waits for its stdin to close, then kills every process
    /// that carries the daemon's mark. `agentq run` starts it; see `procs::guard`.
    #[command(hide = true)]
    Guard(GuardArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete agentq's commands and options in
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write agentq.1 and a page per command (agentq-submit.1, agentq-worker-restart.1, ...)
    /// into this folder, created if missing, instead of printing agentq.1
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GuardArgs {
    /// The mark (`AGENTQ_DAEMON`) of the daemon's agents
    #[arg(long)]
    pub owner: String,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the JSON Schema (draft 2020-12) of agentq.toml, for editors and for checking a file
    /// before agentq reads it; needs no agentq.toml
    Schema,
    /// Print the settings agentq uses: every default filled in, each worker resolved over
    /// [defaults], secrets hidden (TOML that loads as the same config; --json: the same as JSON)
    Show(JsonArgs),
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Turn a PM2 ecosystem file's apps into [[worker]] tables: printed, or added to agentq.toml
    /// with --write; what has no counterpart in agentq is listed on stderr and left out
    Pm2(ImportPm2Args),
}

#[derive(Args, Debug)]
pub struct ImportPm2Args {
    /// The ecosystem file: JavaScript (read with `node`, which must be on PATH) or JSON
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Add the workers to agentq.toml (skipping any whose name it has already) instead of
    /// printing them
    #[arg(long)]
    pub write: bool,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Install what runs `agentq run` for this project at boot or logon and starts it again when
    /// it fails: a systemd unit (Linux; printing the commands that start it), a launchd job
    /// (macOS), a Task Scheduler task started at your logon (Windows)
    Install(ServiceInstallArgs),
    /// Stop and remove what `service install` installed for this project (nothing of another
    /// folder's)
    Uninstall(ServiceUninstallArgs),
    /// (Internal) what the Windows task runs: `agentq run`, started again whenever it fails, its
    /// output in .agentq/service.log
    #[command(hide = true)]
    Run(ServiceRunArgs),
}

#[derive(Args, Debug)]
pub struct ServiceRunArgs {
    /// Start the daemon with the variables of this environment file (KEY="value" lines, as
    /// `service install` writes), read again at each start
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServiceInstallArgs {
    /// A service of your user (~/.config/systemd/user/, no root needed) instead of the system's;
    /// on Windows the task is always yours
    #[arg(long)]
    pub user: bool,
    /// Print the file instead of writing it
    #[arg(long)]
    pub print: bool,
    /// Replace an existing file (or Windows task) that differs
    #[arg(long)]
    pub force: bool,
    /// Carry this variable to the daemon and its agents too: KEY=VALUE, or KEY for its value in
    /// this shell (may be given more than once). AGENTQ_DATABASE_URL and the agent CLIs' API
    /// variables (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY, ...) are carried when set.
    /// They go into a file only you can read
    #[arg(long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServiceUninstallArgs {
    /// Your user's service rather than the system's, as it was installed
    #[arg(long)]
    pub user: bool,
}

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Start the worker's next task in a new conversation of its agent
    ResetSession(WorkerNameArgs),
    /// Stop the worker from starting tasks (running ones finish, its tasks in the pool wait too),
    /// for a while or until resumed; `pool` pauses the tasks submitted to the pool
    Pause(PauseArgs),
    /// Let a paused worker start tasks again (ends a usage-limit or budget pause early, too)
    Resume(WorkerNameArgs),
    /// Clear an errored worker (its restart policy gave up) and replace its long-lived process
    Restart(WorkerNameArgs),
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    pub name: String,
    /// For how long, e.g. 30m, 2h [default: until `agentq worker resume`]
    #[arg(long = "for", value_parser = parse_positive_duration)]
    pub duration: Option<std::time::Duration>,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct WorkerNameArgs {
    pub name: String,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct JsonArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Overwrite an existing agentq.toml
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Serve the HTTP API on this address, e.g. 127.0.0.1:7777 (overrides [http] listen)
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// This daemon's host id: which daemon holds a worker, and what a worker's `host` pins it
    /// to (overrides [daemon] host; default: the machine's name)
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The prompt, or - to read it from stdin
    #[arg(value_name = "PROMPT | -")]
    pub prompt: Option<String>,
    /// The worker to run it [default: [defaults] worker, or the only worker]
    #[arg(long, short)]
    pub worker: Option<String>,
    /// Run it in the pool: a fresh agent process and conversation of its own, with [pool]'s
    /// settings (or, with --worker, that worker's)
    #[arg(long)]
    pub pool: bool,
    /// Its class, instead of classifying the prompt (long or short)
    #[arg(long, value_parser = parse_class)]
    pub class: Option<agentq_core::classify::Class>,
    /// Its complexity (0 to 1), instead of estimating it from the prompt
    #[arg(long, value_parser = parse_complexity)]
    pub complexity: Option<f64>,
    /// Higher runs first; equal priorities run in submission order [default: its class's, or 0]
    #[arg(long, short, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Wall-clock limit of each attempt, e.g. 30s, 10m [default: its class's, or the worker's]
    #[arg(long, value_parser = parse_positive_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Attempts before the task is dead [default: its class's, or the worker's]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// The most memory its agent's processes may hold, e.g. 2GiB [default: its class's, or the
    /// worker's max_memory]
    #[arg(long, value_parser = parse_positive_size)]
    pub max_memory: Option<u64>,
    /// Where its agent works: "worktree" (a git worktree and branch of its own; its change is
    /// kept for `agentq diff`, `merge` and `discard`) or "none" (the worker's cwd) [default: the
    /// worker's isolation]
    #[arg(long, value_parser = parse_isolation)]
    pub isolation: Option<agentq_core::worktree::Isolation>,
    /// In a worktree: the git repository [default: the worker's repo, or its cwd's]
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// In a worktree: the commit or branch its branch starts from, resolved now [default: the
    /// worker's base, or HEAD]
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// In a worktree: its branch's name, which must not exist yet [default:
    /// <prefix>/<worker>/<task id>]
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Wait for the task to end, print its result, and exit 1 if it did not succeed; what
    /// happens to it on the way (queued, started, retrying and why) is told on stderr
    #[arg(long, conflicts_with = "lines")]
    pub wait: bool,
    /// With --wait (which it implies): also print the agent's transcript on stderr as it comes
    #[arg(long, short = 'f', conflicts_with = "lines")]
    pub follow: bool,
    /// Queue one task per non-empty line of PROMPT (or of stdin, with -), all in one transaction;
    /// prints their ids, one a line
    #[arg(long)]
    pub lines: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The task's id
    pub id: i64,
    /// Only which files changed and how much (`git diff --stat`)
    #[arg(long)]
    pub stat: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The task's id
    pub id: i64,
    /// The branch to merge into [default: the branch the repository has checked out]
    #[arg(long, value_name = "REF")]
    pub into: Option<String>,
    /// One commit with the whole change, instead of a merge commit
    #[arg(long)]
    pub squash: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct WorktreesArgs {
    #[command(subcommand)]
    pub action: Option<WorktreesAction>,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Subcommand, Debug)]
pub enum WorktreesAction {
    /// Record the change of tasks that ended while the daemon was down, and remove worktrees
    /// whose change is merged, discarded or empty, or whose task is gone (never an open change)
    Prune {
        /// Say what would be done, and do nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        out: JsonArgs,
    },
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// The prompt, or - to read it from stdin
    #[arg(value_name = "PROMPT | -")]
    pub prompt: Option<String>,
    /// Take this class as given (long or short)
    #[arg(long, value_parser = parse_class)]
    pub class: Option<agentq_core::classify::Class>,
    /// Take this complexity (0 to 1) instead of estimating it
    #[arg(long, value_parser = parse_complexity)]
    pub complexity: Option<f64>,
    /// Also say where a task submitted to this worker would run [default: [defaults] worker, or
    /// the only worker]
    #[arg(long, short)]
    pub worker: Option<String>,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Only tasks in this state
    #[arg(long, short, value_parser = parse_state)]
    pub state: Option<TaskState>,
    /// Only this worker's tasks
    #[arg(long, short)]
    pub worker: Option<String>,
    /// At most this many, newest first (0: all)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct CleanArgs {
    /// Only tasks that finished longer ago than this (e.g. 7d, 12h); without it, every finished
    /// task that the other options allow
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Only tasks in this state: succeeded, failed, dead or cancelled (may be given more than once)
    #[arg(long, short, value_parser = parse_finished_state)]
    pub state: Vec<TaskState>,
    /// Only this worker's tasks (`pool` for the pool's)
    #[arg(long, short)]
    pub worker: Option<String>,
    /// Say what would be removed, and remove nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Refresh it in the terminal until interrupted
    #[arg(long, short)]
    pub watch: bool,
    #[command(flatten)]
    pub refresh: WatchArgs,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// How often to refresh (with --watch, and for `top`)
    #[arg(long, short = 'n', value_parser = parse_positive_duration, default_value = "1s")]
    pub interval: std::time::Duration,
    /// Stop after this many refreshes (0: until interrupted)
    #[arg(long, default_value_t = 0)]
    pub count: u32,
    /// Show the latest events beneath the table (always on for `top`)
    #[arg(long)]
    pub events: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this task's events
    #[arg(long, short)]
    pub task: Option<i64>,
    /// Only this worker's events
    #[arg(long, short)]
    pub worker: Option<String>,
    /// Only events of this kind (task_queued, task_started, task_finished, task_retrying,
    /// memory_report, worker_paused, worker_restarted, file_rejected, ...)
    #[arg(long, short)]
    pub kind: Option<String>,
    /// The latest this many (0: all)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Keep printing events as they happen, until interrupted
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Task ids and worker names (`pool` for the pool's own tasks) [default: every worker]
    #[arg(value_name = "WORKER|TASK_ID")]
    pub targets: Vec<String>,
    /// Keep printing as agents write, across tasks and attempts, until interrupted (tasks named
    /// by id: until they have ended)
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N lines [default: a task's whole transcript; 20 of workers]
    #[arg(long, short = 'n', value_name = "N")]
    pub lines: Option<usize>,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    pub id: i64,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct IdsArgs {
    #[arg(required = true)]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub out: JsonArgs,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[arg(required = true)]
    pub ids: Vec<i64>,
    /// Give up after this long (exit 124) [default: wait forever]
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub out: JsonArgs,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    agentq_daemon::config::parse_duration(s)
}

use agentq_core::units::{parse_positive_duration, parse_positive_size};

fn parse_class(s: &str) -> Result<agentq_core::classify::Class, String> {
    s.parse()
}

fn parse_complexity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if (0.0..=1.0).contains(&c) => Ok(c),
        _ => Err(format!(
            "{s:?} is not a complexity: write a number from 0 to 1, e.g. 0.7"
        )),
    }
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    s.parse()
}

/// A state a task ends in: `clean` never touches queued or running tasks.
fn parse_finished_state(s: &str) -> Result<TaskState, String> {
    let state: TaskState = s.parse()?;
    if !state.is_terminal() {
        return Err(format!(
            "{state} tasks are never removed; a finished state is one of succeeded, failed, dead, cancelled"
        ));
    }
    Ok(state)
}

fn parse_isolation(s: &str) -> Result<agentq_core::worktree::Isolation, String> {
    agentq_core::worktree::Isolation::parse(s)
}
