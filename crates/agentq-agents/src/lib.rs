//! agentq-agents: the agent CLIs agentq drives, each behind one interface ([`Driver`]), and the
//! processes they run in.
//!
//! It owns the drivers ([`claude`], [`codex`], [`gemini`], [`command`]); starting one attempt's
//! process with the prompt on its stdin and watching it to its end ([`agent`]: timeouts, idle and
//! linger watchdogs, output caps, the process-group kill); a worker's long-lived agent process
//! ([`persistent`]); memory sampling ([`memory`]); and the book of live process groups with the
//! guardian that kills them if the daemon dies ([`procs`]). It stands on `agentq-core` and knows
//! nothing of the queue.
//!
//! # Theory of operation
//!
//! A driver is what agentq knows about one agent CLI, as plain code over values: the command line
//! that runs it for one task (the prompt always goes to stdin, never into argv, which is capped in
//! size and visible in `ps`), the inherited variables it must not see (a parent session's markers,
//! API keys meant for another tool), whether it writes while it works (the idle watchdog) and the
//! line its output ends with (the linger watchdog), and how to read what it printed: the result
//! text, the conversation it is in, tokens and cost, an error with whether another attempt could
//! help, a usage limit, a conversation that no longer exists. A driver that can serve many tasks
//! from one long-lived process also says how to hand it a task, how to interrupt one and how to
//! read its lines ([`LongLived`]).
//!
//! A driver knows nothing of the queue. The runner (`worker.rs`) claims a task, asks the driver
//! for the command, starts it with the same watchdogs, process-group ownership and agent log for
//! every agent (`agent.rs`, or `persistent.rs` for a long-lived one), gives back what came out,
//! and keeps the worker's conversation in the store: which one the next task joins
//! ([`choose`]) and what each reply reported.
//!
//! Adding a CLI is a module here with a settings struct that implements [`Driver`], and a variant
//! of `config::Agent` that holds it (with its keys in `agentq.toml`).

pub mod agent;
pub mod claude;
pub mod codex;
pub mod command;
pub mod gemini;
pub mod memory;
pub mod persistent;
pub mod transcript;
/// The processes agentq starts (moved to `agentq-platform`; the old path is kept).
pub use agentq_platform::process as procs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::RngExt;

use agentq_core::domain::Cause;

