//! `agentq run`: the supervisor, in the foreground.
//!
//! Start-up: take the state folder's lock (one daemon per folder), open the store, put back in the
//! queue whatever a previous daemon left running (it is gone: we hold its lock), then start one
//! [`Runner`] per worker, the prompt-file intake, the lease keeper and the doorbell listener.
//!
//! Shutdown comes in two steps, given by [`Shutdown`]: `stopping` (first SIGINT/SIGTERM) ends
//! claiming and intake, while running tasks may finish; `hurry` (a second signal, or
//! `shutdown_grace` later) stops their agents, and their tasks go back to the queue without
//! spending an attempt. `run` returns when every runner has returned.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Contained, Containment, POOL, WorkerConfig};
use crate::pool::Pool;
use crate::worker::Runner;
use agentq_agents::procs::{Book, Guardian};
use agentq_core::error::{Error, Result};
use agentq_core::logfile::EventLog;
use agentq_core::state::{self, StateLock};
use agentq_core::wake::{Doorbell, Ring};
use agentq_store::{NewEvent, Store, now_ms};

#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop claiming and taking files.
    pub stopping: CancellationToken,
    /// Stop running agents now.
    pub hurry: CancellationToken,
}

impl Shutdown {
    /// Wires the requests to stop (SIGINT, SIGTERM and SIGHUP, a closed terminal; Ctrl-C,
    /// Ctrl-Break, a closed console and shutdown on Windows): the first starts stopping, the
    /// second (or `grace` later) hurries.
    pub fn on_signals(grace: Duration) -> std::io::Result<Shutdown> {
        let mut requests = agentq_platform::signals::StopRequests::listen()?;
        let shutdown = Shutdown::default();
        let s = shutdown.clone();
        tokio::spawn(async move {
            requests.recv().await;
            s.stopping.cancel();
            tokio::select! {
                _ = requests.recv() => {}
                _ = tokio::time::sleep(grace) => {}
            }
            s.hurry.cancel();
        });
        Ok(shutdown)
    }
}

/// Runs the supervisor until `shutdown` says stop and every runner has returned; the steps
/// below keep the order the module's doc gives.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let config = Arc::new(config);
    check_config(&config)?;
    let _sigio = own_signals(&config)?;
    let state_dir = config.state_dir();
    state::ensure_dir(&state_dir)?;
    let host = config.daemon.host.clone();
    let _lock = StateLock::acquire(&state_dir, &host)?;
    let daemon = Daemon::open(config, state_dir, host, shutdown).await?;
    let token = crate::token::ensure(&daemon.state_dir)?;
    let http_listener = bind_http(&daemon.config).await?;

    // What a previous daemon left running dies before its tasks are handed out again.
    let book = Arc::new(Book::new(&daemon.state_dir, &daemon.owner));
    let contained = daemon.settle_containment().await?;
    // And what this one starts dies with it, however it dies.
    let guardian = start_guardian(&daemon.owner);
    daemon.reap(&book).await;
    daemon.recover().await?;
    daemon.tell_of_foreign_tasks().await?;
    daemon.check_folders();
    let intake_folders = crate::intake::prepare(&daemon.config);

    let bells = Bells::new(&daemon.config);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let worker_leases = WorkerLeases::start(&daemon);
    daemon.start_intake(&mut tasks, intake_folders, &bells);
    daemon.start_lease_keeper(&mut tasks, &bells);
    daemon.start_retention(&mut tasks);
    let bell = bells.dispatch(daemon.store.shared());
    daemon.relay_store_rings(&mut tasks, &bell);
    daemon.listen_at_doorbell(&mut tasks, &bell, &bells);
    daemon.start_runners(&mut tasks, &bells, &book, &contained, &worker_leases.leases);
    if let Some(listener) = http_listener {
        daemon.serve_http(&mut tasks, listener, token, &bell)?;
    }
    daemon.say_running();

    // Kept (and started again if someone kills it) until every runner has returned: closing its
    // pipe any earlier would kill agents still finishing within the grace.
    let keeper = tokio::spawn(keep_guardian(
        guardian,
        daemon.owner.clone(),
        daemon.shutdown.stopping.clone(),
    ));

    daemon.shutdown.stopping.cancelled().await;
    daemon.shut_down(tasks, worker_leases, keeper).await
}

