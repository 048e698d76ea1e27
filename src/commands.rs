//! What each command does. Every command that prints data prints it as text for people or, with
//! `--json`, as one JSON document on stdout; messages for people go to stderr.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use crate::cli::{
    Cli, Command, EventsArgs, IdArgs, IdsArgs, InitArgs, PauseArgs, ServiceCommand,
    ServiceInstallArgs, SubmitArgs, TasksArgs, WaitArgs, WorkerCommand, WorkerNameArgs,
};
use crate::config::{CONFIG_FILE, Config, INIT_TEMPLATE, POOL, STATE_DIR};
use crate::daemon::{self, Shutdown};
use crate::domain::TaskState;
use crate::error::{Error, Result};
use crate::output::TaskRecord;
use crate::state;
use crate::store::sqlite::SqliteStore;
use crate::store::{Millis, Store, Task, TaskFilter, now_ms};
use crate::wake;

pub async fn dispatch(cli: Cli) -> Result<()> {
    let explicit = cli.config.as_deref();
    match cli.command {
        Command::Init(args) => init(explicit, args).await,
        Command::Run(_) => {
            let config = load_config(explicit)?;
            let shutdown = Shutdown::on_signals(config.daemon.shutdown_grace)
                .map_err(|e| Error::io("listening for signals in", &config.root, e))?;
            daemon::run(config, shutdown).await
        }
        Command::Submit(args) => submit(explicit, args).await,
        Command::Status(args) => status(explicit, args.json).await,
        Command::Tasks(args) => tasks(explicit, args).await,
        Command::Show(args) => show(explicit, args).await,
        Command::Events(args) => events(explicit, args).await,
        Command::Classify(args) => classify(explicit, args),
        Command::Result(args) => result(explicit, args).await,
        Command::Wait(args) => wait_cmd(explicit, args).await,
        Command::Cancel(args) => cancel(explicit, args).await,
        Command::Retry(args) => retry(explicit, args).await,
        Command::Worker(WorkerCommand::ResetSession(args)) => reset_session(explicit, args).await,
        Command::Worker(WorkerCommand::Pause(args)) => pause(explicit, args).await,
        Command::Worker(WorkerCommand::Restart(args)) => restart(explicit, args).await,
        Command::Worker(WorkerCommand::Resume(args)) => resume(explicit, args).await,
        Command::Doctor(args) => doctor(explicit, args.json).await,
        Command::Service(ServiceCommand::Install(args)) => service_install(explicit, args),
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config> {
    match explicit {
        Some(path) => Config::load(path),
        None => {
            let cwd =
                std::env::current_dir().map_err(|e| Error::io("reading current folder", ".", e))?;
            Config::discover(&cwd)
        }
    }
}

/// The store, with the events it commits also appended to the event log (commands record events
/// too: a submit, a cancel).
fn open_store(config: &Config) -> Result<SqliteStore> {
    state::ensure_dir(&config.state_dir())?;
    Ok(
        SqliteStore::open(&config.db_path())?
            .with_event_log(std::sync::Arc::new(event_log(config))),
    )
}

fn event_log(config: &Config) -> crate::logfile::EventLog {
    crate::logfile::EventLog::new(
        config.event_log_path(),
        config.daemon.log_max_size,
        config.daemon.log_backups,
    )
}

fn print_json(value: &(impl Serialize + ?Sized)) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("our types serialise")
    );
}

async fn init(explicit: Option<&Path>, args: InitArgs) -> Result<()> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir()
            .map_err(|e| Error::io("reading current folder", ".", e))?
            .join(CONFIG_FILE),
    };
    let existed = path.exists();
    if !existed || args.force {
        crate::output::write_atomic(&path, INIT_TEMPLATE.as_bytes())
            .map_err(|e| Error::io("writing", &path, e))?;
    }
    // Validates what is there, whether just written or kept.
    let config = Config::load(&path)?;
    open_store(&config)?;
    let created = !existed || args.force;
    if args.out.json {
        print_json(&json!({
            "config": config.path,
            "state_dir": config.state_dir(),
            "created": created,
        }));
    } else if created {
        println!(
            "Wrote {} and created {}/.\nNext: edit the [[worker]] command, then `agentq run`.",
            config.path.display(),
            STATE_DIR
        );
    } else {
        println!(
            "{} already exists; left as it is (--force overwrites it). State folder: {}",
            config.path.display(),
            config.state_dir().display()
        );
    }
    Ok(())
}

