//! What each command does. Every command that prints data prints it as text for people or, with
//! `--json`, as one JSON document on stdout; messages for people go to stderr.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use crate::cli::{
    CleanArgs, Cli, Command, ConfigCommand, EventsArgs, IdArgs, IdsArgs, ImportCommand,
    ImportPm2Args, InitArgs, PauseArgs, ServiceCommand, ServiceInstallArgs, ServiceUninstallArgs,
    StatusArgs, SubmitArgs, TasksArgs, WaitArgs, WatchArgs, WorkerCommand, WorkerNameArgs,
};
use agentq_core::domain::TaskState;
use agentq_core::error::{Error, Result};
use agentq_core::state;
use agentq_core::wake;
use agentq_daemon::config::{CONFIG_FILE, Config, INIT_TEMPLATE, STATE_DIR};
use agentq_daemon::daemon::{self, Shutdown};
use agentq_store::{Millis, Store, Task, TaskFilter, now_ms};

pub async fn dispatch(cli: Cli) -> Result<()> {
    let explicit = cli.config.as_deref();
    match cli.command {
        Command::Init(args) => init(explicit, args).await,
        Command::Run(args) => {
            let mut config = load_config(explicit)?;
            if let Some(addr) = &args.http {
                let listen = agentq_daemon::config::HttpSettings::parse_listen(
                    addr,
                    config.http.allow_remote,
                )
                .map_err(|m| Error::Usage(format!("--http: {m}")))?;
                config.http.listen = Some(listen);
            }
            if let Some(host) = &args.host {
                agentq_daemon::config::validate_host(host)
                    .map_err(|m| Error::Usage(format!("--host: {m}")))?;
                config.daemon.host = host.clone();
            }
            let shutdown = Shutdown::on_signals(config.daemon.shutdown_grace)
                .map_err(|e| Error::io("listening for signals in", &config.root, e))?;
            daemon::run(config, shutdown).await
        }
        Command::Submit(args) => submit(explicit, args).await,
        Command::Status(args) => status(explicit, args).await,
        Command::Top(args) => top(explicit, args).await,
        Command::Tasks(args) => tasks(explicit, args).await,
        Command::Show(args) => show(explicit, args).await,
        Command::Events(args) => events(explicit, args).await,
        Command::Logs(args) => crate::logs::run(explicit, args).await,
        Command::Classify(args) => classify(explicit, args),
        Command::Clean(args) => clean(explicit, args).await,
        Command::Diff(args) => crate::worktrees::diff(explicit, args).await,
        Command::Merge(args) => crate::worktrees::merge(explicit, args).await,
        Command::Discard(args) => crate::worktrees::discard(explicit, args).await,
        Command::Worktrees(args) => crate::worktrees::worktrees(explicit, args).await,
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
        Command::Service(ServiceCommand::Uninstall(args)) => service_uninstall(explicit, args),
        Command::Service(ServiceCommand::Run(args)) => {
            let config = config_path(explicit)?;
            crate::service::supervise(&config, &this_exe()?, args.env_file.as_deref()).await
        }
        Command::Config(ConfigCommand::Schema) => {
            print_json(&agentq_daemon::config::schema());
            Ok(())
        }
        Command::Config(ConfigCommand::Show(args)) => config_show(explicit, args.json),
        Command::Import(ImportCommand::Pm2(args)) => import_pm2(explicit, args),
        Command::Completions(args) => crate::manual::completions(args.shell),
        Command::Man(args) => crate::manual::man(args.dir.as_deref()),
        Command::Guard(args) => {
            agentq_agents::procs::guard(&args.owner);
            Ok(())
        }
        Command::Token => {
            let config = load_config(explicit)?;
            println!("{}", agentq_daemon::token::ensure(&config.state_dir())?);
            Ok(())
        }
    }
}

/// The agentq.toml a command would load, absolute, without reading it.
fn config_path(explicit: Option<&Path>) -> Result<std::path::PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading current folder", ".", e))?;
    match explicit {
        Some(path) => Ok(cwd.join(path)),
        None => Config::find(&cwd).ok_or(Error::ConfigNotFound { start: cwd }),
    }
}

