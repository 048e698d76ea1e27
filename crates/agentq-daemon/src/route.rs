//! Where a new task runs and with which limits, decided once when it is queued and recorded on it.
//!
//! Every task is classified (`long` or `short`, [`agentq_core::classify`]). Then:
//! - a task submitted to the pool (`--pool`, `.queue/pool/`) runs in the pool with `[pool]`'s
//!   settings; `--pool --worker W` runs it in the pool with W's settings;
//! - a task submitted to a worker runs where the worker's `route` says: `worker` on its own agent,
//!   `pool` in the pool, `auto` on the worker when short and in the pool when long.
//!
//! A pool run is a fresh process in a conversation of its own: the worker's conversation is not
//! touched. Its class's limits (`[class.long]`, `[class.short]`) fill in what the task did not set
//! itself; the worker's (or pool's) limits fill in the rest when it runs.

use std::time::Duration;

use crate::config::{Config, POOL, Route, WorkerConfig};
use agentq_core::classify::{self, Class, Verdict};
use agentq_core::error::Result;
use agentq_core::worktree::Isolation;
use agentq_store::{Millis, NewTask, Routing};

/// What the submitter asked for; `None` leaves it to the rules.
#[derive(Clone, Debug, Default)]
pub struct Ask<'a> {
    pub worker: Option<&'a str>,
    pub pool: bool,
    pub class: Option<Class>,
    pub complexity: Option<f64>,
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub priority: Option<i64>,
    pub max_memory: Option<u64>,
    /// `--isolation`: overrides the worker's `isolation`.
    pub isolation: Option<Isolation>,
    /// `--repo`, `--base`, `--branch`: override the worker's worktree settings.
    pub repo: Option<&'a std::path::Path>,
    pub base: Option<&'a str>,
    pub branch: Option<&'a str>,
}

/// The decision: which worker's queue (and settings), where it runs, its limits.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub worker: String,
    pub routing: Routing,
    pub timeout_ms: Option<u64>,
    pub max_attempts: u32,
    pub priority: i64,
    pub verdict: Verdict,
    /// The git worktree it runs in, when its worker (or the submitter) asks for one: resolved
    /// against the repository by [`crate::worktree::planned`] before it is queued.
    pub worktree: Option<crate::worktree::Wanted>,
}

impl Plan {
    /// The task to queue.
    pub fn new_task(
        &self,
        prompt: String,
        source: &str,
        dedup_key: Option<String>,
        now: Millis,
    ) -> NewTask {
        NewTask {
            worker: self.worker.clone(),
            prompt,
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            not_before: now,
            source: source.to_string(),
            dedup_key,
            routing: self.routing.clone(),
            worktree: None,
            now,
        }
    }

    /// The task to queue, with its worktree resolved against the repository: a repository,
    /// base or branch that will not do is the submitter's error, before anything is queued.
    pub async fn task(
        &self,
        prompt: String,
        source: &str,
        dedup_key: Option<String>,
        now: Millis,
    ) -> Result<NewTask> {
        let mut task = self.new_task(prompt, source, dedup_key, now);
        if let Some(wanted) = &self.worktree {
            task.worktree = Some(crate::worktree::planned(wanted).await?);
        }
        Ok(task)
    }

    /// Whose doorbell to ring: the pool's, or the worker's.
    pub fn runs_on(&self) -> &str {
        self.routing.runs_on(&self.worker)
    }
}

/// The settings the task runs with: the named (or default) worker's, or the pool's. Fails for a
/// worker that does not exist, or none chosen where several could be.
pub fn settings<'c>(config: &'c Config, ask: &Ask) -> Result<&'c WorkerConfig> {
    match ask.worker {
        Some(POOL) => Ok(&config.pool.worker),
        None if ask.pool => Ok(&config.pool.worker),
        asked => config.resolve_worker(asked),
    }
}