/// What agentq knows about one agent CLI. Implementations are pure: no I/O, no clock but `now`
/// passed in.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// Its `agent = "..."` in `agentq.toml`.
    fn name(&self) -> &'static str;

    /// The package it comes in, for a CLI agentq knows (`None`: a program the user names).
    fn package(&self) -> Option<&'static Package> {
        None
    }

    /// The program the config names, if it names one.
    fn configured_bin(&self) -> Option<&PathBuf> {
        None
    }

    /// Its name in a sentence: "Claude Code", "Codex CLI".
    fn title(&self) -> &'static str {
        self.package().map_or(self.name(), |p| p.title)
    }

    /// The variable that overrides the configured program (`AGENTQ_CLAUDE_BIN`), if it has one.
    fn bin_variable(&self) -> Option<&'static str> {
        self.package().map(|p| p.bin_variable)
    }

    /// The program to run, given the override's value: the override, else the configured one,
    /// else its name on PATH.
    fn program_with(&self, env_override: Option<&str>) -> PathBuf {
        resolve_bin(self.configured_bin(), env_override, self.name())
    }

    /// The program to run, with this process's environment.
    fn program(&self) -> PathBuf {
        let over = self.bin_variable().and_then(|v| std::env::var(v).ok());
        self.program_with(over.as_deref())
    }

    /// How to install it, for `doctor` and for a worker that waits until it is installed. `None`
    /// for a program the user names (the command agent): a missing one is a config error.
    fn install_hint(&self) -> Option<&'static str> {
        self.package().map(|p| p.install)
    }

    /// What to do when it is not installed, in words: install it, or point agentq at it.
    fn install_advice(&self) -> String {
        format!(
            "install {} (`{}`), or point {}_bin in agentq.toml (or {}) at it",
            self.title(),
            self.install_hint().unwrap_or("see its documentation"),
            self.name(),
            self.bin_variable().unwrap_or("its variable")
        )
    }

    /// The version agentq's own tests run, for `doctor` to show beside the installed one.
    fn tested_version(&self) -> Option<&'static str> {
        self.package().map(|p| p.tested_version)
    }

    /// How it keeps a conversation across tasks; `None` when every run stands alone.
    fn conversation(&self) -> Option<Conversation> {
        None
    }

    /// The command line of one task in a process of its own; the prompt goes to its stdin.
    /// `spent_usd` is what the conversation it joins has cost so far.
    fn command(&self, program: &Path, join: Option<&Join>, spent_usd: f64) -> Vec<String>;

    /// What its environment gets and loses, beside the worker's `env` (which always wins).
    fn environment(&self, parent: &BTreeMap<String, String>) -> Environment {
        let _ = parent;
        Environment::default()
    }

    /// Whether it writes while it works. One that prints nothing until its result has no idle
    /// watchdog: silence is not a hang.
    fn prints_while_working(&self) -> bool {
        true
    }

    /// Recognises the line its output ends with: still alive `linger_timeout` after it, the
    /// process is stopped and the result stands.
    fn final_line(&self) -> Option<fn(&str) -> bool> {
        None
    }

    /// Whether its stdout is a stream of events whose last lines say how the run ended (then a
    /// stdout past `output_cap` keeps its end as well as its beginning).
    fn output_is_a_stream(&self) -> bool {
        false
    }

    /// Reads what a finished process printed.
    fn read(&self, out: &Output) -> Read;

    /// Reads its stdout, as it comes, into transcript entries: one per attempt (and per task of
    /// its long-lived process). Each line as it is, unless the driver knows its events.
    fn transcriber(&self) -> Box<dyn transcript::Transcribe> {
        Box::new(transcript::Plain)
    }

    /// Its long-lived mode, when it has one and the worker asked for it.
    fn long_lived(&self) -> Option<&dyn LongLived> {
        None
    }

    /// The most its worker may spend in a (local) day, in US dollars.
    fn daily_budget_usd(&self) -> Option<f64> {
        None
    }

    /// Why its runs may surprise an operator, for the daemon's log at start.
    fn warnings(&self, idle_timeout: Option<std::time::Duration>) -> Vec<String> {
        let _ = idle_timeout;
        Vec::new()
    }
}

/// An agent CLI as it is published: its binary's name is the driver's name.
#[derive(Debug)]
pub struct Package {
    /// "Claude Code", "Codex CLI".
    pub title: &'static str,
    /// The variable that overrides the configured binary.
    pub bin_variable: &'static str,
    /// The command that installs it.
    pub install: &'static str,
    /// The version agentq's tests run (scripts/test pins it).
    pub tested_version: &'static str,
    /// The variables it reads its API key, login or API endpoint from: what a service that runs
    /// agentq must carry from the shell that installs it (`agentq service install`).
    pub credentials: &'static [&'static str],
}

/// The published agent CLIs agentq drives.
pub const PACKAGES: [&Package; 3] = [&claude::PACKAGE, &codex::PACKAGE, &gemini::PACKAGE];

/// One process serving many tasks, one after another, over lines of its stdin and stdout.
pub trait LongLived: Send + Sync {
    /// The command line of the process, joining `join`.
    fn command(&self, program: &Path, join: &Join, spent_usd: f64) -> Vec<String>;
    /// The line that hands it a task.
    fn task_line(&self, prompt: &str) -> String;
    /// The line that asks it to stop the task in flight (the `n`th request it is sent).
    fn interrupt_line(&self, n: u64) -> String;
    /// What a line it wrote means.
    fn read_line(&self, line: &str, now: chrono::DateTime<chrono::Local>) -> Line;
    /// Whether what it said on its way out (`stderr`, a result's `text`) means the conversation
    /// it was asked to resume no longer exists.
    fn gone(&self, stderr: &str, text: &str) -> bool;
    /// Replace the process after it served this many tasks.
    fn recycle_after_tasks(&self) -> Option<u32>;
    /// The budget it is started with (`--max-budget-usd`), fixed for its life.
    fn budget_usd(&self) -> Option<f64>;
}