pub(crate) fn load_config(explicit: Option<&Path>) -> Result<Config> {
    match explicit {
        Some(path) => Config::load(path),
        None => {
            let cwd =
                std::env::current_dir().map_err(|e| Error::io("reading current folder", ".", e))?;
            Config::discover(&cwd)
        }
    }
}

/// The store the config names (SQLite, or PostgreSQL with `[store] url`), with the events it
/// commits also appended to the event log (commands record events too: a submit, a cancel).
pub(crate) async fn open_store(config: &Config) -> Result<Box<dyn Store>> {
    config
        .open_store(Some(std::sync::Arc::new(event_log(config))))
        .await
}

fn event_log(config: &Config) -> agentq_core::logfile::EventLog {
    agentq_core::logfile::EventLog::new(
        config.event_log_path(),
        config.daemon.log_max_size,
        config.daemon.log_backups,
    )
}

/// Rings the daemon of `config`'s state folder, if one listens.
pub(crate) fn doorbell(config: &Config) -> impl Fn(wake::Ring) + Send + Sync + use<> {
    let state_dir = config.state_dir();
    move |ring| wake::send_ring(&state_dir, &ring)
}

pub(crate) fn print_json(value: &(impl Serialize + ?Sized)) {
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
        agentq_core::files::write_atomic(&path, INIT_TEMPLATE.as_bytes())
            .map_err(|e| Error::io("writing", &path, e))?;
    }
    // Validates what is there, whether just written or kept.
    let config = Config::load(&path)?;
    open_store(&config).await?;
    agentq_daemon::token::ensure(&config.state_dir())?;
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

/// The settings agentq takes from the config, every default filled in.
fn config_show(explicit: Option<&Path>, json: bool) -> Result<()> {
    let config = load_config(explicit)?;
    let shown = agentq_daemon::effective::Effective::of(&config);
    if json {
        print_json(&shown);
    } else {
        print!("{}", shown.to_toml(&config));
    }
    Ok(())
}

/// A PM2 ecosystem file's apps as workers: printed as TOML, or with `--write` added to agentq.toml
/// (never over a worker of the same name, and only when the file then still loads); what was left
/// out goes to stderr.
fn import_pm2(explicit: Option<&Path>, args: ImportPm2Args) -> Result<()> {
    use crate::import;
    let ecosystem = import::read_ecosystem(&args.file)?;
    let base = std::path::absolute(&args.file)
        .map_err(|e| Error::io("resolving", &args.file, e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let shown = args.file.display().to_string();
    let mut imported = import::pm2(&ecosystem, &base, &shown)?;
    let target = if args.write {
        let path = config_path(explicit).map_err(|e| match e {
            Error::ConfigNotFound { start } => Error::Usage(format!(
                "--write adds the workers to agentq.toml, and there is none in {} or above; run `agentq init` first, or leave out --write and copy the printed workers into your file",
                start.display()
            )),
            e => e,
        })?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let config = Config::parse(&path, &text)?;
        imported.workers.retain(|w| {
            let taken = config.worker(&w.name).is_some();
            if taken {
                imported.notes.push(format!(
                    "app {0}: {1} has a worker named {0} already; not added",
                    w.name,
                    path.display()
                ));
            }
            !taken
        });
        Some((path, text))
    } else {
        None
    };
    for note in &imported.notes {
        eprintln!("agentq import pm2: {note}");
    }
    if imported.workers.iter().any(|w| w.agent == "command") {
        eprintln!(
            "agentq import pm2: note: agentq runs a command worker's command once per task, with the prompt on stdin, where PM2 kept a process running; a script that polls for work itself (as a claude wrapper does) is better replaced by agent = \"claude\", and the restart settings apply to a Claude worker in mode = \"persistent\""
        );
    }
    if imported.workers.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to {} from {shown}: no app could be imported (see above)",
            if args.write { "add" } else { "print" }
        )));
    }
    let workers = import::to_toml(&imported.workers);
    let names = || {
        imported
            .workers
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match target {
        None => {
            // What is printed loads as a config: a mistake here is agentq's, not the file's.
            Config::parse(&base.join(CONFIG_FILE), &workers)?;
            print!("# Imported from {shown} by `agentq import pm2`.\n{workers}");
        }
        Some((path, text)) => {
            let mut new = text;
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&format!(
                "\n# Imported from {shown} by `agentq import pm2`.\n{workers}"
            ));
            Config::parse(&path, &new).map_err(|e| {
                Error::Usage(format!(
                    "{path} would not load with the imported workers, so it is left as it is: {e}",
                    path = path.display()
                ))
            })?;
            agentq_core::files::write_atomic(&path, new.as_bytes())
                .map_err(|e| Error::io("writing", &path, e))?;
            println!("Added {} to {}", names(), path.display());
        }
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

fn this_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe()
        .map_err(|e| Error::io("finding the agentq binary", "this process's executable", e))
}

