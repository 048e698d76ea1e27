//! agentq-daemon: the supervisor, `agentq run`, and what a client asks of the queue.
//!
//! It owns `agentq.toml` ([`config`]: parsed, checked, every error with its line; its schema and
//! its [`effective`] settings, as `agentq config` prints them), where a new
//! task runs ([`route`]), and the daemon itself ([`daemon`]): the state lock, recovery, one
//! [`worker::Runner`] per named worker and the [`pool`], each claiming tasks from the store and
//! running them through their agent's driver ([`drive`]); prompt-file [`intake`]; the worker
//! leases of several daemons on one store ([`hosts`]); result files ([`output`]); the git work of a
//! task in a worktree of its own ([`git`]); room on the disk
//! ([`space`]: claiming pauses while it is full); and the HTTP API
//! and dashboard ([`http`], behind the [`token`]). What a client asks (submit, cancel, status, ...)
//! is written once in [`ops`], for the command line and the API alike. It stands on
//! `agentq-core`, `agentq-store` and `agentq-agents`, and knows nothing of the command line.

pub mod config;
pub mod daemon;
pub mod drive;
pub mod effective;
pub mod git;
pub mod hosts;
pub mod http;
pub mod intake;
pub mod ops;
pub mod output;
pub mod pool;
pub mod route;
pub mod space;
pub mod text;
pub mod token;
pub mod watch;
pub mod worker;
pub mod worktree;
