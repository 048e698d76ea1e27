//! agentq-core: what every other part of agentq stands on, with nothing above it.
//!
//! It owns the domain, as plain code without I/O: a task's states and the transitions between
//! them, what happens after an attempt (retry with backoff, `failed`, `dead`) and the record of a
//! worker's conversation ([`domain`]); how a prompt is told long from short ([`classify`]); how
//! people write durations and sizes ([`units`]); and the one error type with its exit codes
//! ([`error`]). Beside it, the few pieces of file and socket handling that the store, the agents
//! and the daemon all share: the private state folder and its lock ([`state`]), files replaced
//! whole ([`files`], from `agentq-platform`), size-rotated logs and the JSON-lines event log ([`logfile`]), tasks' transcripts
//! ([`transcript`]), and the
//! doorbell a client rings after changing the queue ([`wake`]), and the record of a task's git
//! worktree ([`worktree`]).

pub mod classify;
pub mod domain;
pub mod error;
/// Files replaced whole; lives in `agentq-platform` (the process book writes them too).
pub use agentq_platform::files;
pub mod logfile;
pub mod state;
pub mod transcript;
pub mod units;
pub mod wake;
pub mod worktree;