/// A line a long-lived process wrote.
#[derive(Debug)]
pub enum Line {
    /// It is in this conversation now.
    Session(String),
    /// It reports a usage limit on the way to its result.
    Limit(Limit),
    /// The task's result.
    Reply(Reply),
    /// Anything else: progress, for the agent log only.
    Other,
}

/// How an agent keeps a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub policy: SessionPolicy,
    /// agentq names a new conversation (`--session-id`); otherwise the agent names it in its
    /// output, and it is recorded from there.
    pub named_by_caller: bool,
}

/// Which conversation a task continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPolicy {
    /// One conversation for all the worker's tasks.
    Resume,
    /// A new conversation for every task.
    Fresh,
    /// A new conversation after so many tasks or input tokens.
    Rotate {
        after_tasks: Option<u32>,
        after_tokens: Option<u64>,
    },
}

/// How a task's process joins a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Join {
    /// Start a conversation under this id.
    Start(String),
    /// Start a conversation the agent will name.
    New,
    /// Continue this conversation.
    Resume(String),
}

impl Join {
    /// The conversation's id, when it is known before the run.
    pub fn id(&self) -> Option<&str> {
        match self {
            Join::Start(id) | Join::Resume(id) => Some(id),
            Join::New => None,
        }
    }

    pub fn resumes(&self) -> bool {
        matches!(self, Join::Resume(_))
    }
}

/// Variables an agent gets and loses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl Environment {
    /// Removes every inherited variable named in `exact` or starting with one of `prefixes`.
    pub fn removing(
        mut self,
        parent: &BTreeMap<String, String>,
        exact: &[&str],
        prefixes: &[&str],
    ) -> Environment {
        self.remove
            .extend(named_in(parent, exact, prefixes).map(str::to_string));
        self
    }
}

/// The variables of `parent` named in `exact` or starting with one of `prefixes`.
pub fn named_in<'a>(
    parent: &'a BTreeMap<String, String>,
    exact: &'a [&str],
    prefixes: &'a [&str],
) -> impl Iterator<Item = &'a str> {
    parent
        .keys()
        .map(String::as_str)
        .filter(|k| exact.contains(k) || prefixes.iter().any(|p| k.starts_with(p)))
}

/// The start-up warning of an agent that writes nothing while one model call runs, when the
/// worker has an `idle_timeout`: a long call is not a hang.
pub fn quiet_while_thinking(agent: &str, idle_timeout: Option<std::time::Duration>) -> Vec<String> {
    idle_timeout
        .map(|_| {
            format!("idle_timeout applies to {agent}, which prints nothing while one model call runs: make it longer than its longest call")
        })
        .into_iter()
        .collect()
}

/// What a finished process left.
#[derive(Clone, Copy, Debug)]
pub struct Output<'a> {
    pub stdout: &'a str,
    /// The end of its stderr.
    pub stderr: &'a str,
    /// `None`: it was stopped after its final line (the linger watchdog), or by a signal.
    pub exit_code: Option<i32>,
    pub now: chrono::DateTime<chrono::Local>,
}

/// What a driver made of a finished process.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    Reply(Reply),
    /// It was asked to resume a conversation that no longer exists: start a new one and run the
    /// task again.
    Gone,
    /// It printed no result (crashed, or killed before it could).
    Nothing,
}

/// What an agent answered for one task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    /// The conversation it says it is in.
    pub session: Option<String>,
    pub usage: Reported,
    pub end: End,
}

/// How a reply ends the attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum End {
    #[default]
    Done,
    Failed {
        cause: Cause,
        reason: String,
        retryable: bool,
    },
    /// A usage or rate limit: the worker pauses, the task waits without spending an attempt.
    Limited(Limit),
    /// The conversation has no room left for the task (its context window, its turn limit): a
    /// resumed one is started anew and the task run again; a new one that is full at once
    /// means the task's input is too large.
    Full(String),
}