/// Refuses a config with nothing to run, and logs why each worker's runs may surprise an
/// operator (its agent's warnings about its settings).
fn check_config(config: &Config) -> Result<()> {
    if config.workers.is_empty() && !config.pool.defined {
        return Err(Error::Usage(format!(
            "{} defines no [[worker]] and no [pool]; add one (see `agentq init`)",
            config.path.display()
        )));
    }
    let pool = config.pool.defined.then_some(&config.pool.worker);
    for w in config.workers.iter().chain(pool) {
        for warning in w.agent.driver().warnings(w.limits.idle_timeout) {
            warn!(worker = %w.name, "{warning}");
        }
    }
    Ok(())
}

/// Owns the signals whose defaults would cost the daemon its agents or its life (see
/// `agentq_platform::signals::own_daemon_signals`); hold what it returns while the daemon runs.
fn own_signals(config: &Config) -> Result<agentq_platform::signals::DaemonSignals> {
    agentq_platform::signals::own_daemon_signals()
        .map_err(|e| Error::io("handling signals in", &config.root, e))
}

/// Binds the HTTP API's address, if one is set, before anything starts, so a taken port stops
/// the daemon at once.
async fn bind_http(config: &Config) -> Result<Option<tokio::net::TcpListener>> {
    Ok(match config.http.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::HttpListen { addr, source })?,
        ),
        None => None,
    })
}

/// What the steps of one run share: its settings, its store, who it is, and how it is told to
/// stop.
struct Daemon {
    config: Arc<Config>,
    state_dir: PathBuf,
    host: String,
    /// This run's owner id (see [`owner_id`]), on its claims and its agents' process groups.
    owner: String,
    store: Arc<dyn Store>,
    log: Arc<EventLog>,
    shutdown: Shutdown,
}

impl Daemon {
    /// Opens the event log and the store, and on a shared store joins it as `host`. The state
    /// folder's lock must be held already.
    async fn open(
        config: Arc<Config>,
        state_dir: PathBuf,
        host: String,
        shutdown: Shutdown,
    ) -> Result<Daemon> {
        let log = Arc::new(EventLog::new(
            config.event_log_path(),
            config.daemon.log_max_size,
            config.daemon.log_backups,
        ));
        let store: Arc<dyn Store> = Arc::from(config.open_store(Some(log.clone())).await?);
        // A damaged file is refused with how to recover, before anything is claimed from it.
        store.verify().await?;
        let owner = owner_id(&host);
        // On a shared store, the host id is this daemon's alone while it runs (a second daemon
        // under it is refused here), so any other run of this host is a previous one, gone.
        if store.shared() {
            store
                .join_host(
                    &host,
                    &owner,
                    std::process::id() as i32,
                    now_ms(),
                    config.daemon.lease,
                )
                .await?;
        }
        Ok(Daemon {
            config,
            state_dir,
            host,
            owner,
            store,
            log,
            shutdown,
        })
    }

