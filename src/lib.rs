//! agentq: coding-agent CLIs as reliable, always-on workers, fed from a durable queue.
//!
//! This package is the `agentq` binary: its command line ([`cli`], [`commands`]), the status
//! views ([`top`]), `agentq doctor` ([`doctor`]), `agentq service` ([`service`]), `agentq import`
//! ([`import`]), and the completion scripts and man pages ([`manual`]). The rest lives in the
//! workspace's crates, dependencies pointing one way, and is re-exported here under the names it
//! has always had:
//!
//! - `agentq-core`: the domain (task states, retries, classification, a worker's conversation),
//!   errors, units, the state folder, log files and the doorbell;
//! - `agentq-store`: the [`store::Store`] trait, SQLite and PostgreSQL;
//! - `agentq-agents`: the agent drivers ([`agents::Driver`]: Claude Code, Codex, Gemini, any
//!   command) and the processes they run in;
//! - `agentq-daemon`: config, the runners and the pool, intake, hosts, output files, the HTTP API
//!   and the operations a client asks for.
//!
//! # Theory of operation
//!
//! The queue lives in a store (SQLite in `.agentq/agentq.db` by default, or a PostgreSQL database
//! that several hosts share) and nowhere else. Clients (`agentq submit`, prompt-file intake) add
//! tasks to it and ring the daemon's doorbell. The daemon runs one runner per named worker; each
//! runner claims its worker's next task (a fenced lease, renewed by heartbeat), runs its agent
//! CLI for it through that CLI's driver, and records the result only if its claim still holds.
//! The rules for what happens after an attempt — retry with backoff, `dead`, `failed` — are pure
//! functions in [`domain`]. Finished tasks are also written as files by [`output`]. What a client
//! asks (submit, cancel, status, ...) is written once in [`ops`], for the command line and for the
//! daemon's optional [`http`] API.
//!
//! ARCHITECTURE.md, at the root of the repository, maps the crates and modules and states the
//! invariants.

pub use agentq_agents as agents;
pub use agentq_agents::{agent, memory, persistent, procs};
pub use agentq_core::{classify, domain, error, files, logfile, state, units, wake};
pub use agentq_daemon::{
    config, daemon, drive, hosts, http, intake, ops, output, pool, route, text, token, watch,
    worker,
};
pub use agentq_store as store;

pub mod cli;
pub mod commands;
pub mod doctor;
pub mod import;
pub mod logs;
pub mod manual;
pub mod service;
pub mod top;
pub mod tui;
pub mod worktrees;