impl End {
    pub fn failed(cause: Cause, reason: impl Into<String>) -> End {
        End::Failed {
            cause,
            reason: reason.into(),
            retryable: cause.retryable(),
        }
    }
}

/// Tokens and cost as an agent reports them: some count the run, some the conversation so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reported {
    pub cost_usd: Option<Counted<f64>>,
    pub input_tokens: Option<Counted<u64>>,
    pub output_tokens: Option<Counted<u64>>,
    pub turns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Counted<T> {
    /// What this run used.
    Run(T),
    /// What the whole conversation has used, this run included.
    Conversation(T),
}

impl Counted<f64> {
    /// This run's share, and the conversation's total, given the total before it.
    pub fn split(self, before: f64) -> (f64, f64) {
        match self {
            Counted::Run(run) => (run, before + run),
            Counted::Conversation(total) => ((total - before).max(0.0), total.max(before)),
        }
    }
}

impl Counted<u64> {
    /// This run's share, and the conversation's total, given the total before it.
    pub fn split(self, before: u64) -> (u64, u64) {
        match self {
            Counted::Run(run) => (run, before + run),
            Counted::Conversation(total) => (total.saturating_sub(before), total.max(before)),
        }
    }
}

/// A usage or rate limit an agent reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// When it resets (milliseconds since the epoch), if the agent said.
    pub until: Option<i64>,
    pub message: String,
}

pub use agentq_core::domain::SessionState;

/// Picks how the next task joins a conversation: `None` means a new one must be started.
pub fn choose(
    policy: SessionPolicy,
    current: Option<&SessionState>,
    agent: &str,
    cwd: &str,
) -> Option<Join> {
    let current = current.filter(|s| s.cwd == cwd && s.agent == agent)?;
    match policy {
        SessionPolicy::Fresh => None,
        SessionPolicy::Resume => Some(Join::Resume(current.id.clone())),
        SessionPolicy::Rotate {
            after_tasks,
            after_tokens,
        } => {
            let worn = after_tasks.is_some_and(|n| current.tasks >= n)
                || after_tokens.is_some_and(|n| current.input_tokens >= n);
            (!worn).then(|| Join::Resume(current.id.clone()))
        }
    }
}

/// A new conversation id: a random (version 4) UUID, as `--session-id` requires.
pub fn new_session_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The binary to run: the environment's override, else the configured one, else `default` on
/// PATH.
pub fn resolve_bin(
    configured: Option<&PathBuf>,
    env_override: Option<&str>,
    default: &str,
) -> PathBuf {
    match env_override.filter(|s| !s.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => configured
            .cloned()
            .unwrap_or_else(|| PathBuf::from(default)),
    }
}

/// Whether an agent's error words a usage or rate limit: an HTTP 429 (the number standing alone,
/// not inside an id), `Too Many Requests`, an exhausted or exceeded quota, a plan's usage limit.
pub fn says_limit(text: &str) -> bool {
    let lower = text.to_lowercase();
    const WORDS: [&str; 8] = [
        "too many requests",
        "quota exceeded",
        "insufficient_quota",
        "exceeded your current quota",
        "resource_exhausted",
        "usage limit",
        "rate limit reached",
        "rate_limit_exceeded",
    ];
    WORDS.iter().any(|w| lower.contains(w))
        || (lower.contains("exhausted") && lower.contains("quota"))
        || says_number(&lower, "429")
}

/// Whether `number` stands alone in `text` (not as part of a longer word or number).
fn says_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Whether `line` is a JSON object whose `type` is one of `types`: the line an event stream
/// ends a run with. Cheap for the lines that are not (most of them).
pub fn is_json_of_type(line: &str, types: &[&str]) -> bool {
    let line = line.trim();
    line.starts_with('{')
        && types.iter().any(|t| line.contains(&format!("\"{t}\"")))
        && serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v.get("type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| types.contains(&t))
        })
}