    /// Settles where each attempt's processes are held (`[daemon] containment`): a cgroup per
    /// attempt where the daemon was given one to divide, else a keeper. What an earlier daemon
    /// left in its attempts' cgroups is killed here, and said so as the book's reaping is. The
    /// outcome is written to `.agentq/containment` for `doctor`.
    async fn settle_containment(&self) -> Result<Contained> {
        use agentq_platform::process::cgroup;
        let mode = self.config.daemon.containment;
        let mut contained = Contained::without_cgroups(mode);
        if cfg!(target_os = "linux") && matches!(mode, Containment::Auto | Containment::Cgroup) {
            let configured = self.config.daemon.cgroup.clone();
            let project = project_key(&self.state_dir);
            let taken = tokio::task::spawn_blocking(move || {
                let found = cgroup::find(configured.as_deref())?;
                let dir = found.dir.clone();
                found
                    .take(&project)
                    .map_err(|e| format!("cannot divide {}: {e}", dir.display()))
            })
            .await?;
            match taken {
                Ok((cgroups, stale)) => {
                    for s in stale.iter().filter(|s| !s.killed.is_empty()) {
                        let message = format!(
                            "killed {} process(es) left by a previous daemon in {} (pids {:?})",
                            s.killed.len(),
                            s.cgroup.display(),
                            s.killed
                        );
                        warn!("{message}");
                        let event = NewEvent {
                            task_id: None,
                            worker: None,
                            kind: "agent_reaped".into(),
                            message,
                            data: Some(serde_json::json!({
                                "cgroup": s.cgroup.display().to_string(),
                                "pids": s.killed,
                            })),
                            now: now_ms(),
                        };
                        if let Err(e) = self.store.record_event(&event).await {
                            warn!("cannot record the reaping: {e}");
                        }
                    }
                    contained.cgroups = Some(cgroups);
                }
                Err(why) if mode == Containment::Cgroup => {
                    return Err(Error::ConfigFile {
                        path: self.config.path.clone(),
                        message: format!(
                            "[daemon] containment = \"cgroup\", but there is no cgroup to use: {why}. \
                             Set containment = \"auto\" to run each attempt under a keeper instead"
                        ),
                    });
                }
                Err(why) => contained.no_cgroup = Some(why),
            }
        }
        let what = contained.describe();
        info!("containment: {what}");
        let path = self.state_dir.join(CONTAINMENT_FILE);
        if let Err(e) = std::fs::write(&path, format!("{what}\n")) {
            warn!("cannot write {}: {e}", path.display());
        }
        Ok(contained)
    }

    /// Kills the agents a previous daemon left running, as its book records them, and says so in
    /// the log and the store.
    async fn reap(&self, book: &Book) {
        for reaped in book.reap() {
            if reaped.killed.is_empty() {
                continue;
            }
            let r = &reaped.record;
            let message = format!(
                "killed {} process(es) left by a previous daemon (group {}, pids {:?})",
                reaped.killed.len(),
                r.pgid,
                reaped.killed
            );
            warn!(worker = %r.worker, task = r.task, "{message}");
            let event = NewEvent {
                task_id: r.task,
                worker: Some(r.worker.clone()),
                kind: "agent_reaped".into(),
                message,
                data: Some(serde_json::json!({ "pgid": r.pgid, "pids": reaped.killed })),
                now: now_ms(),
            };
            if let Err(e) = self.store.record_event(&event).await {
                warn!("cannot record the reaping: {e}");
            }
        }
    }

    /// Puts back in the queue the running tasks whose daemon is gone.
    async fn recover(&self) -> Result<()> {
        let (store, host) = (&self.store, &self.host);
        // A store of our own: whatever is running there was a previous daemon's, which is gone (we
        // hold its lock). A shared store's running tasks may be other hosts' daemons', alive: only
        // expired leases are taken back, now and by the lease keeper.
        // Of a shared store's, those of this host's previous run are taken back at once.
        let recovered = if store.shared() {
            let mut ids = store.recover_host(host, &self.owner, now_ms()).await?;
            ids.extend(store.recover_expired(now_ms()).await?);
            ids
        } else {
            store.recover_all_but(&self.owner, now_ms()).await?
        };
        if !recovered.is_empty() {
            warn!(
                "queued again {} task(s) a previous daemon left running: {recovered:?}",
                recovered.len()
            );
        }
        Ok(())
    }

