//! agentq: coding-agent CLIs as reliable, always-on workers, fed from a durable queue.
//!
//! # Theory of operation
//!
//! The queue lives in a [`store::Store`] (SQLite in `.agentq/agentq.db` by default, or a
//! PostgreSQL database that several hosts share) and nowhere else. Clients (`agentq submit`, prompt-file [`intake`]) add tasks to it and ring the daemon's
//! [`wake`] doorbell. The [`daemon`] runs one [`worker::Runner`] per named worker; each runner
//! claims its worker's next task (a fenced lease, renewed by heartbeat), runs its agent CLI for it
//! through that CLI's [`agents::Driver`] (spawned and watched by [`agent`]), and records the result only if its claim still holds. The rules for what happens after
//! an attempt — retry with backoff, `dead`, `failed` — are pure functions in [`domain`]. Finished
//! tasks are also written as files by [`output`]. What a client asks (submit, cancel, status, ...)
//! is written once in [`ops`], for the command line and for the daemon's optional [`http`] API.
//!
//! ARCHITECTURE.md, at the root of the repository, maps the modules and states the invariants.

pub mod agent;
pub mod agents;
pub mod classify;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod domain;
pub mod drive;
pub mod error;
pub mod files;
pub mod hosts;
pub mod http;
pub mod intake;
pub mod logfile;
pub mod memory;
pub mod ops;
pub mod output;
pub mod persistent;
pub mod pool;
pub mod procs;
pub mod route;
pub mod service;
pub mod state;
pub mod store;
pub mod token;
pub mod top;
pub mod units;
pub mod wake;
pub mod worker;