/// The reason of a process that ended without a result: its exit code and what its stderr said
/// (an `error:` line if it wrote one, else its last line).
pub fn crashed(code: i32, stderr: &str) -> String {
    format!(
        "crashed ({}): {}",
        exit_code(code),
        telling_line(stderr, "no result on stdout")
    )
}

/// `exit code 2`, or with what the code means where it names a crash (Windows' unhandled
/// exceptions: `exit code 0xC0000005, access violation`).
pub fn exit_code(code: i32) -> String {
    match agentq_platform::process::exit_name(code) {
        Some(name) => format!("exit code {:#010X}, {name}", code as u32),
        None => format!("exit code {code}"),
    }
}

/// The line of `stderr` that says most: the first that starts with `error` (a command-line
/// parser's complaint comes before its usage text), else the last that says anything.
pub fn telling_line<'a>(stderr: &'a str, otherwise: &'a str) -> &'a str {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| l.to_ascii_lowercase().starts_with("error"))
        .unwrap_or_else(|| last_line(stderr, otherwise))
}

/// The last line of `text` that says anything, trimmed.
pub fn last_line<'a>(text: &'a str, otherwise: &'a str) -> &'a str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(otherwise)
}

/// The first line of `text`, at most `max` characters.
pub fn first_line(text: &str, max: usize) -> String {
    text.trim()
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(max)
        .collect()
}

/// Reads a reset time as CLIs word it — `3pm`, `3:30 pm`, `15:00`, `Nov 23, 3pm`, `at 9am
/// (Europe/Berlin)`, an epoch — as local time: the next such moment after `now`. The zone in
/// parentheses is not read: the machine's zone is assumed.
pub fn parse_reset(
    text: &str,
    now: chrono::DateTime<chrono::Local>,
) -> Option<chrono::DateTime<chrono::Local>> {
    use chrono::{Datelike, Duration as Days, NaiveDate, NaiveTime, TimeZone};
    let lower = text.to_lowercase();
    let text = lower
        .split('(')
        .next()?
        .trim()
        .trim_start_matches("at ")
        .trim_end_matches(['.', ',', ' ']);
    if let Ok(epoch) = text.parse::<i64>() {
        return chrono::Local.timestamp_opt(epoch, 0).single();
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut words: Vec<&str> = text
        .split([' ', ','])
        .filter(|w| !w.is_empty() && *w != "at")
        .collect();
    let mut date: Option<NaiveDate> = None;
    if let Some(month) = words
        .first()
        .and_then(|w| MONTHS.iter().position(|m| w.starts_with(m)))
    {
        // `29`, `29th`; then perhaps a year (`Dec 29th, 2025 10:15 PM`).
        let day: u32 = words
            .get(1)?
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse()
            .ok()?;
        let year = words
            .get(2)
            .filter(|w| w.len() == 4)
            .and_then(|w| w.parse::<i32>().ok());
        let mut d = NaiveDate::from_ymd_opt(year.unwrap_or(now.year()), month as u32 + 1, day)?;
        if year.is_none() && d < now.date_naive() {
            d = NaiveDate::from_ymd_opt(now.year() + 1, month as u32 + 1, day)?;
        }
        date = Some(d);
        words.drain(..if year.is_some() { 3 } else { 2 });
    }
    let mut clock = words.concat();
    let pm = clock.ends_with("pm");
    let am = clock.ends_with("am");
    if pm || am {
        clock.truncate(clock.len() - 2);
    }
    let (h, m) = match clock.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None => (clock.parse::<u32>().ok()?, 0),
    };
    let h = match (am, pm, h) {
        (true, _, 12) => 0,
        (_, true, h) if h < 12 => h + 12,
        (_, _, h) => h,
    };
    let time = NaiveTime::from_hms_opt(h, m, 0)?;
    let at = |d: NaiveDate| {
        chrono::Local
            .from_local_datetime(&d.and_time(time))
            .earliest()
    };
    match date {
        Some(d) => at(d),
        None => {
            let today = at(now.date_naive())?;
            if today > now {
                Some(today)
            } else {
                at(now.date_naive() + Days::days(1))
            }
        }
    }
}