    /// Says which queued tasks belong to workers this config does not define, and so will not
    /// run here.
    async fn tell_of_foreign_tasks(&self) -> Result<()> {
        let config = &self.config;
        // Tasks of workers this config does not define: on a store of our own, workers it no
        // longer defines; on a shared one, most likely other hosts' workers, which is as it should
        // be (said once, for whoever looks).
        let others: Vec<_> = self
            .store
            .counts()
            .await?
            .into_iter()
            .filter(|c| config.settings_of(&c.worker).is_none() && c.queued + c.running > 0)
            .collect();
        if self.store.shared() {
            if !others.is_empty() {
                let names: Vec<&str> = others.iter().map(|c| c.worker.as_str()).collect();
                debug!(
                    "the shared store holds tasks for workers {} does not define, which other hosts' daemons may run: {names:?}",
                    config.path.display()
                );
            }
        } else {
            for c in others {
                warn!(
                    "{} task(s) are queued for worker {:?}, which {} no longer defines; they wait until it does (or `agentq cancel` them)",
                    c.queued + c.running,
                    c.worker,
                    config.path.display()
                );
            }
        }
        Ok(())
    }

    /// Warns of a worker's missing working folder, and creates its result folder.
    fn check_folders(&self) {
        let config = &self.config;
        for w in config.workers.iter().chain([&config.pool.worker]) {
            if !w.cwd.is_dir() {
                warn!(worker = %w.name, "its working folder {} does not exist; its tasks will fail until it does", w.cwd.display());
            }
            let dir = config.output_dir(&w.name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                error!(worker = %w.name, "cannot create {}: {e}; results stay in the store only", dir.display());
            }
        }
    }

    /// Starts taking prompt files from the folders intake prepared, waking each task's worker.
    fn start_intake(
        &self,
        tasks: &mut JoinSet<()>,
        folders: Vec<(String, PathBuf)>,
        bells: &Bells,
    ) {
        let wakes = bells.wakes.clone();
        let on_task: crate::intake::OnTask = Arc::new(move |worker: &str| {
            if let Some(n) = wakes.get(worker) {
                n.notify_one();
            }
        });
        tasks.spawn(crate::intake::run(
            self.config.clone(),
            folders,
            self.store.clone(),
            on_task,
            self.shutdown.stopping.clone(),
        ));
    }

    /// Starts putting back in the queue the tasks whose lease runs out.
    fn start_lease_keeper(&self, tasks: &mut JoinSet<()>, bells: &Bells) {
        tasks.spawn(keep_leases(
            self.store.clone(),
            bells.leased.clone(),
            self.shutdown.stopping.clone(),
            bells.ring_all(),
            // Other daemons' leases, which no claim of ours announces, are looked at this often.
            self.store.shared().then_some(self.config.daemon.lease),
        ));
    }

