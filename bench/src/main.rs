//! The native parts of agentq's benchmark; `scripts/bench` runs them and everything else.
//!
//! - `agentq-bench spawn-loop PARALLEL COUNT CMD [ARG...]`: runs CMD COUNT times, PARALLEL at a
//!   time, each waited for, with nothing else around it: the machine's limit for "run a trivial
//!   process per task", which any queue's throughput is compared with. Prints `{"elapsed_s": ..}`.
//! - `agentq-bench store-depth DIR SAMPLES DEPTH...`: for each queue depth, agentq's SQLite store
//!   (with its event log, as the daemon has it) in a folder of DIR, filled with that many queued
//!   tasks of one worker; then, taking the stores in turns, times SAMPLES submits of one task and
//!   SAMPLES claims of the worker's next task in each (each claimed task is then finished,
//!   untimed, so the worker is free again and the depth stays put). Prints the median and 99th
//!   percentile of each, in milliseconds, as JSON.
//! - `agentq-bench pg-database`: databases `agentq_bench_<random>` on the PostgreSQL server whose
//!   admin URL is in `AGENTQ_BENCH_ADMIN_URL` (the environment, so that a password is never in a
//!   process list). Prints a JSON line about the server (version, durability settings, its URL
//!   with the password hidden), then answers each line of stdin with one of JSON: `create` (a
//!   fresh database: its name and URL), `drop NAME`. When stdin ends (the benchmark over, however
//!   it ended) it drops every database it made that is still there, with whatever is connected.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentq::domain::TaskState;
use agentq::logfile::EventLog;
use agentq::store::sqlite::SqliteStore;
use agentq::store::{Finish, NewTask, Store, now_ms};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("spawn-loop") if args.len() >= 4 => spawn_loop(&args[1], &args[2], &args[3..]),
        Some("store-depth") if args.len() >= 4 => store_depth(&args[1], &args[2], &args[3..]),
        Some("pg-database") if args.len() == 1 => pg_database(),
        _ => Err(
            "usage: agentq-bench spawn-loop PARALLEL COUNT CMD [ARG...]\n       \
             agentq-bench store-depth DIR SAMPLES DEPTH...\n       \
             AGENTQ_BENCH_ADMIN_URL=... agentq-bench pg-database"
                .to_string(),
        ),
    };
    match result {
        Ok(out) => println!("{out}"),
        Err(e) => {
            eprintln!("agentq-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn number(what: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{what}: {text:?} is not a whole number"))
}

fn spawn_loop(parallel: &str, count: &str, cmd: &[String]) -> Result<serde_json::Value, String> {
    let (parallel, count) = (number("PARALLEL", parallel)?, number("COUNT", count)?);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let status = Command::new(&cmd[0])
                            .args(&cmd[1..])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .status()
                            .map_err(|e| format!("running {:?}: {e}", cmd[0]))?;
                        if !status.success() {
                            return Err(format!("{:?} ended with {status}", cmd[0]));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a spawning thread panicked"))
    })?;
    Ok(
        json!({ "count": count, "parallel": parallel, "elapsed_s": started.elapsed().as_secs_f64() }),
    )
}

fn store_depth(dir: &str, samples: &str, depths: &[String]) -> Result<serde_json::Value, String> {
    let samples = number("SAMPLES", samples)?;
    let depths = depths
        .iter()
        .map(|d| number("DEPTH", d))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime
        .block_on(measure_depths(PathBuf::from(dir), samples, &depths))
        .map_err(|e| e.to_string())
}

const WORKER: &str = "w";

fn task(prompt: String) -> NewTask {
    let now = now_ms();
    NewTask {
        worker: WORKER.into(),
        prompt,
        priority: 0,
        max_attempts: 3,
        timeout_ms: None,
        not_before: now,
        source: "bench".into(),
        dedup_key: None,
        routing: Default::default(),
        worktree: None,
        now,
    }
}