/// A wait an agent suggests, as a moment after `now`: `retry after 2s`, `Retry-After: 30`,
/// `retry in 250ms`, `try again in 4 days 2 hours`, `try again in 1h 30m`.
pub fn retry_after(text: &str, now: chrono::DateTime<chrono::Local>) -> Option<i64> {
    let lower = text.to_lowercase();
    let at = ["retry after", "retry-after", "retry in", "try again in"]
        .iter()
        .filter_map(|m| lower.find(m).map(|at| at + m.len()))
        .min()?;
    let ms = duration_words(lower[at..].trim_start_matches([':', ' ']))?;
    Some(now.timestamp_millis() + ms.ceil() as i64)
}

/// Milliseconds in words such as `2s`, `30`, `1.5 s`, `4 days 2 hours`, `1h 30m`: every number and
/// unit from the start (a bare number is seconds), until something else comes.
fn duration_words(text: &str) -> Option<f64> {
    let mut rest = text;
    let mut total = None;
    loop {
        rest = rest
            .trim_start_matches([' ', ','])
            .trim_start_matches("and ");
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let Ok(value) = rest[..digits].trim_end_matches('.').parse::<f64>() else {
            return total;
        };
        let after = rest[digits..].trim_start();
        let word_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let unit = &after[..word_len];
        let scale = match unit {
            "ms" | "msec" | "millisecond" | "milliseconds" => 1.0,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            "w" | "week" | "weeks" => 604_800_000.0,
            _ => return total,
        };
        total = Some(total.unwrap_or(0.0) + value * scale);
        rest = &after[word_len..];
    }
}