    /// Removes finished tasks as `[retention]` says: a first pass a minute after the start (or
    /// sooner, with a shorter interval), then one every `interval`; each in batches of `batch`
    /// tasks, each batch its own short transaction, with a pause between them so that claims and
    /// results never wait long behind it.
    fn start_retention(&self, tasks: &mut JoinSet<()>) {
        let retention = self.config.retention.clone();
        if !retention.on() {
            return;
        }
        let (config, store) = (self.config.clone(), self.store.clone());
        let stopping = self.shutdown.stopping.clone();
        tasks.spawn(async move {
            let mut wait = retention.interval.min(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopping.cancelled() => return,
                }
                wait = retention.interval;
                let rule = agentq_store::Prune {
                    finished_before: retention
                        .keep_for
                        .map(agentq_store::ms_ago),
                    keep_newest: retention.keep_per_worker,
                    limit: retention.batch,
                    ..Default::default()
                };
                let pass = crate::ops::clean(&config, store.as_ref(), rule, Duration::from_millis(20));
                let cleaned = tokio::select! {
                    cleaned = pass => cleaned,
                    _ = stopping.cancelled() => return,
                };
                match cleaned {
                    Ok(c) if c.tasks.is_empty() && c.orphans == 0 => {}
                    Ok(c) => {
                        let message = format!(
                            "retention removed {} finished task(s) with their events and {} file(s){}{}",
                            c.tasks.len(),
                            c.files,
                            c.orphans_removed(),
                            c.gave_back()
                        );
                        info!("{message}");
                        let event = NewEvent {
                            task_id: None,
                            worker: None,
                            kind: "tasks_removed".into(),
                            message,
                            data: Some(serde_json::json!({
                                "tasks": c.tasks.len(),
                                "files": c.files,
                                "orphan_files": c.orphans,
                                "reclaimed_bytes": c.reclaimed_bytes,
                            })),
                            now: now_ms(),
                        };
                        if let Err(e) = store.record_event(&event).await {
                            warn!("cannot record what retention removed: {e}");
                        }
                    }
                    Err(e) => warn!("retention could not remove finished tasks: {e}"),
                }
            }
        });
    }

    /// Hands a shared store's rings from other hosts (PostgreSQL's NOTIFY) to the same dispatch
    /// as the doorbell's.
    fn relay_store_rings(&self, tasks: &mut JoinSet<()>, bell: &Bell) {
        if let Some(mut rings) = self.store.rings(self.shutdown.stopping.clone()) {
            let bell = bell.clone();
            tasks.spawn(async move {
                while let Some(ring) = rings.recv().await {
                    bell(ring);
                }
            });
        }
    }

    /// Listens for other processes' rings on the doorbell socket; without one, rings every worker
    /// each second so their tasks still start.
    fn listen_at_doorbell(&self, tasks: &mut JoinSet<()>, bell: &Bell, bells: &Bells) {
        let stopping = self.shutdown.stopping.clone();
        match Doorbell::bind(&self.state_dir) {
            Ok(bell_socket) => {
                let bell = bell.clone();
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            ring = bell_socket.next() => match ring {
                                Ok(ring) => bell(ring),
                                Err(e) => {
                                    warn!("wake-up socket failed: {e}");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            },
                            _ = stopping.cancelled() => return,
                        }
                    }
                });
            }
            Err(e) => {
                warn!(
                    "cannot listen for wake-ups in {} ({e}); tasks submitted from other processes start within 1s",
                    self.state_dir.display()
                );
                let ring_all = bells.ring_all();
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => ring_all(),
                            _ = stopping.cancelled() => return,
                        }
                    }
                });
            }
        }
    }

    /// Starts a runner for each worker, and the pool with a runner for each worker whose tasks
    /// may run here.
    fn start_runners(
        &self,
        tasks: &mut JoinSet<()>,
        bells: &Bells,
        book: &Arc<Book>,
        contained: &Contained,
        leases: &Option<Arc<crate::hosts::Leases>>,
    ) {
        let (config, shutdown) = (&self.config, &self.shutdown);
        // Runners start last: their first claim comes after the doorbell listens, so a task
        // submitted at any moment is either seen by that claim or rings a bell that is heard.
        // One view of the disk for every runner and the pool: a full disk pauses all claiming.
        let space = crate::space::Space::new(
            config,
            self.store.clone(),
            bells.ring_all(),
            shutdown.stopping.clone(),
        );
        let runner = |worker: WorkerConfig, wake: &Arc<Notify>, pool: bool| Runner {
            restart: bells
                .restarts
                .get(&worker.name)
                .filter(|_| !pool)
                .cloned()
                .unwrap_or_default(),
            worker,
            config: config.clone(),
            store: self.store.clone(),
            owner: self.owner.clone(),
            wake: wake.clone(),
            leased: bells.leased.clone(),
            stopping: shutdown.stopping.clone(),
            hurry: shutdown.hurry.clone(),
            persistent: Default::default(),
            book: book.clone(),
            contained: contained.clone(),
            log: self.log.clone(),
            life: Default::default(),
            pool,
            leases: leases.clone(),
            space: space.clone(),
        };
        for w in &config.workers {
            tasks.spawn(runner(w.clone(), &bells.wakes[&w.name], false).run());
        }
        // Any worker's tasks may run in the pool (route, or `submit --pool --worker`), with the pool's
        // max_memory where the worker sets none.
        let mut pool_runners = HashMap::new();
        // Not those pinned to another host: their tasks, the pool's included, run there.
        for w in config.workers.iter().filter(|w| runs_here(w, &self.host)) {
            let mut settings = w.clone();
            settings.limits.max_memory =
                w.limits.max_memory.or(config.pool.worker.limits.max_memory);
            pool_runners.insert(
                w.name.clone(),
                Arc::new(runner(settings, &bells.pool_beat, true)),
            );
        }
        pool_runners.insert(
            POOL.to_string(),
            Arc::new(runner(config.pool.worker.clone(), &bells.pool_beat, true)),
        );
        tasks.spawn(
            Pool {
                runners: pool_runners,
                store: self.store.clone(),
                owner: self.owner.clone(),
                max_workers: config.pool.max_workers,
                lease: config.daemon.lease,
                wake: bells.wakes[POOL].clone(),
                leased: bells.leased.clone(),
                stopping: shutdown.stopping.clone(),
                space,
            }
            .run(),
        );
    }

    /// Serves the HTTP API on `listener` until the daemon starts stopping.
    fn serve_http(
        &self,
        tasks: &mut JoinSet<()>,
        listener: tokio::net::TcpListener,
        token: String,
        bell: &Bell,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the HTTP API's address in", &self.config.root, e))?;
        if !addr.ip().is_loopback() {
            warn!(
                "the HTTP API listens on {addr}, reachable from other machines (allow_remote = true): anyone with the token controls this queue, and plain HTTP shows the token to the network; put it behind TLS"
            );
        }
        info!("HTTP API on http://{addr}");
        let api = crate::http::Api {
            config: self.config.clone(),
            store: self.store.clone(),
            token,
            bell: bell.clone(),
            pid: Some(std::process::id() as i32),
        };
        let stopping = self.shutdown.stopping.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::http::serve(listener, api, stopping.cancelled_owned()).await {
                error!("the HTTP API stopped: {e}");
            }
        });
        Ok(())
    }

    /// Says, once everything has started, where the daemon runs and with which workers.
    fn say_running(&self) {
        let (config, host) = (&self.config, &self.host);
        let names: Vec<&str> = config
            .workers
            .iter()
            .filter(|w| runs_here(w, host))
            .map(|w| w.name.as_str())
            .collect();
        info!(
            pid = std::process::id(),
            host = %host,
            "agentq running in {} as host {host} with workers {} and a pool of {}",
            config.root.display(),
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            },
            config.pool.max_workers
        );
    }

    /// Once stopping has begun: waits for every task to return, then releases the worker leases,
    /// leaves the shared store and stops the guardian, in that order (agents may run until their
    /// runner returns, and the guardian would kill them). Fails if another daemon took this one's
    /// host id meanwhile.
    async fn shut_down(
        &self,
        mut tasks: JoinSet<()>,
        worker_leases: WorkerLeases,
        keeper: tokio::task::JoinHandle<Option<Guardian>>,
    ) -> Result<()> {
        info!(
            "stopping: no new tasks will start; running tasks may finish (signal again to stop them now)"
        );
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                error!("a daemon task failed: {e}");
            }
        }
        let lost = worker_leases.stop().await;
        if self.store.shared() {
            // Every runner has released its worker already; this also ends the host row.
            if let Err(e) = self
                .store
                .leave_host(&self.host, &self.owner, now_ms())
                .await
            {
                warn!("cannot record this daemon's leaving: {e}; its leases lapse by themselves");
            }
        }
        if let Ok(Some(g)) = keeper.await {
            g.stop(Duration::from_secs(2)).await;
        }
        if let Some(lost) = lost {
            return Err(lost);
        }
        info!("stopped");
        Ok(())
    }
}

