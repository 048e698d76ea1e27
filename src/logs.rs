//! `agentq logs`: agents' transcripts on the terminal. Without arguments every worker's latest
//! lines interleaved, each prefixed by its worker and task (as `pm2 logs` does); with task ids,
//! those tasks' whole transcripts; `-f` keeps printing as agents write, across tasks and attempts.
//! The rendering of an entry as text ([`render`]) is shared with `show`, `submit --follow` and
//! `top`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use agentq_core::domain::POOL;
use agentq_core::error::{Error, Result};
use agentq_core::transcript::{Entry, Kind};
use agentq_daemon::config::Config;
use agentq_daemon::watch::{self, FOLLOW_EVERY, FolderFollow, Line, TaskFollow};
use agentq_store::{Store, Task, now_ms};

use crate::cli::LogsArgs;

/// How entries are printed.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
    /// Each line starts with `worker#task`.
    pub prefix: bool,
}

impl Style {
    /// Colour where standard output is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout(prefix: bool) -> Style {
        Style {
            color: std::io::stdout().is_terminal() && agentq_platform::term::color_allowed(),
            prefix,
        }
    }
}

/// Lines a tool's result shows; the rest is counted.
const RESULT_LINES: usize = 3;

/// An entry as text lines: time, `worker#task` (with `style.prefix`), a mark of its kind, the text.
pub fn render(worker: &str, task: i64, e: &Entry, style: Style) -> Vec<String> {
    let paint = |code: &str, text: &str| {
        if style.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let time = chrono::DateTime::from_timestamp_millis(e.ts)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    let mut head = paint("2", &time);
    if style.prefix {
        head.push(' ');
        head.push_str(&paint("1", &format!("{worker}#{task}")));
    }
    let tool = e.tool.as_deref().unwrap_or("tool");
    let (mark, body, code): (String, Vec<&str>, &str) = match e.kind {
        Kind::Text | Kind::Stdout => (String::new(), e.text.lines().collect(), ""),
        Kind::Thinking => ("(thinking) ".into(), e.text.lines().collect(), "2"),
        Kind::ToolCall => (format!("→ {tool} "), first_lines(&e.text, 1), "36"),
        Kind::ToolResult => (
            format!("← {tool} "),
            first_lines(&e.text, RESULT_LINES),
            if e.error { "31" } else { "2" },
        ),
        Kind::Status => (
            "· ".into(),
            e.text.lines().collect(),
            if e.error { "31" } else { "2" },
        ),
        Kind::Stderr => ("stderr: ".into(), e.text.lines().collect(), "33"),
        Kind::Result => (
            "= ".into(),
            e.text.lines().collect(),
            if e.error { "31" } else { "32" },
        ),
    };
    let mut body: Vec<String> = body.into_iter().map(str::to_string).collect();
    let all = e.text.lines().count();
    if matches!(e.kind, Kind::ToolCall | Kind::ToolResult) && all > body.len() {
        body.push(format!("… ({} more lines)", all - body.len()));
    }
    if body.is_empty() {
        body.push(String::new());
    }
    body.iter()
        .enumerate()
        .map(|(i, text)| {
            let text = if i == 0 {
                format!("{mark}{text}")
            } else {
                format!("{}{text}", " ".repeat(mark.chars().count()))
            };
            let text = if code.is_empty() {
                text
            } else {
                paint(code, &text)
            };
            format!("{head} {text}")
        })
        .collect()
}

fn first_lines(text: &str, n: usize) -> Vec<&str> {
    text.lines().take(n).collect()
}

/// Prints a line of `logs` as text, or as one JSON object.
fn print_line(line: &Line, style: Style, json: bool) {
    if json {
        println!("{}", serde_json::to_string(line).expect("lines serialise"));
        return;
    }
    for text in render(&line.worker, line.task, &line.entry, style) {
        println!("{text}");
    }
}

/// What `agentq logs` was asked for: tasks by id, and workers by name.
struct Targets {
    tasks: Vec<Task>,
    workers: Vec<String>,
}

async fn targets(config: &Config, store: &dyn Store, asked: &[String]) -> Result<Targets> {
    let mut found = Targets {
        tasks: Vec::new(),
        workers: Vec::new(),
    };
    for target in asked {
        if let Ok(id) = target.parse::<i64>() {
            found
                .tasks
                .push(store.get(id).await?.ok_or(Error::NoSuchTask { id })?);
        } else if target == POOL
            || config.worker(target).is_some()
            || config.transcript_dir(target).is_dir()
        {
            found.workers.push(target.clone());
        } else {
            let names: Vec<&str> = config.workers.iter().map(|w| w.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "{target:?} is neither a task id nor a worker (workers: {}, and pool)",
                names.join(", ")
            )));
        }
    }
    Ok(found)
}