async fn doctor(explicit: Option<&Path>, json: bool) -> Result<()> {
    use crate::doctor::{self, Status};
    let cx = doctor::Context::from_process()?;
    let checks = doctor::run(explicit, &cx).await;
    if json {
        print_json(&checks);
    } else {
        print!("{}", doctor::render_text(&checks));
    }
    match checks.iter().filter(|c| c.status == Status::Fail).count() {
        0 => Ok(()),
        failed => Err(Error::DoctorFailed { failed }),
    }
}

fn service_install(explicit: Option<&Path>, args: ServiceInstallArgs) -> Result<()> {
    use crate::service::{self, Installed};
    let config = load_config(explicit)?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("finding the agentq binary", "/proc/self/exe", e))?;
    let path_env = std::env::var("PATH").unwrap_or_default();
    let svc = service::Service::for_config(&config, exe, path_env, args.user);
    let plan = service::plan(&svc, &|k| std::env::var(k).ok())?;
    if args.print {
        print!("{}", plan.text);
        eprintln!(
            "(not written; without --print it goes to {})",
            plan.path.display()
        );
        return Ok(());
    }
    let done = service::install(&plan, args.force, args.user)?;
    let what = match done {
        Installed::Written => "Wrote",
        Installed::Replaced => "Replaced",
        Installed::Unchanged => "Unchanged:",
    };
    println!("{what} {}", plan.path.display());
    println!("Start it now and at every boot with:");
    for line in &plan.enable {
        println!("  {line}");
    }
    Ok(())
}

fn read_prompt(arg: Option<String>, cap: u64) -> Result<String> {
    let prompt = match arg.as_deref() {
        None => {
            return Err(Error::Usage(
                "give the prompt as an argument, or - to read it from stdin".into(),
            ));
        }
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(cap + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading prompt from", "stdin", e))?;
            String::from_utf8(bytes).map_err(|e| {
                Error::Usage(format!(
                    "the prompt on stdin is not UTF-8 text (bad byte at offset {})",
                    e.utf8_error().valid_up_to()
                ))
            })?
        }
        Some(text) => text.to_string(),
    };
    if prompt.len() as u64 > cap {
        return Err(Error::Usage(format!(
            "the prompt is over max_prompt_size ({cap} bytes); raise [defaults] max_prompt_size or shorten it"
        )));
    }
    if prompt.trim().is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    Ok(prompt)
}