/// What a ring of the doorbell does; the HTTP API rings the same way, in process.
type Bell = Arc<dyn Fn(Ring) + Send + Sync>;

/// How the parts of a running daemon wake each other.
struct Bells {
    /// One bell per worker, and the pool's under its name.
    wakes: Arc<HashMap<String, Arc<Notify>>>,
    /// The pool's running attempts each renew their lease at once on a `check:pool` ring (a cancel).
    pool_beat: Arc<Notify>,
    /// Set by a `restart` ring for the worker's runner to see when it wakes.
    restarts: Arc<HashMap<String, Arc<AtomicBool>>>,
    /// Rung by a runner's claim, so the lease keeper sees a lease it was not waiting for.
    leased: Arc<Notify>,
}

impl Bells {
    /// A bell for every worker and the pool, none rung yet.
    fn new(config: &Config) -> Bells {
        Bells {
            wakes: Arc::new(
                config
                    .queue_names()
                    .map(|name| (name.to_string(), Arc::new(Notify::new())))
                    .collect(),
            ),
            pool_beat: Arc::new(Notify::new()),
            restarts: Arc::new(
                config
                    .workers
                    .iter()
                    .map(|w| (w.name.clone(), Arc::new(AtomicBool::new(false))))
                    .collect(),
            ),
            leased: Arc::new(Notify::new()),
        }
    }