pub async fn logs(config: &Config, store: &dyn Store, args: LogsArgs) -> Result<()> {
    let found = targets(config, store, &args.targets).await?;
    let json = args.out.json;
    if found.workers.is_empty() && !found.tasks.is_empty() {
        return task_logs(config, store, found.tasks, &args, json).await;
    }
    // Workers (or every one), with any tasks named beside them.
    let mut folders = found.workers.clone();
    let ids: Vec<i64> = found.tasks.iter().map(|t| t.id).collect();
    for t in &found.tasks {
        if !folders.contains(&t.worker) {
            folders.push(t.worker.clone());
        }
    }
    let all = folders.is_empty();
    let folders = watch::folders(config, &folders);
    let wanted = |l: &Line| all || found.workers.contains(&l.worker) || ids.contains(&l.task);
    let style = Style::for_stdout(true);
    let start = now_ms();
    let n = args.lines.unwrap_or(20);
    let backlog: Vec<Line> = watch::recent_lines(config, &folders, n, start)
        .into_iter()
        .filter(|l| wanted(l))
        .collect();
    if json && !args.follow {
        crate::commands::print_json(&backlog);
        return Ok(());
    }
    for line in &backlog {
        print_line(line, style, json);
    }
    if !args.follow {
        if backlog.is_empty() && !json {
            eprintln!("no transcript lines yet");
        }
        return Ok(());
    }
    let stop = ctrl_c();
    let mut follow = FolderFollow::new(config, folders, all, start);
    loop {
        for line in follow.next(config).into_iter().filter(|l| wanted(l)) {
            print_line(&line, style, json);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// Tasks named by id: each one's transcript (its last `-n` lines), and with `-f` what they add
/// until they have all ended.
async fn task_logs(
    config: &Config,
    store: &dyn Store,
    tasks: Vec<Task>,
    args: &LogsArgs,
    json: bool,
) -> Result<()> {
    let several = tasks.len() > 1;
    let style = Style::for_stdout(several);
    let mut follows: BTreeMap<i64, (Task, TaskFollow)> = BTreeMap::new();
    let mut everything = Vec::new();
    for task in tasks {
        let read = watch::task_transcript(config, store, task.id, 0).await?;
        let mut entries = read.entries;
        if let Some(n) = args.lines
            && n > 0
            && entries.len() > n
        {
            entries.drain(..entries.len() - n);
        }
        if !read.exists && !json {
            eprintln!("{}", watch::no_transcript_yet(&read.task));
        }
        if let Some((from, to)) = read.missed
            && !json
            && args.lines.is_none()
        {
            eprintln!(
                "(lines {from} to {to} of task {} were rotated away; the agent log has them all)",
                read.task.id
            );
        }
        let last = entries.last().map_or(0, |e| e.seq);
        let lines: Vec<Line> = entries
            .into_iter()
            .map(|entry| Line {
                worker: read.task.worker.clone(),
                task: read.task.id,
                entry,
            })
            .collect();
        if !json || args.follow {
            for line in &lines {
                print_line(line, style, json);
            }
        }
        everything.extend(lines);
        if args.follow && !read.task.state.is_terminal() {
            let follow = TaskFollow::new(config, &read.task, last);
            follows.insert(read.task.id, (read.task, follow));
        }
    }
    if json && !args.follow {
        crate::commands::print_json(&everything);
        return Ok(());
    }
    let stop = ctrl_c();
    while !follows.is_empty() {
        let mut ended = Vec::new();
        for (id, (task, follow)) in follows.iter_mut() {
            // Whether it has ended is asked first, so that what it wrote before is read after.
            let over = store.get(*id).await?.is_none_or(|t| t.state.is_terminal());
            let found = follow.next().await?;
            for entry in found.entries {
                print_line(
                    &Line {
                        worker: task.worker.clone(),
                        task: *id,
                        entry,
                    },
                    style,
                    json,
                );
            }
            if over {
                ended.push(*id);
            }
        }
        for id in ended {
            follows.remove(&id);
        }
        if follows.is_empty() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
    Ok(())
}

/// Cancelled on Ctrl-C.
pub fn ctrl_c() -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        cancel.cancel();
    });
    stop
}

/// `agentq logs` through the command line's config and store.
pub async fn run(explicit: Option<&Path>, args: LogsArgs) -> Result<()> {
    let config = crate::commands::load_config(explicit)?;
    let store = crate::commands::open_store(&config).await?;
    logs(&config, &*store, args).await
}
