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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, POOL, WorkerConfig};
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
    /// Wires SIGINT, SIGTERM and SIGHUP (a closed terminal): the first starts stopping, the
    /// second (or `grace` later) hurries.
    pub fn on_signals(grace: Duration) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let shutdown = Shutdown::default();
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            s.stopping.cancel();
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
                _ = tokio::time::sleep(grace) => {}
            }
            s.hurry.cancel();
        });
        Ok(shutdown)
    }
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let config = Arc::new(config);
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
    // Agents are reaped by the runner that started them; a SIGCHLD ignored by whoever started the
    // daemon (inherited across exec) would have the kernel reap them first and lose their status.
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    // Intake's open-for-writing check takes a file lease for an instant; a writer opening the file
    // in that instant makes the kernel send SIGIO, whose default action would end the daemon.
    let _sigio = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::io())
        .map_err(|e| Error::io("handling SIGIO in", &config.root, e))?;
    let state_dir = config.state_dir();
    state::ensure_dir(&state_dir)?;
    let host = config.daemon.host.clone();
    let _lock = StateLock::acquire(&state_dir, &host)?;
    let log = Arc::new(EventLog::new(
        config.event_log_path(),
        config.daemon.log_max_size,
        config.daemon.log_backups,
    ));
    let store: Arc<dyn Store> = Arc::from(config.open_store(Some(log.clone())).await?);
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
    let token = crate::token::ensure(&state_dir)?;
    // Bound before anything starts, so a taken port stops the daemon at once.
    let http_listener = match config.http.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::HttpListen { addr, source })?,
        ),
        None => None,
    };

    // What a previous daemon left running dies before its tasks are handed out again.
    let book = Arc::new(Book::new(&state_dir, &owner));
    // And what this one starts dies with it, however it dies.
    let guardian = start_guardian(&owner);
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
        if let Err(e) = store.record_event(&event).await {
            warn!("cannot record the reaping: {e}");
        }
    }

    // A store of our own: whatever is running there was a previous daemon's, which is gone (we
    // hold its lock). A shared store's running tasks may be other hosts' daemons', alive: only
    // expired leases are taken back, now and by the lease keeper.
    // Of a shared store's, those of this host's previous run are taken back at once.
    let recovered = if store.shared() {
        let mut ids = store.recover_host(&host, &owner, now_ms()).await?;
        ids.extend(store.recover_expired(now_ms()).await?);
        ids
    } else {
        store.recover_all_but(&owner, now_ms()).await?
    };
    if !recovered.is_empty() {
        warn!(
            "queued again {} task(s) a previous daemon left running: {recovered:?}",
            recovered.len()
        );
    }
    // Tasks of workers this config does not define: on a store of our own, workers it no
    // longer defines; on a shared one, most likely other hosts' workers, which is as it should
    // be (said once, for whoever looks).
    let others: Vec<_> = store
        .counts()
        .await?
        .into_iter()
        .filter(|c| config.settings_of(&c.worker).is_none() && c.queued + c.running > 0)
        .collect();
    if store.shared() {
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
    for w in config.workers.iter().chain([&config.pool.worker]) {
        if !w.cwd.is_dir() {
            warn!(worker = %w.name, "its working folder {} does not exist; its tasks will fail until it does", w.cwd.display());
        }
        let dir = config.output_dir(&w.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            error!(worker = %w.name, "cannot create {}: {e}; results stay in the store only", dir.display());
        }
    }
    let intake_folders = crate::intake::prepare(&config);

    // One bell per worker, and the pool's under its name.
    let wakes: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
        config
            .queue_names()
            .map(|name| (name.to_string(), Arc::new(Notify::new())))
            .collect(),
    );
    // The pool's running attempts each renew their lease at once on a `check:pool` ring (a cancel).
    let pool_beat = Arc::new(Notify::new());
    let ring_all = {
        let wakes = wakes.clone();
        move || wakes.values().for_each(|n| n.notify_one())
    };
    let restarts: Arc<HashMap<String, Arc<AtomicBool>>> = Arc::new(
        config
            .workers
            .iter()
            .map(|w| (w.name.clone(), Arc::new(AtomicBool::new(false))))
            .collect(),
    );
    let leased = Arc::new(Notify::new());
    let mut tasks: JoinSet<()> = JoinSet::new();

    // Which named workers this daemon holds, renewed until every runner has returned (a task
    // may run on past `stopping`), then released.
    let leases = store.shared().then(|| {
        Arc::new(crate::hosts::Leases::new(
            store.clone(),
            host.clone(),
            owner.clone(),
            config.daemon.lease,
            config.daemon.shared_sessions,
        ))
    });
    let keep_worker_leases = CancellationToken::new();
    let kept = leases.as_ref().map(|leases| {
        tokio::spawn(
            leases
                .clone()
                .keep(keep_worker_leases.clone(), shutdown.clone()),
        )
    });

    {
        let wakes = wakes.clone();
        let on_task: crate::intake::OnTask = Arc::new(move |worker: &str| {
            if let Some(n) = wakes.get(worker) {
                n.notify_one();
            }
        });
        let (config, store, stopping) = (config.clone(), store.clone(), shutdown.stopping.clone());
        tasks.spawn(crate::intake::run(
            config,
            intake_folders,
            store,
            on_task,
            stopping,
        ));
    }

    tasks.spawn(keep_leases(
        store.clone(),
        leased.clone(),
        shutdown.stopping.clone(),
        ring_all.clone(),
        // Other daemons' leases, which no claim of ours announces, are looked at this often.
        store.shared().then_some(config.daemon.lease),
    ));

    // What a ring of the doorbell does; the HTTP API rings the same way, in process.
    let bell: Arc<dyn Fn(Ring) + Send + Sync> = {
        let (wakes, ring_all, restarts) = (wakes.clone(), ring_all.clone(), restarts.clone());
        let pool_beat = pool_beat.clone();
        // A shared store rings every host for every worker: other hosts' workers are no news,
        // said once each at debug level.
        let shared = store.shared();
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
    };

    // A shared store carries rings from other hosts (PostgreSQL's NOTIFY): the same dispatch.
    if let Some(mut rings) = store.rings(shutdown.stopping.clone()) {
        let bell = bell.clone();
        tasks.spawn(async move {
            while let Some(ring) = rings.recv().await {
                bell(ring);
            }
        });
    }

    match Doorbell::bind(&state_dir) {
        Ok(bell_socket) => {
            let (bell, stopping) = (bell.clone(), shutdown.stopping.clone());
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
                state_dir.display()
            );
            let stopping = shutdown.stopping.clone();
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

    // Runners start last: their first claim comes after the doorbell listens, so a task
    // submitted at any moment is either seen by that claim or rings a bell that is heard.
    let runner = |worker: WorkerConfig, wake: &Arc<Notify>, pool: bool| Runner {
        restart: restarts
            .get(&worker.name)
            .filter(|_| !pool)
            .cloned()
            .unwrap_or_default(),
        worker,
        config: config.clone(),
        store: store.clone(),
        owner: owner.clone(),
        wake: wake.clone(),
        leased: leased.clone(),
        stopping: shutdown.stopping.clone(),
        hurry: shutdown.hurry.clone(),
        persistent: Default::default(),
        book: book.clone(),
        log: log.clone(),
        life: Default::default(),
        pool,
        leases: leases.clone(),
    };
    for w in &config.workers {
        tasks.spawn(runner(w.clone(), &wakes[&w.name], false).run());
    }
    // Any worker's tasks may run in the pool (route, or `submit --pool --worker`), with the pool's
    // max_memory where the worker sets none.
    let mut pool_runners = HashMap::new();
    // Not those pinned to another host: their tasks, the pool's included, run there.
    for w in config.workers.iter().filter(|w| runs_here(w, &host)) {
        let mut settings = w.clone();
        settings.limits.max_memory = w.limits.max_memory.or(config.pool.worker.limits.max_memory);
        pool_runners.insert(w.name.clone(), Arc::new(runner(settings, &pool_beat, true)));
    }
    pool_runners.insert(
        POOL.to_string(),
        Arc::new(runner(config.pool.worker.clone(), &pool_beat, true)),
    );
    tasks.spawn(
        Pool {
            runners: pool_runners,
            store: store.clone(),
            owner: owner.clone(),
            max_workers: config.pool.max_workers,
            lease: config.daemon.lease,
            wake: wakes[POOL].clone(),
            leased: leased.clone(),
            stopping: shutdown.stopping.clone(),
        }
        .run(),
    );

    if let Some(listener) = http_listener {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the HTTP API's address in", &config.root, e))?;
        if !addr.ip().is_loopback() {
            warn!(
                "the HTTP API listens on {addr}, reachable from other machines (allow_remote = true): anyone with the token controls this queue, and plain HTTP shows the token to the network; put it behind TLS"
            );
        }
        info!("HTTP API on http://{addr}");
        let api = crate::http::Api {
            config: config.clone(),
            store: store.clone(),
            token,
            bell: bell.clone(),
            pid: Some(std::process::id() as i32),
        };
        let stopping = shutdown.stopping.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::http::serve(listener, api, stopping.cancelled_owned()).await {
                error!("the HTTP API stopped: {e}");
            }
        });
    }

    let names: Vec<&str> = config
        .workers
        .iter()
        .filter(|w| runs_here(w, &host))
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

    // Kept (and started again if someone kills it) until every runner has returned: closing its
    // pipe any earlier would kill agents still finishing within the grace.
    let keeper = tokio::spawn(keep_guardian(
        guardian,
        owner.clone(),
        shutdown.stopping.clone(),
    ));

    shutdown.stopping.cancelled().await;
    info!(
        "stopping: no new tasks will start; running tasks may finish (signal again to stop them now)"
    );
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            error!("a daemon task failed: {e}");
        }
    }
    keep_worker_leases.cancel();
    // Another daemon took this one's host id: it owns this run's tasks now.
    let lost = match kept {
        Some(kept) => kept.await.ok().and_then(|k| k.err()),
        None => None,
    };
    if store.shared() {
        // Every runner has released its worker already; this also ends the host row.
        if let Err(e) = store.leave_host(&host, &owner, now_ms()).await {
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