    /// Wakes every worker and the pool.
    fn ring_all(&self) -> impl Fn() + Clone + Send + Sync + 'static {
        let wakes = self.wakes.clone();
        move || wakes.values().for_each(|n| n.notify_one())
    }

    /// What each ring does, whether it comes by the doorbell, the store or the HTTP API.
    fn dispatch(&self, shared: bool) -> Bell {
        let (wakes, ring_all, restarts) =
            (self.wakes.clone(), self.ring_all(), self.restarts.clone());
        let pool_beat = self.pool_beat.clone();
        // A shared store rings every host for every worker: other hosts' workers are no news,
        // said once each at debug level.
        let heard_of = std::sync::Mutex::new(HashSet::new());
        Arc::new(move |ring| match ring {
            Ring::Worker(w) => match wakes.get(&w) {
                Some(n) => n.notify_one(),
                None if shared => {
                    let mut heard_of = heard_of.lock().unwrap_or_else(|p| p.into_inner());
                    if heard_of.insert(w.clone()) {
                        debug!(
                            "a task was queued for worker {w:?}, which this daemon does not run \
                             (another host's, perhaps); not said again"
                        );
                    }
                }
                None => warn!(
                    "a task was queued for worker {w:?}, which this daemon does not run; \
                     restart `agentq run` to pick up changes to agentq.toml"
                ),
            },
            Ring::Everyone => ring_all(),
            Ring::Restart(w) => {
                if let (Some(flag), Some(n)) = (restarts.get(&w), wakes.get(&w)) {
                    flag.store(true, Ordering::SeqCst);
                    n.notify_one();
                }
                // Its pool tasks were held while it was errored.
                wakes[POOL].notify_one();
            }
            // Every running pool attempt shares one heartbeat bell.
            Ring::Check(w) if w == POOL => pool_beat.notify_waiters(),
            Ring::Check(w) => {
                if let Some(n) = wakes.get(&w) {
                    n.notify_one();
                }
            }
        })
    }
}