/// The service of this project (`user`: the user's), carrying `env`, and where this OS keeps it;
/// without a `config` (one that does not load), that of the agentq.toml a command would load.
fn service_plan(
    explicit: Option<&Path>,
    config: Option<&Config>,
    user: bool,
    env: crate::service::Carried,
) -> Result<(crate::service::Service, crate::service::Plan)> {
    use crate::service::Service;
    let (exe, path_env) = (this_exe()?, std::env::var("PATH").unwrap_or_default());
    let svc = match config {
        Some(config) => Service::for_config(config, exe, path_env, user),
        None => Service::for_file(&config_path(explicit)?, exe, path_env, user),
    };
    let svc = Service { env, ..svc };
    let plan = crate::service::plan(&svc, &|k| std::env::var(k).ok())?;
    Ok((svc, plan))
}

/// Runs the service manager's commands, giving each the service's stopping time and a minute
/// more (stopping it is what takes longest).
fn service_tools(
    svc: &crate::service::Service,
) -> impl FnMut(&[&str]) -> std::io::Result<crate::service::Ran> + use<> {
    let limit = svc.stop_timeout + Duration::from_secs(60);
    move |argv| crate::service::run_tool(argv, limit)
}

fn service_install(explicit: Option<&Path>, args: ServiceInstallArgs) -> Result<()> {
    use crate::service::{self, Carried, Installed, Kind};
    let config = load_config(explicit)?;
    let env = service::carried(&args.env, &|k| std::env::var(k).ok())?;
    if args.print {
        // The variables' values are secrets: shown as *** (a launchd job holds them itself).
        let hidden = Carried(env.0.keys().map(|k| (k.clone(), "***".into())).collect());
        let (_, plan) = service_plan(explicit, Some(&config), args.user, hidden)?;
        print!("{}", plan.text);
        eprintln!(
            "(not written; without --print it goes to {})",
            plan.path.display()
        );
        if !env.0.is_empty() {
            eprintln!(
                "(it carries {}, whose values are shown as ***{})",
                env.names(),
                match &plan.env_file {
                    Some(f) => format!(", in {}, readable by you only", f.path.display()),
                    None => String::new(),
                }
            );
        }
        return Ok(());
    }
    let (svc, plan) = service_plan(explicit, Some(&config), args.user, env)?;
    let mut tools = service_tools(&svc);
    // A task of this name that agentq has no copy of is someone else's: like a unit file that
    // differs, it is replaced only when asked to.
    if plan.kind == Kind::Task
        && !args.force
        && !plan.path.exists()
        && service::task_registered(&plan, &mut tools) == Some(true)
    {
        return Err(Error::Usage(format!(
            "Task Scheduler has a task {0} that agentq has no copy of (no {1}); look at it with `schtasks /Query /TN {0} /V /FO LIST`, then pass --force to replace it",
            plan.name,
            plan.path.display()
        )));
    }
    let done = service::install(&plan, args.force)?;
    let what = match done {
        Installed::Written => "Wrote",
        Installed::Replaced => "Replaced",
        Installed::Unchanged => "Unchanged:",
    };
    println!("{what} {}", plan.path.display());
    match &plan.env_file {
        Some(f) => println!(
            "Wrote {} (readable by you only), carrying {}",
            f.path.display(),
            svc.env.names()
        ),
        None if plan.private => println!("It carries {} (readable by you only)", svc.env.names()),
        None => println!(
            "It carries no variables (AGENTQ_DATABASE_URL and the agent CLIs' API variables are carried when set here; --env KEY adds one)"
        ),
    }
    if plan.kind == Kind::Task {
        service::register(&plan, &mut tools)?;
        println!(
            "Registered the task {} with Task Scheduler: it starts at each logon of yours.",
            plan.name
        );
        println!("Start it now with:");
    } else {
        println!("Start it now and at every boot with:");
    }
    for line in &plan.enable {
        println!("  {line}");
    }
    Ok(())
}