/// Decides where `prompt` runs. Fails only as [`settings`] does.
pub fn plan(config: &Config, prompt: &str, ask: &Ask) -> Result<Plan> {
    let to_pool = ask.pool || ask.worker == Some(POOL);
    let worker = settings(config, ask)?;
    let verdict = classify::classify(prompt, &config.classify, ask.class, ask.complexity);
    let (pool, why) = if to_pool {
        (true, "submitted to the pool".to_string())
    } else {
        match worker.route {
            Route::Worker => (false, "route = worker".to_string()),
            Route::Pool => (true, "route = pool".to_string()),
            Route::Auto => (
                verdict.class == Class::Long,
                format!(
                    "route = auto, {}: {}",
                    verdict.class,
                    verdict.reason.as_str()
                ),
            ),
        }
    };
    let limits = config.classes.of(verdict.class);
    let worktree = crate::worktree::wanted(worker, pool, ask)?;
    Ok(Plan {
        worker: worker.name.clone(),
        routing: Routing {
            pool,
            class: Some(verdict.class.as_str().to_string()),
            complexity: Some(verdict.complexity),
            route_reason: Some(why),
            max_memory: ask.max_memory.or(limits.max_memory),
        },
        timeout_ms: ask.timeout.or(limits.timeout).map(|t| t.as_millis() as u64),
        max_attempts: ask
            .max_attempts
            .or(limits.max_attempts)
            .unwrap_or(worker.limits.max_attempts),
        priority: ask.priority.or(limits.priority).unwrap_or(0),
        verdict,
        worktree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/p/agentq.toml"), text).expect("config parses")
    }

    const TWO: &str = r#"
[defaults]
worker = "fast"
max_attempts = 2

[class.long]
timeout = "30m"
max_memory = "2GiB"
max_attempts = 1
priority = -1

[class.short]
priority = 5

[[worker]]
name = "fast"
command = ["cat"]
route = "auto"

[[worker]]
name = "plain"
command = ["cat"]

[pool]
command = ["cat"]
max_attempts = 4
"#;

    #[test]
    fn auto_sends_short_tasks_to_the_worker_and_long_ones_to_the_pool() {
        let c = config(TWO);
        let short = plan(&c, "Fix login button bug", &Ask::default()).unwrap();
        assert_eq!(short.worker, "fast");
        assert!(!short.routing.pool);
        assert_eq!(short.routing.class.as_deref(), Some("short"));
        assert_eq!(short.priority, 5, "[class.short] priority applies");
        assert_eq!(short.max_attempts, 2, "no class setting: the worker's");
        assert!(
            short
                .routing
                .route_reason
                .as_deref()
                .unwrap()
                .starts_with("route = auto, short: "),
            "{:?}",
            short.routing.route_reason
        );

        let long = plan(
            &c,
            "Implement comprehensive authentication system",
            &Ask::default(),
        )
        .unwrap();
        assert_eq!(long.worker, "fast", "runs with its worker's settings");
        assert!(long.routing.pool);
        assert_eq!(long.timeout_ms, Some(30 * 60 * 1000));
        assert_eq!(long.routing.max_memory, Some(2 << 30));
        assert_eq!((long.max_attempts, long.priority), (1, -1));
    }

    #[test]
    fn what_the_task_sets_beats_its_class() {
        let c = config(TWO);
        let ask = Ask {
            timeout: Some(Duration::from_secs(5)),
            max_attempts: Some(3),
            priority: Some(0),
            max_memory: Some(1 << 20),
            ..Ask::default()
        };
        let p = plan(&c, "Refactor the entire codebase", &ask).unwrap();
        assert_eq!(p.timeout_ms, Some(5000));
        assert_eq!((p.max_attempts, p.priority), (3, 0));
        assert_eq!(p.routing.max_memory, Some(1 << 20));
    }

    #[test]
    fn overrides_and_forced_routes() {
        let c = config(TWO);
        let forced = Ask {
            class: Some(Class::Short),
            ..Ask::default()
        };
        let p = plan(&c, "Implement comprehensive auth", &forced).unwrap();
        assert!(!p.routing.pool, "--class short keeps it on the worker");

        let plain = Ask {
            worker: Some("plain"),
            ..Ask::default()
        };
        let p = plan(&c, "Implement comprehensive auth", &plain).unwrap();
        assert!(!p.routing.pool, "route = worker by default");
        assert_eq!(p.routing.class.as_deref(), Some("long"), "still classified");

        let pool = Ask {
            pool: true,
            ..Ask::default()
        };
        let p = plan(&c, "Fix a typo", &pool).unwrap();
        assert_eq!(p.worker, "pool");
        assert!(p.routing.pool);
        assert_eq!(p.max_attempts, 4, "[pool] settings");

        let pooled_worker = Ask {
            pool: true,
            worker: Some("plain"),
            ..Ask::default()
        };
        let p = plan(&c, "Fix a typo", &pooled_worker).unwrap();
        assert_eq!((p.worker.as_str(), p.routing.pool), ("plain", true));

        let named = Ask {
            worker: Some("pool"),
            ..Ask::default()
        };
        assert_eq!(plan(&c, "x", &named).unwrap().worker, "pool");
        let missing = Ask {
            worker: Some("nope"),
            ..Ask::default()
        };
        assert!(plan(&c, "x", &missing).is_err());
    }
}