/// Which named workers this daemon holds on a shared store, renewed until every runner has
/// returned (a task may run on past `stopping`), then released.
struct WorkerLeases {
    /// `None` on a store of our own, where every worker is this daemon's.
    leases: Option<Arc<crate::hosts::Leases>>,
    stop: CancellationToken,
    kept: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl WorkerLeases {
    /// Starts renewing them, on a shared store.
    fn start(daemon: &Daemon) -> WorkerLeases {
        let leases = daemon.store.shared().then(|| {
            Arc::new(crate::hosts::Leases::new(
                daemon.store.clone(),
                daemon.host.clone(),
                daemon.owner.clone(),
                daemon.config.daemon.lease,
                daemon.config.daemon.shared_sessions,
            ))
        });
        let stop = CancellationToken::new();
        let kept = leases
            .as_ref()
            .map(|leases| tokio::spawn(leases.clone().keep(stop.clone(), daemon.shutdown.clone())));
        WorkerLeases { leases, stop, kept }
    }

    /// Stops renewing them; returns the error of a lost host id: another daemon took it, and
    /// owns this run's tasks now.
    async fn stop(self) -> Option<Error> {
        self.stop.cancel();
        match self.kept {
            Some(kept) => kept.await.ok().and_then(|k| k.err()),
            None => None,
        }
    }
}

/// Whether the daemon of host id `host` runs `worker`: any, unless the worker is pinned elsewhere.
pub fn runs_here(worker: &WorkerConfig, host: &str) -> bool {
    worker.host.as_deref().is_none_or(|pin| pin == host)
}

fn start_guardian(owner: &str) -> Option<Guardian> {
    match Guardian::start(owner) {
        Ok(g) => {
            debug!(pid = g.pid(), "guardian started");
            Some(g)
        }
        Err(e) => {
            warn!(
                "cannot start the guardian process ({e}): if this daemon crashes, its agents run on until the next daemon starts and reaps them"
            );
            None
        }
    }
}

/// Starts the guardian again whenever it ends (someone killed it), until the daemon stops; then
/// hands it back. It waits on the process itself: an idle daemon runs no timer for this.
async fn keep_guardian(
    mut guardian: Option<Guardian>,
    owner: String,
    stopping: CancellationToken,
) -> Option<Guardian> {
    loop {
        let Some(g) = guardian.as_mut() else {
            stopping.cancelled().await;
            return None;
        };
        tokio::select! {
            ended = g.ended() => {
                let how = ended.map_or_else(|e| e.to_string(), |s| s.to_string());
                warn!("the guardian process ended ({how}); starting another");
                // One that dies at once is not started again in a tight loop.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.cancelled() => return None,
                }
                guardian = start_guardian(&owner);
            }
            _ = stopping.cancelled() => return guardian,
        }
    }
}

/// Sleeps until the earliest lease runs out, then puts expired tasks back in the queue. With no
/// task running it waits to be told of a claim, with no timer; with a shared store, where other
/// daemons claim unannounced, it looks again every `look_every` instead.
async fn keep_leases(
    store: Arc<dyn Store>,
    leased: Arc<Notify>,
    stopping: CancellationToken,
    ring_all: impl Fn(),
    look_every: Option<Duration>,
) {
    loop {
        let next = match store.next_lease_expiry().await {
            Ok(next) => next,
            Err(e) => {
                warn!("cannot read leases: {e}");
                Some(now_ms() + 1000)
            }
        };
        let next = next.or_else(|| look_every.map(|d| now_ms() + d.as_millis() as i64));
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = leased.notified(), if next.is_none() => continue,
            _ = tokio::time::sleep(Duration::from_millis(next.map(|t| (t - now_ms() + 1).max(0) as u64).unwrap_or(0))), if next.is_some() => {}
        }
        match store.recover_expired(now_ms()).await {
            Ok(ids) if !ids.is_empty() => {
                warn!("leases expired; queued again: {ids:?}");
                ring_all();
            }
            Ok(_) => {}
            Err(e) => {
                // The expiry stays in the past until this succeeds: pause rather than spin.
                warn!("cannot recover expired leases: {e}; trying again in 1s");
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Who holds claims: host id, pid and a random part, so a restarted daemon with a reused pid is
/// still someone else.
fn owner_id(host: &str) -> String {
    let nonce: u32 = rand::rng().random();
    format!(
        "{}{nonce:08x}",
        owner_prefix(host, std::process::id() as i32)
    )
}

/// How the owner ids of the daemon with this pid and host id begin: `host:pid:` (the rest is a
/// nonce), so a client that knows the daemon's pid can find what its run claimed. A host id
/// holds no `:`, so `host:` begins the owner ids of that host's runs and no other's.
pub fn owner_prefix(host: &str, pid: i32) -> String {
    format!("{host}:{pid}:")
}

/// What `.agentq/containment` is called: the running daemon's containment, for `doctor`.
pub const CONTAINMENT_FILE: &str = "containment";

/// A short name for this project, from its state folder's full path, for the names of its
/// attempts' cgroups (FNV-1a, 32 bits: stable across builds, unlike std's hasher).
fn project_key(state_dir: &std::path::Path) -> String {
    let path =
        agentq_platform::fs::canonical(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut hash: u32 = 0x811c_9dc5;
    for b in path.to_string_lossy().bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}