/// The start of the local day `now` is in, and of the next, in milliseconds since the epoch.
pub fn local_day(now: chrono::DateTime<chrono::Local>) -> (i64, i64) {
    use chrono::TimeZone;
    let start = |d: chrono::NaiveDate| {
        chrono::Local
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| now.timestamp_millis())
    };
    let today = now.date_naive();
    (start(today), start(today + chrono::Duration::days(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(agent: &str) -> SessionState {
        SessionState {
            id: "a".into(),
            agent: agent.into(),
            cwd: "/w".into(),
            tasks: 3,
            input_tokens: 900,
            output_tokens: 0,
            cost_usd: 0.0,
        }
    }

    #[test]
    fn sessions_follow_the_policy_the_working_folder_and_the_agent() {
        let s = state("claude");
        let pick = |p, cwd, agent| choose(p, Some(&s), agent, cwd);
        assert_eq!(
            pick(SessionPolicy::Resume, "/w", "claude"),
            Some(Join::Resume("a".into()))
        );
        assert_eq!(
            pick(SessionPolicy::Resume, "/elsewhere", "claude"),
            None,
            "a moved cwd cannot resume"
        );
        assert_eq!(
            pick(SessionPolicy::Resume, "/w", "codex"),
            None,
            "another agent cannot continue a claude conversation"
        );
        assert_eq!(choose(SessionPolicy::Resume, None, "claude", "/w"), None);
        assert_eq!(pick(SessionPolicy::Fresh, "/w", "claude"), None);
        let rotate = |t, k| SessionPolicy::Rotate {
            after_tasks: t,
            after_tokens: k,
        };
        assert_eq!(pick(rotate(Some(3), None), "/w", "claude"), None);
        assert!(pick(rotate(Some(4), None), "/w", "claude").is_some());
        assert_eq!(pick(rotate(None, Some(900)), "/w", "claude"), None);
        assert!(pick(rotate(None, Some(901)), "/w", "claude").is_some());
    }

    #[test]
    fn counts_of_a_run_and_of_a_conversation_split_alike() {
        assert_eq!(Counted::Run(5u64).split(10), (5, 15));
        assert_eq!(Counted::Conversation(15u64).split(10), (5, 15));
        assert_eq!(
            Counted::Conversation(3u64).split(10),
            (0, 10),
            "a total below what was known (another conversation's) charges nothing"
        );
        assert_eq!(Counted::Conversation(0.75).split(0.5), (0.25, 0.75));
        assert_eq!(Counted::Run(0.25).split(0.5), (0.25, 0.75));
    }

    #[test]
    fn limits_are_told_by_their_words_not_by_a_429_inside_an_id() {
        assert!(says_limit(
            "exceeded retry limit, last status: 429 Too Many Requests"
        ));
        assert!(says_limit(
            "Quota exceeded. Check your plan and billing details."
        ));
        assert!(says_limit(
            "You've hit your usage limit. Try again in 4 days 2 hours."
        ));
        assert!(says_limit(
            "[API Error: You have exhausted your daily quota on this model.]"
        ));
        assert!(says_limit(
            "{\"code\":429,\"status\":\"RESOURCE_EXHAUSTED\"}"
        ));
        assert!(!says_limit(
            "unexpected status 500 Internal Server Error, request ID req_8f429a1"
        ));
        assert!(!says_limit("stream disconnected before completion"));
        assert!(!says_limit("port 14290 refused"));
    }

    #[test]
    fn the_telling_line_of_stderr_is_an_error_line_or_the_last() {
        let clap = "error: unexpected argument '--sandbox' found\n\nUsage: codex exec resume [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            telling_line(clap, "-"),
            "error: unexpected argument '--sandbox' found"
        );
        assert_eq!(
            telling_line("warming up\nSegmentation fault\n", "-"),
            "Segmentation fault"
        );
        assert_eq!(crashed(2, ""), "crashed (exit code 2): no result on stdout");
    }

    #[test]
    fn a_suggested_retry_is_read_in_its_unit() {
        use chrono::TimeZone;
        let now = chrono::Local.timestamp_millis_opt(1_000_000).unwrap();
        assert_eq!(
            retry_after("Suggested retry after 2s.", now),
            Some(1_002_000)
        );
        assert_eq!(retry_after("retry after 1.5 s", now), Some(1_001_500));
        assert_eq!(retry_after("Retry-After: 30", now), Some(1_030_000));
        assert_eq!(
            retry_after("please retry after 250ms", now),
            Some(1_000_250)
        );
        assert_eq!(retry_after("retry after 2m", now), Some(1_120_000));
        assert_eq!(retry_after("try again later", now), None);
        assert_eq!(
            retry_after("Try again in 4 days 2 hours.", now),
            Some(1_000_000 + (4 * 24 + 2) * 3_600_000)
        );
        assert_eq!(
            retry_after("Please retry in 1h 30m", now),
            Some(1_000_000 + 5_400_000)
        );
        assert_eq!(
            retry_after("try again in 20 minutes and 5 seconds", now),
            Some(1_000_000 + 1_205_000)
        );
    }

    #[test]
    fn the_tested_versions_are_the_ones_scripts_test_installs() {
        let script = include_str!("../../../scripts/test");
        for (var, package) in [
            ("CLAUDE_CODE_VERSION", &claude::PACKAGE),
            ("CODEX_VERSION", &codex::PACKAGE),
            ("GEMINI_CLI_VERSION", &gemini::PACKAGE),
        ] {
            let pinned = format!("{var}={}\n", package.tested_version);
            assert!(script.contains(&pinned), "scripts/test should pin {pinned}");
        }
    }

    #[test]
    fn new_ids_are_version_4_uuids() {
        let id = new_session_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_session_id());
    }

    #[test]
    fn the_binary_comes_from_the_environment_then_config_then_path() {
        let configured = PathBuf::from("/opt/claude");
        assert_eq!(
            resolve_bin(Some(&configured), Some("/env/claude"), "claude"),
            PathBuf::from("/env/claude")
        );
        assert_eq!(resolve_bin(Some(&configured), None, "claude"), configured);
        assert_eq!(
            resolve_bin(Some(&configured), Some(""), "claude"),
            configured
        );
        assert_eq!(resolve_bin(None, None, "codex"), PathBuf::from("codex"));
    }
}