async fn submit(explicit: Option<&Path>, args: SubmitArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let ask = crate::route::Ask {
        worker: args.worker.as_deref(),
        pool: args.pool,
        class: args.class,
        complexity: args.complexity,
        timeout: args.timeout,
        max_attempts: args.max_attempts,
        priority: args.priority,
        max_memory: args.max_memory,
    };
    // Checked before reading stdin, so a wrong --worker does not swallow a piped prompt.
    crate::route::plan(&config, "", &ask)?;
    let prompt = read_prompt(args.prompt, config.max_prompt_size)?;
    let plan = crate::route::plan(&config, &prompt, &ask)?;
    let store = open_store(&config)?;
    let now = now_ms();
    let id = store
        .submit(&plan.new_task(prompt, "cli", None, now))
        .await?
        .id();
    wake::ring(&config.state_dir(), Some(plan.runs_on()));
    if !args.wait {
        if args.out.json {
            print_json(&json!({
                "id": id,
                "worker": plan.worker,
                "pool": plan.routing.pool,
                "class": plan.routing.class,
                "route_reason": plan.routing.route_reason,
            }));
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    let task = wait_for(&store, id, None).await?;
    print_result(&task, args.out.json)
}

/// Polls until the task ends. Polling is the client's cost, not the daemon's: it starts fast and
/// slows to four looks a second.
async fn wait_for(store: &dyn Store, id: i64, deadline: Option<Instant>) -> Result<Task> {
    let mut pause = Duration::from_millis(5);
    loop {
        let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
        if task.state.is_terminal() {
            return Ok(task);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::WaitTimeout {
                ids: id.to_string(),
                after: Duration::ZERO,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn not_succeeded(task: &Task) -> Error {
    Error::TaskNotSucceeded {
        id: task.id,
        state: task.state.to_string(),
        reason: task.error.clone(),
    }
}

fn print_result(task: &Task, json: bool) -> Result<()> {
    if json {
        print_json(&json!({
            "id": task.id,
            "state": task.state,
            "output": task.output,
            "exit_code": task.exit_code,
            "error": task.error,
        }));
    } else if let Some(out) = &task.output {
        print!("{out}");
        if !out.is_empty() && !out.ends_with('\n') {
            println!();
        }
    }
    match task.state {
        TaskState::Succeeded => Ok(()),
        _ => Err(not_succeeded(task)),
    }
}

#[derive(Serialize)]
struct WorkerStatus {
    name: String,
    agent: String,
    /// idle, running, stopped (no daemon), or unknown (tasks of a worker not in the config)
    state: String,
    task: Option<i64>,
    queued: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    cancelled: u64,
    paused_until: Option<Millis>,
    pause_reason: Option<String>,
    cost_today_usd: f64,
    tokens_today: i64,
    cost_total_usd: f64,
    session_id: Option<String>,
    /// What the current conversation has cost so far.
    session_cost_usd: Option<f64>,
}

async fn status(explicit: Option<&Path>, json: bool) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    let pid = state::holder(&config.state_dir())?;
    let mut sessions: Vec<(String, Option<crate::claude::SessionState>)> = Vec::new();
    for w in &config.workers {
        sessions.push((w.name.clone(), store.worker_session(&w.name).await?));
    }
    let counts = store.counts().await?;
    let now = now_ms();
    let pauses = store.pauses(now).await?;
    let (today, _) = crate::claude::local_day(chrono::Local::now());
    let spend = store.spend_since(today).await?;
    let spend_ever = store.spend_since(0).await?;
    let running = store
        .list(&TaskFilter {
            state: Some(TaskState::Running),
            ..Default::default()
        })
        .await?;
    let pool_counts = store.pool_counts().await?;
    // The pool's row: when agentq.toml has a [pool], or tasks were submitted to it.
    let mut names: Vec<(String, String)> = config
        .workers
        .iter()
        .chain(config.pool.defined.then_some(&config.pool.worker))
        .map(|w| (w.name.clone(), w.agent.kind().to_string()))
        .collect();
    for c in &counts {
        if !names.iter().any(|(n, _)| n == &c.worker) {
            let agent = config
                .settings_of(&c.worker)
                .map_or("-", |w| w.agent.kind());
            names.push((c.worker.clone(), agent.into()));
        }
    }
    let workers: Vec<WorkerStatus> = names
        .into_iter()
        .map(|(name, agent)| {
            let c = counts
                .iter()
                .find(|c| c.worker == name)
                .cloned()
                .unwrap_or_default();
            // The worker's own agent; its tasks in the pool show in the pool's line.
            let task = running
                .iter()
                .find(|t| t.worker == name && !t.pool)
                .map(|t| t.id);
            let pause = pauses.iter().find(|p| p.worker == name);
            let spent = spend.iter().find(|s| s.worker == name);
            let cost_total_usd = spend_ever
                .iter()
                .find(|s| s.worker == name)
                .map_or(0.0, |s| s.cost_usd);
            let session = sessions
                .iter()
                .find(|(w, _)| *w == name)
                .and_then(|(_, s)| s.as_ref());
            let session_id = session.map(|s| s.id.clone());
            let session_cost_usd = session.map(|s| s.cost_usd);
            let state = match (pid, config.settings_of(&name), task, pause) {
                (_, None, _, _) => "not in config".to_string(),
                (None, _, _, _) => "stopped".to_string(),
                (Some(_), _, _, None) if name == POOL => {
                    if running.iter().any(|t| t.pool) {
                        "running".to_string()
                    } else {
                        "idle".to_string()
                    }
                }
                (Some(_), _, Some(_), _) => "running".to_string(),
                (_, _, _, Some(p)) if p.errored() => format!("errored: {}", p.reason),
                (Some(_), _, None, Some(p)) => format!("paused until {}", short_time(p.until)),
                (Some(_), _, None, None) => "idle".to_string(),
            };
            // Its tasks running in the pool are counted in its row; say so beside its state.
            let in_pool = running
                .iter()
                .filter(|t| t.worker == name && t.pool && name != POOL)
                .count();
            let state = match in_pool {
                0 => state,
                n => format!("{state}, {n} in the pool"),
            };
            WorkerStatus {
                name,
                agent,
                state,
                task,
                paused_until: pause.map(|p| p.until),
                pause_reason: pause.map(|p| p.reason.clone()),
                cost_today_usd: spent.map_or(0.0, |s| s.cost_usd),
                cost_total_usd,
                session_id,
                session_cost_usd,
                tokens_today: spent.map_or(0, |s| s.input_tokens + s.output_tokens),
                queued: c.queued,
                running: c.running,
                succeeded: c.succeeded,
                failed: c.failed,
                dead: c.dead,
                cancelled: c.cancelled,
            }
        })
        .collect();
    let total = |f: fn(&WorkerStatus) -> u64| workers.iter().map(f).sum::<u64>();
    let totals = json!({
        "queued": total(|w| w.queued),
        "running": total(|w| w.running),
        "succeeded": total(|w| w.succeeded),
        "failed": total(|w| w.failed),
        "dead": total(|w| w.dead),
        "cancelled": total(|w| w.cancelled),
    });
    // Occupancy from the same read as the running list, so the two agree.
    let pool_tasks: Vec<i64> = running.iter().filter(|t| t.pool).map(|t| t.id).collect();
    let pool_running = pool_tasks.len();
    if json {
        print_json(&json!({
            "daemon": { "running": pid.is_some(), "pid": pid },
            "config": config.path,
            "workers": workers,
            "pool": {
                "max_workers": config.pool.max_workers,
                "running": pool_running,
                "queued": pool_counts.queued,
                "tasks": pool_tasks,
            },
            "classes": { "long": pool_counts.long, "short": pool_counts.short },
            "totals": totals,
        }));
        return Ok(());
    }
    match pid {
        Some(pid) => println!("daemon: running (pid {pid})  {}", config.root.display()),
        None => println!(
            "daemon: not running (start it with `agentq run`)  {}",
            config.root.display()
        ),
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.agent.clone(),
                // An errored worker's reason is long: it goes below the table.
                if w.state.starts_with("errored") {
                    "errored".to_string()
                } else {
                    w.state.clone()
                },
                w.task.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                w.queued.to_string(),
                w.succeeded.to_string(),
                w.failed.to_string(),
                w.dead.to_string(),
                w.cancelled.to_string(),
                w.session_id
                    .as_deref()
                    .map(|s| s.chars().take(8).collect())
                    .unwrap_or_else(|| "-".into()),
                format!("${:.2}", w.cost_today_usd),
            ]
        })
        .collect();
    print_table(
        &[
            "WORKER",
            "AGENT",
            "STATE",
            "TASK",
            "QUEUED",
            "DONE",
            "FAILED",
            "DEAD",
            "CANCELLED",
            "SESSION",
            "COST TODAY",
        ],
        &rows,
    );
    for w in workers.iter().filter(|w| w.pause_reason.is_some()) {
        let reason = w.pause_reason.as_deref().unwrap_or("");
        if w.state.starts_with("errored") {
            println!(
                "{} errored: {reason}; `agentq worker restart {}` clears it",
                w.name, w.name
            );
        } else {
            println!("{} paused: {reason}", w.name);
        }
    }
    let ids: Vec<String> = pool_tasks.iter().map(i64::to_string).collect();
    println!(
        "pool: {} of {} running{}, {} queued; classes: {} long, {} short",
        pool_running,
        config.pool.max_workers,
        if ids.is_empty() {
            String::new()
        } else {
            format!(" (tasks {})", ids.join(", "))
        },
        pool_counts.queued,
        pool_counts.long,
        pool_counts.short
    );
    println!(
        "total: {} queued, {} running, {} succeeded, {} failed, {} dead, {} cancelled",
        totals["queued"],
        totals["running"],
        totals["succeeded"],
        totals["failed"],
        totals["dead"],
        totals["cancelled"]
    );
    Ok(())
}

async fn tasks(explicit: Option<&Path>, args: TasksArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    let filter = TaskFilter {
        state: args.state,
        worker: args.worker,
        limit: (args.limit > 0).then_some(args.limit),
    };
    let list = store.list(&filter).await?;
    if args.out.json {
        print_json(&list);
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.worker.clone(),
                t.state.to_string(),
                match (&t.class, t.pool) {
                    (Some(c), true) => format!("{c}, pool"),
                    (Some(c), false) => c.clone(),
                    (None, true) => "pool".into(),
                    (None, false) => "-".into(),
                },
                t.priority.to_string(),
                format!("{}/{}", t.attempts, t.max_attempts),
                ago(now, t.created_at),
                t.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                t.prompt_preview.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "WORKER", "STATE", "CLASS", "PRI", "TRIES", "AGE", "TOOK", "PROMPT",
        ],
        &rows,
    );
    if filter.limit.is_some_and(|l| list.len() as u32 == l) {
        eprintln!("(the latest {}; --limit 0 shows all)", list.len());
    }
    Ok(())
}

async fn show(explicit: Option<&Path>, args: IdArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    let id = args.id;
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    let events = store.events_of(id).await?;
    let attempts = store.attempts_of(id).await?;
    let agent_log = config
        .task_log_dir(&task.worker)
        .join(format!("task_{id}.log"));
    let agent_log = agent_log.exists().then_some(agent_log);
    if args.out.json {
        let mut record = serde_json::to_value(TaskRecord {
            task: &task,
            events: &events,
        })
        .expect("our types serialise");
        record["attempt_history"] = serde_json::to_value(&attempts).expect("our types serialise");
        record["agent_log"] = serde_json::to_value(&agent_log).expect("paths serialise");
        print_json(&record);
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("task {}  {}", task.id, task.state);
    println!("worker:      {}", task.worker);
    let r = &task.routing;
    if let Some(class) = &r.class {
        println!(
            "class:       {class}{}",
            r.complexity
                .map(|c| format!(" (complexity {c:.2})"))
                .unwrap_or_default()
        );
    }
    println!(
        "runs on:     {}{}",
        if r.pool { "the pool" } else { "its worker" },
        r.route_reason
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    );
    if let Some(max) = r.max_memory {
        println!("max memory:  {}", crate::memory::human(max));
    }
    println!("source:      {}", task.source);
    println!("priority:    {}", task.priority);
    println!("attempts:    {} of {}", task.attempts, task.max_attempts);
    println!("created:     {}", when(task.created_at));
    println!("started:     {}", opt(task.started_at.map(when)));
    println!("finished:    {}", opt(task.finished_at.map(when)));
    if task.state == TaskState::Queued && task.not_before > now_ms() {
        println!("not before:  {}", when(task.not_before));
    }
    if let Some(owner) = &task.owner {
        println!("held by:     {owner}");
    }
    println!("duration:    {}", opt(task.duration_ms.map(fmt_ms)));
    println!(
        "memory peak: {}",
        opt(task.memory_peak_mb.map(|m| format!("{m} MiB")))
    );
    println!(
        "exit code:   {}",
        opt(task.exit_code.map(|c| c.to_string()))
    );
    println!("error:       {}", opt(task.error.clone()));
    if let Some(log) = &agent_log {
        println!("agent log:   {}", log.display());
    }
    if !attempts.is_empty() {
        println!("\n--- attempts");
        for a in &attempts {
            let figures = [
                a.duration_ms.map(fmt_ms),
                a.memory_peak_mb.map(|m| format!("{m} MiB")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            println!(
                "{}  #{:<3} {:<12} {}{}",
                when(a.ended_at),
                a.attempt,
                a.outcome,
                a.reason.as_deref().unwrap_or(""),
                if figures.is_empty() {
                    String::new()
                } else {
                    format!(" ({figures})")
                }
            );
        }
    }
    section("prompt", &task.prompt);
    section("output", task.output.as_deref().unwrap_or(""));
    section("stderr (end)", task.stderr_tail.as_deref().unwrap_or(""));
    println!("\n--- events");
    for e in &events {
        println!("{}  {:<16} {}", when(e.ts), e.kind, e.message);
    }
    Ok(())
}

/// Classifies a prompt by the `[classify]` rules of the config, or the seed's defaults where
/// there is no config.
fn classify(explicit: Option<&Path>, args: crate::cli::ClassifyArgs) -> Result<()> {
    let config = match load_config(explicit) {
        Ok(config) => Some(config),
        Err(Error::ConfigNotFound { .. }) if explicit.is_none() && args.worker.is_none() => None,
        Err(e) => return Err(e),
    };
    let cap = config.as_ref().map_or(10 << 20, |c| c.max_prompt_size);
    let prompt = read_prompt(args.prompt, cap)?;
    let rules = config
        .as_ref()
        .map(|c| c.classify.clone())
        .unwrap_or_default();
    let v = crate::classify::classify(&prompt, &rules, args.class, args.complexity);
    // Where it would run: with a worker named, or one to default to.
    let ask = crate::route::Ask {
        worker: args.worker.as_deref(),
        class: args.class,
        complexity: args.complexity,
        ..Default::default()
    };
    let plan = match &config {
        Some(c) if args.worker.is_some() => Some(crate::route::plan(c, &prompt, &ask)?),
        Some(c) => crate::route::plan(c, &prompt, &ask).ok(),
        None => None,
    };
    if args.out.json {
        let mut out = serde_json::to_value(&v).expect("verdicts serialise");
        if let Some(plan) = &plan {
            out["worker"] = json!(plan.worker);
            out["pool"] = json!(plan.routing.pool);
            out["route_reason"] = json!(plan.routing.route_reason);
        }
        print_json(&out);
        return Ok(());
    }
    println!("{}", v.class);
    println!(
        "complexity: {:.2} ({})",
        v.complexity,
        if v.complexity_given {
            "given"
        } else {
            "estimated from the prompt"
        }
    );
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(", ")
        }
    };
    println!("long keywords: {}", list(&v.long_keywords));
    println!("short keywords: {}", list(&v.short_keywords));
    println!("why: {}", v.reason);
    if let Some(plan) = &plan {
        println!(
            "runs on: {} ({})",
            if plan.routing.pool {
                format!("the pool, with {}'s settings", plan.worker)
            } else {
                format!("worker {}", plan.worker)
            },
            plan.routing.route_reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Reads the JSON-lines event log (all its rotated files), and with `--follow` goes on printing
/// what is appended, like `tail -F`, until interrupted.
async fn events(explicit: Option<&Path>, args: EventsArgs) -> Result<()> {
    use crate::logfile::{LogEvent, LogFilter};
    let config = load_config(explicit)?;
    let path = config.event_log_path();
    let filter = LogFilter {
        worker: args.worker,
        task: args.task,
        kind: args.kind,
    };
    let json = args.out.json;
    let print = move |e: &LogEvent| {
        if json {
            // Following: one event per line, as in the log itself, so the output can be piped on.
            println!("{}", serde_json::to_string(e).expect("events serialise"));
            return;
        }
        let task = e
            .task
            .map(|t| format!("task {t}"))
            .unwrap_or_else(|| "-".into());
        let worker = e.worker.as_deref().unwrap_or("-");
        println!(
            "{}  {worker:<12} {task:<10} {:<16} {}",
            when(e.ts),
            e.kind,
            e.message
        );
    };
    let from_store = crate::logfile::generations(&path).is_empty();
    let list = if from_store {
        // No log file (yet, or a database from before there was one): the store has the events.
        stored_events(&config, &filter).await?
    } else {
        crate::logfile::read_events(&path, &filter)
            .map_err(|e| Error::io("reading the event log", &path, e))?
    };
    let from = if args.limit > 0 {
        list.len().saturating_sub(args.limit as usize)
    } else {
        0
    };
    if json && !args.follow {
        print_json(&list[from..]);
        return Ok(());
    }
    for e in &list[from..] {
        print(e);
    }
    if !args.follow {
        return Ok(());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
    }
    // Read again from the start and skip what was printed: following from the end would lose
    // what was appended between the read above and the follow's start. Skipping goes up to the
    // last event printed (found again by its content), or as many events as were read if it is
    // gone (the log rotated it away meanwhile).
    // From the store: the same events may reach the log a moment later (a writer appends them
    // after its commit), so those printed are skipped by what they are, not by position.
    let from_db: std::collections::HashSet<String> = if from_store {
        list.iter()
            .map(|e| serde_json::to_string(e).expect("events serialise"))
            .collect()
    } else {
        Default::default()
    };
    let mut last = if from_store {
        None
    } else {
        list.last().cloned()
    };
    let mut seen = list.len();
    crate::logfile::follow(
        &path,
        &filter,
        true,
        std::time::Duration::from_millis(200),
        stop,
        |e| match &last {
            Some(l) if seen > 0 => {
                seen -= 1;
                if e == *l {
                    last = None;
                }
            }
            _ if !from_db.is_empty()
                && from_db.contains(&serde_json::to_string(&e).expect("events serialise")) => {}
            _ => print(&e),
        },
    )
    .await
    .map_err(|e| Error::io("following the event log", &path, e))
}

/// The store's events as lines of the event log.
async fn stored_events(
    config: &Config,
    filter: &crate::logfile::LogFilter,
) -> Result<Vec<crate::logfile::LogEvent>> {
    let store = SqliteStore::open(&config.db_path())?;
    let events = store
        .events(&crate::store::EventFilter {
            task_id: filter.task,
            worker: filter.worker.clone(),
            kind: filter.kind.clone(),
            limit: None,
        })
        .await?;
    Ok(events.iter().map(crate::store::Event::to_log).collect())
}

fn section(title: &str, body: &str) {
    println!("\n--- {title}");
    if body.is_empty() {
        println!("(none)");
    } else {
        print!("{body}");
        if !body.ends_with('\n') {
            println!();
        }
    }
}

async fn result(explicit: Option<&Path>, args: IdArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    let id = args.id;
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    if !task.state.is_terminal() {
        return Err(Error::WrongState {
            id,
            state: task.state.to_string(),
            what: "it has no result yet; `agentq wait ID` waits for it",
        });
    }
    print_result(&task, args.out.json)
}

async fn wait_cmd(explicit: Option<&Path>, args: WaitArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut ended = Vec::new();
    for &id in &args.ids {
        match wait_for(&store, id, deadline).await {
            Ok(task) => ended.push(task),
            Err(Error::WaitTimeout { .. }) => {
                let pending: Vec<String> = args
                    .ids
                    .iter()
                    .filter(|i| !ended.iter().any(|t: &Task| t.id == **i))
                    .map(|i| i.to_string())
                    .collect();
                return Err(Error::WaitTimeout {
                    ids: pending.join(", "),
                    after: args.timeout.unwrap_or_default(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if args.out.json {
        let list: Vec<_> = ended
            .iter()
            .map(|t| json!({ "id": t.id, "state": t.state, "error": t.error }))
            .collect();
        print_json(&list);
    } else {
        for t in &ended {
            match &t.error {
                Some(e) if t.state != TaskState::Succeeded => println!("{} {}: {e}", t.id, t.state),
                _ => println!("{} {}", t.id, t.state),
            }
        }
    }
    match ended.iter().find(|t| t.state != TaskState::Succeeded) {
        Some(t) => Err(not_succeeded(t)),
        None => Ok(()),
    }
}

async fn cancel(explicit: Option<&Path>, args: IdsArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    for_each_id("cancel", &args, |id| {
        let (store, state_dir) = (&store, config.state_dir());
        async move {
            let was = store.cancel(id, now_ms()).await?;
            if was == TaskState::Running {
                // The runner checks its claim when rung, and stops the agent.
                if let Some(task) = store.get(id).await? {
                    wake::ring_check(&state_dir, task.runs_on());
                }
            }
            Ok((
                format!("{id} cancelled (was {was})"),
                json!({ "id": id, "was": was, "state": TaskState::Cancelled }),
            ))
        }
    })
    .await
}

async fn retry(explicit: Option<&Path>, args: IdsArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config)?;
    for_each_id("retry", &args, |id| {
        let (store, state_dir) = (&store, config.state_dir());
        async move {
            store.retry(id, now_ms()).await?;
            let task = store.get(id).await?;
            wake::ring(&state_dir, task.as_ref().map(Task::runs_on));
            Ok((
                format!("{id} queued again"),
                json!({ "id": id, "state": TaskState::Queued }),
            ))
        }
    })
    .await
}

/// Applies `act` to every id, even after one fails, and reports each: a line of text, or one JSON
/// array with an `error` entry for each failure. Fails at the end if any id failed.
async fn for_each_id<F, Fut>(verb: &'static str, args: &IdsArgs, act: F) -> Result<()>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<(String, serde_json::Value)>>,
{
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &id in &args.ids {
        match act(id).await {
            Ok((line, value)) => {
                if !args.out.json {
                    println!("{line}");
                }
                report.push(value);
            }
            Err(e @ (Error::NoSuchTask { .. } | Error::WrongState { .. })) => {
                if !args.out.json {
                    eprintln!("agentq: {e}");
                }
                report.push(json!({ "id": id, "error": e.to_string() }));
                failures.push(id);
            }
            // The store itself failed: the rest would fail the same way.
            Err(e) => return Err(e),
        }
    }
    if args.out.json {
        print_json(&report);
    }
    match failures.as_slice() {
        [] => Ok(()),
        ids => Err(Error::Usage(format!(
            "could not {verb} {} of {} task(s): {}",
            ids.len(),
            args.ids.len(),
            ids.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn reset_session(explicit: Option<&Path>, args: WorkerNameArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let worker = config.resolve_worker(Some(&args.name))?;
    if worker.agent.kind() != "claude" {
        return Err(Error::Usage(format!(
            "worker {:?} runs agent = \"{}\", which keeps no conversation",
            worker.name,
            worker.agent.kind()
        )));
    }
    let store = open_store(&config)?;
    let had = store
        .reset_worker_session(
            &worker.name,
            "asked by `agentq worker reset-session`",
            now_ms(),
        )
        .await?;
    if args.out.json {
        print_json(&json!({ "worker": worker.name, "had_session": had }));
    } else {
        println!("{}: the next task starts a new conversation", worker.name);
    }
    Ok(())
}

async fn pause(explicit: Option<&Path>, args: PauseArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let worker = config.resolve_queue(&args.name)?;
    let store = open_store(&config)?;
    let now = now_ms();
    // "Until resumed" is a pause a century long.
    let until = now
        + args
            .duration
            .map_or(100 * 365 * 86_400_000, |d| d.as_millis() as i64);
    store
        .pause_worker(&worker.name, until, "paused by `agentq worker pause`", now)
        .await?;
    if args.out.json {
        print_json(&json!({ "worker": worker.name, "paused_until": until }));
    } else if args.duration.is_some() {
        println!("{}: paused until {}", worker.name, when(until));
    } else {
        println!(
            "{}: paused until `agentq worker resume {}`",
            worker.name, worker.name
        );
    }
    Ok(())
}

/// Clears an errored worker (or a pause) and has the daemon replace its long-lived process.
async fn restart(explicit: Option<&Path>, args: WorkerNameArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let worker = config.resolve_worker(Some(&args.name))?;
    let store = open_store(&config)?;
    let cleared = store.restart_worker(&worker.name, now_ms()).await?;
    wake::ring_restart(&config.state_dir(), &worker.name);
    let running = state::holder(&config.state_dir())?.is_some();
    if args.out.json {
        print_json(&json!({
            "worker": worker.name,
            "was_errored": cleared.as_ref().is_some_and(|p| p.errored()),
            "was_paused": cleared.as_ref().is_some_and(|p| !p.errored()),
            "daemon_running": running,
        }));
        return Ok(());
    }
    match &cleared {
        Some(p) if p.errored() => {
            println!("{}: no longer errored (was: {})", worker.name, p.reason)
        }
        Some(p) => println!("{}: no longer paused (was: {})", worker.name, p.reason),
        None => println!("{}: restarted", worker.name),
    }
    if !running {
        println!("no daemon is running; the worker starts with the next `agentq run`");
    }
    Ok(())
}

async fn resume(explicit: Option<&Path>, args: WorkerNameArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let worker = config.resolve_queue(&args.name)?;
    let store = open_store(&config)?;
    let was = store
        .resume_worker(&worker.name, "resumed by `agentq worker resume`", now_ms())
        .await?;
    // Everyone: the worker's tasks in the pool wait for it too.
    wake::ring(&config.state_dir(), None);
    if args.out.json {
        print_json(&json!({ "worker": worker.name, "was_paused": was }));
    } else if was {
        println!("{}: resumed", worker.name);
    } else if store
        .pauses(now_ms())
        .await?
        .iter()
        .any(|p| p.worker == worker.name && p.errored())
    {
        println!(
            "{}: errored, not paused; `agentq worker restart {}` clears it",
            worker.name, worker.name
        );
    } else {
        println!("{}: was not paused", worker.name);
    }
    Ok(())
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn when(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time of day for a table, with the date when it is not today.
fn short_time(ms: Millis) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) if t.date_naive() == chrono::Local::now().date_naive() => {
            t.format("%H:%M").to_string()
        }
        Some(_) if ms - now_ms() > 50 * 365 * 86_400_000 => "resumed by hand".to_string(),
        Some(t) => t.format("%b %d %H:%M").to_string(),
        None => when(ms),
    }
}

fn fmt_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs((ms / 1000) as u64)).to_string()
    }
}

fn ago(now: Millis, then: Millis) -> String {
    let secs = ((now - then).max(0) / 1000) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