/// One store per depth, each filled once and then measured in turns (a submit in each, then a
/// claim in each, and round again), so that whatever else the machine does meanwhile falls on
/// every depth alike and the ratios between depths stay fair.
async fn measure_depths(
    dir: PathBuf,
    samples: usize,
    depths: &[usize],
) -> agentq::error::Result<serde_json::Value> {
    let lease = Duration::from_secs(30);
    let mut stores = Vec::new();
    for &depth in depths {
        let dir = dir.join(depth.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| agentq::error::Error::io("creating", &dir, e))?;
        let log = EventLog::new(dir.join("events.jsonl"), 10 << 20, 5);
        let store = SqliteStore::open(&dir.join("agentq.db"))?.with_event_log(log.into());
        for start in (0..depth).step_by(10_000) {
            let tasks = (start..depth.min(start + 10_000))
                .map(|i| task(format!("queued task {i}")))
                .collect();
            store.submit_many(tasks).await?;
        }
        stores.push(store);
    }
    let mut submit = vec![Vec::with_capacity(samples); depths.len()];
    let mut claim = vec![Vec::with_capacity(samples); depths.len()];
    // A first round untimed: each store's first commits after its fill checkpoint a large WAL.
    for round in 0..samples + 1 {
        for (k, store) in stores.iter().enumerate() {
            let t = task(format!("timed task {round}"));
            let started = Instant::now();
            store.submit(&t).await?;
            if round > 0 {
                submit[k].push(started.elapsed());
            }
        }
        for (k, store) in stores.iter().enumerate() {
            let started = Instant::now();
            let claimed = store.claim(WORKER, "bench", now_ms(), lease).await?;
            if round > 0 {
                claim[k].push(started.elapsed());
            }
            let claimed = claimed.expect("the queue is not empty");
            store.finish(&claimed.fence(), &done(), None).await?;
        }
    }
    let out: Vec<_> = depths
        .iter()
        .zip(submit.into_iter().zip(claim))
        .map(|(depth, (submit, claim))| {
            json!({ "depth": depth, "submit_ms": summary(submit), "claim_ms": summary(claim) })
        })
        .collect();
    Ok(json!({ "samples": samples, "depths": out }))
}

fn done() -> Finish {
    Finish {
        state: TaskState::Succeeded,
        not_before: None,
        exit_code: Some(0),
        output: Some(String::new()),
        error: None,
        stderr_tail: None,
        duration_ms: 0,
        usage: Default::default(),
        cause: None,
        memory_peak_mb: None,
        now: now_ms(),
    }
}

fn summary(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    json!({ "p50": at(0.5), "p99": at(0.99) })
}

/// The environment variable `pg-database` reads the server's admin URL from.
const ADMIN_URL_ENV: &str = "AGENTQ_BENCH_ADMIN_URL";

/// Databases on demand for the benchmark's PostgreSQL figures, one per measurement (as each
/// SQLite measurement has a fresh folder): first a line about the server, then one answer per
/// request read from stdin (`create`, `drop NAME`); at the end of stdin, whatever ended the
/// benchmark, every database still there is dropped.
fn pg_database() -> Result<serde_json::Value, String> {
    use std::io::{BufRead, Write};
    let admin = std::env::var(ADMIN_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| format!("{ADMIN_URL_ENV} is not set"))?;
    let shown = agentq::store::url::redact(&admin);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let client = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to {shown}: {e}"))?;
        tokio::spawn(connection);
        Ok::<_, String>(client)
    })?;
    let sql = |text: String| {
        runtime
            .block_on(client.batch_execute(&text))
            .map_err(|e| format!("{text} on {shown}: {e}"))
    };
    let row = runtime
        .block_on(client.query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('wal_sync_method'), \
             current_setting('full_page_writes')",
            &[],
        ))
        .map_err(|e| format!("reading the settings of {shown}: {e}"))?;
    let setting = |i: usize| row.get::<_, String>(i);
    let mut out = std::io::stdout().lock();
    let mut say = |line: serde_json::Value| {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    };
    say(json!({ "server": {
        "shown": shown, "server_version": setting(0), "fsync": setting(1),
        "synchronous_commit": setting(2), "wal_sync_method": setting(3),
        "full_page_writes": setting(4),
    }}))?;
    let mut made: Vec<String> = Vec::new();
    // Whatever ends the requests (stdin closed, or a request that failed), what was made goes.
    let served = (|| {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["create"] => {
                    let name =
                        format!("agentq_bench_{}", &agentq::store::common::new_token()[..12]);
                    sql(format!("CREATE DATABASE {name}"))?;
                    made.push(name.clone());
                    let url = agentq::store::postgres::test_db::with_dbname(&admin, &name);
                    say(json!({ "url": url, "name": name }))?;
                }
                ["drop", name] if made.iter().any(|m| m == name) => {
                    sql(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
                    made.retain(|m| m != name);
                    say(json!({ "dropped": name }))?;
                }
                _ => return Err(format!("pg-database: no request {line:?}")),
            }
        }
        Ok(())
    })();
    let dropped = made
        .iter()
        .map(|name| sql(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .collect::<Result<Vec<()>, String>>();
    served?;
    dropped?;
    Ok(json!({ "dropped_at_end": made }))
}