fn service_uninstall(explicit: Option<&Path>, args: ServiceUninstallArgs) -> Result<()> {
    use crate::service::{self, Found, Kind, Uninstalled};
    // A project whose config no longer loads can still have its service removed.
    let config = match load_config(explicit) {
        Ok(config) => Some(config),
        Err(e @ (Error::Config { .. } | Error::ConfigFile { .. })) => {
            eprintln!("({e}; removing its service all the same)");
            None
        }
        Err(e) => return Err(e),
    };
    let (svc, plan) = service_plan(explicit, config.as_ref(), args.user, Default::default())?;
    let mut tools = service_tools(&svc);
    let mut said = Vec::new();
    let done = service::uninstall(&plan, &svc.root, |plan| {
        said = service::stop(plan, &mut tools)?;
        Ok(())
    })?;
    match done {
        Uninstalled::Removed { env_file } => {
            for line in &said {
                println!("{line}");
            }
            println!("Removed {}", plan.path.display());
            if let Some(env) = env_file {
                println!("Removed {}", env.display());
            }
            for line in service::forget(&plan, &mut tools) {
                println!("{line}");
            }
        }
        Uninstalled::Nothing => {
            if plan.kind == Kind::Task && service::task_registered(&plan, &mut tools) == Some(true)
            {
                return Err(Error::Usage(format!(
                    "Task Scheduler has a task {0} that agentq has no copy of (no {1}), so it is left as it is; look at it with `schtasks /Query /TN {0} /V /FO LIST`, and delete it with `schtasks /Delete /TN {0} /F` if it is this folder's",
                    plan.name,
                    plan.path.display()
                )));
            }
            println!(
                "No agentq service is installed for {}: there is no {}",
                svc.root.display(),
                plan.path.display()
            );
            // Installed the other way (with --user, or without)?
            if plan.kind != Kind::Task {
                let other = service::Service {
                    user: !args.user,
                    ..svc.clone()
                };
                if let Ok(other) = service::plan(&other, &|k| std::env::var(k).ok())
                    && service::found(&other, &svc.root).is_ok_and(|f| f == Found::Ours)
                {
                    println!(
                        "There is a {} for it: {} (agentq service uninstall{})",
                        other.what(),
                        other.path.display(),
                        if other.user { " --user" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

fn read_prompt(arg: Option<String>, cap: u64) -> Result<String> {
    let prompt = read_input(arg, Some(cap))?;
    agentq_daemon::ops::check_prompt(&prompt, cap)?;
    Ok(prompt)
}

/// The PROMPT argument, or stdin's text for `-`. Of stdin, at most `cap` bytes and one more are
/// read, so that a prompt over the cap is refused without reading all of it.
fn read_input(arg: Option<String>, cap: Option<u64>) -> Result<String> {
    match arg.as_deref() {
        None => Err(Error::Usage(
            "give the prompt as an argument, or - to read it from stdin".into(),
        )),
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(cap.map_or(u64::MAX, |c| c + 1))
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading prompt from", "stdin", e))?;
            String::from_utf8(bytes).map_err(|e| {
                Error::Usage(format!(
                    "the prompt on stdin is not UTF-8 text (bad byte at offset {})",
                    e.utf8_error().valid_up_to()
                ))
            })
        }
        Some(text) => Ok(text.to_string()),
    }
}

async fn submit(explicit: Option<&Path>, args: SubmitArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let ask = agentq_daemon::route::Ask {
        worker: args.worker.as_deref(),
        pool: args.pool,
        class: args.class,
        complexity: args.complexity,
        timeout: args.timeout,
        max_attempts: args.max_attempts,
        priority: args.priority,
        max_memory: args.max_memory,
        isolation: args.isolation,
        repo: args.repo.as_deref(),
        base: args.base.as_deref(),
        branch: args.branch.as_deref(),
    };
    if args.lines && args.branch.is_some() {
        return Err(Error::Usage(
            "--branch names one task's branch: it cannot go with --lines, whose tasks each get their own".into(),
        ));
    }
    // Checked before reading stdin, so a wrong --worker does not swallow a piped prompt.
    agentq_daemon::route::settings(&config, &ask)?;
    if args.lines {
        let text = read_input(args.prompt, None)?;
        return submit_lines(&config, &ask, &text, args.out.json).await;
    }
    let prompt = read_prompt(args.prompt, config.max_prompt_size)?;
    let store = open_store(&config).await?;
    let bell = doorbell(&config);
    let (id, submitted) =
        agentq_daemon::ops::submit(&config, &*store, &bell, prompt, &ask, "cli").await?;
    if !(args.wait || args.follow) {
        if args.out.json {
            print_json(&submitted);
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    let task = wait_telling(&config, &*store, id, args.follow).await?;
    print_result(&task, args.out.json)
}

/// Waits for the task to end as [`wait_for`] does, telling on stderr what happens to it (each of
/// its events: queued, started, retrying and why) and, with `follow`, its transcript as it comes.
async fn wait_telling(config: &Config, store: &dyn Store, id: i64, follow: bool) -> Result<Task> {
    let mut err = std::io::stderr();
    let mut told = 0i64;
    let mut transcript: Option<agentq_daemon::watch::TaskFollow> = None;
    let style = crate::logs::Style {
        color: std::io::IsTerminal::is_terminal(&err) && agentq_platform::term::color_allowed(),
        prefix: false,
    };
    let mut pause = Duration::from_millis(5);
    loop {
        // The task is read first, so that what it did before it ended is all told below.
        let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
        // Events and transcript lines, told in the order they happened; within a millisecond, a
        // task's queueing and start come before what its agent wrote, and its end after.
        let mut news: Vec<((Millis, u8), Vec<String>)> = Vec::new();
        if follow {
            let cursor = transcript
                .get_or_insert_with(|| agentq_daemon::watch::TaskFollow::new(config, &task, 0));
            for entry in cursor.next().await?.entries {
                news.push((
                    (entry.ts, 1),
                    crate::logs::render(&task.worker, id, &entry, style),
                ));
            }
        }
        for e in store.events_of(id).await? {
            if e.id <= told {
                continue;
            }
            told = e.id;
            let what = e.kind.strip_prefix("task_").unwrap_or(&e.kind);
            let rank = if matches!(what, "queued" | "started") {
                0
            } else {
                2
            };
            news.push((
                (e.ts, rank),
                vec![format!("task {id} {what}: {}", e.message)],
            ));
        }
        news.sort_by_key(|(ts, _)| *ts);
        for line in news.into_iter().flat_map(|(_, lines)| lines) {
            let _ = writeln!(err, "{line}");
        }
        if task.state.is_terminal() {
            return Ok(task);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// `submit --lines`: a task for each non-empty line of `text`, all queued in one transaction (so
/// a hundred thousand take seconds, not one fsync'd commit each), then one ring per runner.
async fn submit_lines(
    config: &Config,
    ask: &agentq_daemon::route::Ask<'_>,
    text: &str,
    json: bool,
) -> Result<()> {
    let now = now_ms();
    let mut plans = Vec::new();
    let mut tasks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        agentq_daemon::ops::check_prompt(line, config.max_prompt_size).map_err(|e| match e {
            Error::Usage(why) => Error::Usage(format!("line {}: {why}", n + 1)),
            other => other,
        })?;
        let plan = agentq_daemon::route::plan(config, line, ask)?;
        tasks.push(plan.task(line.to_string(), "cli", None, now).await?);
        plans.push(plan);
    }
    if tasks.is_empty() {
        return Err(Error::Usage("no prompt given: every line is empty".into()));
    }
    let store = open_store(config).await?;
    let ids: Vec<i64> = store
        .submit_many(tasks)
        .await?
        .into_iter()
        .map(|s| s.id())
        .collect();
    let bell = doorbell(config);
    let runners: std::collections::BTreeSet<&str> = plans.iter().map(|p| p.runs_on()).collect();
    for runner in runners {
        bell(wake::Ring::Worker(runner.to_string()));
    }
    if json {
        let all: Vec<_> = ids
            .iter()
            .zip(&plans)
            .map(|(id, plan)| agentq_daemon::ops::submitted(*id, plan))
            .collect();
        print_json(&all);
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for id in ids {
            let _ = writeln!(out, "{id}");
        }
    }
    Ok(())
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

async fn status(explicit: Option<&Path>, args: StatusArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    if args.watch {
        let how = crate::top::Watch {
            interval: args.refresh.interval,
            count: args.refresh.count,
            events: args.refresh.events,
            json: args.out.json,
        };
        return crate::top::watch(&config, &*store, how).await;
    }
    let pid = state::holder(&config.state_dir())?;
    let status = agentq_daemon::ops::status(&config, &*store, pid).await?;
    if args.out.json {
        print_json(&status.to_json());
    } else {
        print!(
            "{}",
            crate::top::render(&status, &config.root, agentq_store::now_ms())
        );
    }
    Ok(())
}

async fn top(explicit: Option<&Path>, args: WatchArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    // On a terminal, the interactive view; elsewhere (a pipe, a log, `--count`) frames of text.
    if args.count == 0
        && std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        return crate::tui::run(&config, &*store, args.interval).await;
    }
    let how = crate::top::Watch {
        interval: args.interval,
        count: args.count,
        events: true,
        json: false,
    };
    crate::top::watch(&config, &*store, how).await
}

async fn tasks(explicit: Option<&Path>, args: TasksArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
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
    let store = open_store(&config).await?;
    let id = args.id;
    let (task, record) = agentq_daemon::ops::task_record(&config, &*store, id).await?;
    if args.out.json {
        print_json(&record);
        return Ok(());
    }
    let events = store.events_of(id).await?;
    let attempts = store.attempts_of(id).await?;
    let agent_log = record["agent_log"].as_str().map(std::path::PathBuf::from);
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
        println!("max memory:  {}", agentq_agents::memory::human(max));
    }
    println!("source:      {}", task.source);
    println!("priority:    {}", task.priority);
    println!("attempts:    {} of {}", task.attempts, task.max_attempts);
    println!("created:     {}", when(task.created_at));
    println!("started:     {}", opt(task.started_at.map(when)));
    println!("finished:    {}", opt(task.finished_at.map(when)));
    if let (TaskState::Running, Some(started)) = (task.state, task.started_at) {
        println!(
            "elapsed:     {} (attempt {})",
            fmt_ms((now_ms() - started).max(0)),
            task.attempts
        );
    }
    if task.state == TaskState::Queued && task.not_before > now_ms() {
        println!("not before:  {}", when(task.not_before));
    }
    if let Some(owner) = &task.owner {
        println!("held by:     {owner}");
    }
    if let Some(wt) = &task.worktree {
        crate::worktrees::print_summary(task.id, wt);
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
    let u = &task.usage;
    if let Some(session) = &u.session_id {
        println!("session:     {session}");
    }
    let usage = [
        u.cost_usd.map(|c| format!("${c:.4}")),
        u.input_tokens.map(|t| format!("{t} tokens in")),
        u.output_tokens.map(|t| format!("{t} out")),
        u.num_turns.map(|t| format!("{t} turns")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    if !usage.is_empty() {
        println!("usage:       {}", usage.join(", "));
    }
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
            // Several daemons, one queue: which host each attempt ran on (an owner id begins
            // with its host id).
            let host = match (&a.owner, store.shared()) {
                (Some(owner), true) => {
                    format!("on {} ", owner.split(':').next().unwrap_or(owner))
                }
                _ => String::new(),
            };
            println!(
                "{}  #{:<3} {:<12} {host}{}{}",
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
    if task.state == TaskState::Running {
        // What the agent is doing now, instead of the output it has not given yet.
        let latest: Vec<agentq_core::transcript::Entry> =
            serde_json::from_value(record["transcript_latest"].clone()).unwrap_or_default();
        println!("\n--- transcript (latest; `agentq logs -f {id}` follows it)");
        if latest.is_empty() {
            println!("(nothing yet)");
        }
        let style = crate::logs::Style::for_stdout(false);
        for e in &latest {
            for line in crate::logs::render(&task.worker, id, e, style) {
                println!("{line}");
            }
        }
    } else {
        section("output", task.output.as_deref().unwrap_or(""));
        if record["transcript"].is_string() {
            println!("\n(the agent's transcript: `agentq logs {id}`)");
        }
    }
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
    let v = agentq_core::classify::classify(&prompt, &rules, args.class, args.complexity);
    // Where it would run: with a worker named, or one to default to.
    let ask = agentq_daemon::route::Ask {
        worker: args.worker.as_deref(),
        class: args.class,
        complexity: args.complexity,
        ..Default::default()
    };
    let plan = match &config {
        Some(c) if args.worker.is_some() => Some(agentq_daemon::route::plan(c, &prompt, &ask)?),
        Some(c) => agentq_daemon::route::plan(c, &prompt, &ask).ok(),
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
    use agentq_core::logfile::{LogEvent, LogFilter};
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
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
        println!("{}", crate::top::event_line(e));
    };
    let recent = agentq_daemon::ops::recent_events(&config, &*store, &filter, args.limit).await?;
    if json && !args.follow {
        print_json(&recent.events);
        return Ok(());
    }
    for e in &recent.events {
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
    agentq_daemon::ops::follow_events(&config, &filter, recent, stop, |e| print(&e)).await
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
    let store = open_store(&config).await?;
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
    let store = open_store(&config).await?;
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut ended = Vec::new();
    for &id in &args.ids {
        match wait_for(&*store, id, deadline).await {
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

async fn clean(explicit: Option<&Path>, args: CleanArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let rule = agentq_store::Prune {
        finished_before: args.older_than.map(agentq_store::ms_ago),
        states: args.state,
        worker: args.worker,
        limit: config.retention.batch,
        dry_run: args.dry_run,
        ..Default::default()
    };
    let cleaned = agentq_daemon::ops::clean(
        &config,
        store.as_ref(),
        rule,
        std::time::Duration::from_millis(5),
    )
    .await?;
    if args.out.json {
        print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "removed": cleaned.tasks.len(),
            "tasks": cleaned.tasks,
            "files": cleaned.files,
            "orphan_files": cleaned.orphans,
            "reclaimed_bytes": cleaned.reclaimed_bytes,
        }));
        return Ok(());
    }
    let n = cleaned.tasks.len();
    if n == 0 && cleaned.orphans > 0 {
        println!(
            "no finished task matches; removed {} file(s) of tasks no longer in the store",
            cleaned.orphans
        );
        return Ok(());
    }
    if n == 0 {
        println!("no finished task matches: nothing to remove");
        return Ok(());
    }
    let ids: Vec<i64> = cleaned.tasks.iter().map(|t| t.id).collect();
    let shown = if ids.len() > 20 {
        format!(
            "{} ... {}",
            ids[..10]
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            ids[ids.len() - 5..]
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        )
    } else {
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" ")
    };
    if args.dry_run {
        println!("would remove {n} finished task(s): {shown}");
    } else {
        println!(
            "removed {n} finished task(s) with their events and {} file(s){}{}: {shown}",
            cleaned.files,
            cleaned.orphans_removed(),
            cleaned.gave_back()
        );
    }
    Ok(())
}

async fn cancel(explicit: Option<&Path>, args: IdsArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let bell = doorbell(&config);
    for_each_id("cancel", &args, |id| {
        let (store, bell) = (&*store, &bell);
        async move {
            let done = agentq_daemon::ops::cancel(store, bell, id).await?;
            Ok((
                format!(
                    "{id} cancelled (was {})",
                    done["was"].as_str().unwrap_or("?")
                ),
                done,
            ))
        }
    })
    .await
}

async fn retry(explicit: Option<&Path>, args: IdsArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let bell = doorbell(&config);
    for_each_id("retry", &args, |id| {
        let (store, bell) = (&*store, &bell);
        async move {
            let done = agentq_daemon::ops::retry(store, bell, id).await?;
            Ok((format!("{id} queued again"), done))
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
    let store = open_store(&config).await?;
    let done = agentq_daemon::ops::reset_session(
        &config,
        &*store,
        &args.name,
        "asked by `agentq worker reset-session`",
    )
    .await?;
    if args.out.json {
        print_json(&done);
    } else {
        println!(
            "{}: the next task starts a new conversation",
            done["worker"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn pause(explicit: Option<&Path>, args: PauseArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let done = agentq_daemon::ops::pause(
        &config,
        &*store,
        &args.name,
        args.duration,
        "paused by `agentq worker pause`",
    )
    .await?;
    let name = done["worker"].as_str().unwrap_or("");
    if args.out.json {
        print_json(&done);
    } else if args.duration.is_some() {
        println!(
            "{name}: paused until {}",
            when(done["paused_until"].as_i64().unwrap_or(0))
        );
    } else {
        println!("{name}: paused until `agentq worker resume {name}`");
    }
    Ok(())
}

/// Clears an errored worker (or a pause) and has the daemon replace its long-lived process.
async fn restart(explicit: Option<&Path>, args: WorkerNameArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let mut done =
        agentq_daemon::ops::restart(&config, &*store, &doorbell(&config), &args.name).await?;
    let running = state::holder(&config.state_dir())?.is_some();
    done["daemon_running"] = json!(running);
    if args.out.json {
        print_json(&done);
        return Ok(());
    }
    let name = done["worker"].as_str().unwrap_or("");
    match done["was"].as_str() {
        Some(was) if done["was_errored"] == json!(true) => {
            println!("{name}: no longer errored (was: {was})")
        }
        Some(was) => println!("{name}: no longer paused (was: {was})"),
        None => println!("{name}: restarted"),
    }
    if !running {
        println!("no daemon is running; the worker starts with the next `agentq run`");
    }
    Ok(())
}

async fn resume(explicit: Option<&Path>, args: WorkerNameArgs) -> Result<()> {
    let config = load_config(explicit)?;
    let store = open_store(&config).await?;
    let done = agentq_daemon::ops::resume(
        &config,
        &*store,
        &doorbell(&config),
        &args.name,
        "resumed by `agentq worker resume`",
    )
    .await?;
    let name = done["worker"].as_str().unwrap_or("");
    if args.out.json {
        print_json(&done);
    } else if done["was_paused"] == json!(true) {
        println!("{name}: resumed");
    } else if store
        .pauses(now_ms())
        .await?
        .iter()
        .any(|p| p.worker == name && p.errored())
    {
        println!("{name}: errored, not paused; `agentq worker restart {name}` clears it");
    } else {
        println!("{name}: was not paused");
    }
    Ok(())
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", crate::top::table(headers, rows));
}

fn when(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
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
