//! The task state machine and retry policy: plain code, no I/O, so every rule is unit-tested here.
//!
//! ```text
//!            submit              claim                 exit 0
//!   (new) ─────────▶ queued ──────────▶ running ─────────────────▶ succeeded
//!                     ▲  ▲                │  │ attempt failed, retryable,
//!                     │  └── backoff ─────┘  │ attempts < max_attempts
//!                     │   (not_before)       │
//!         retry       │      lease expired / │ attempt failed and not retryable ─▶ failed
//!   failed|dead|──────┘      shutdown:       │ attempts exhausted ──────────────▶ dead
//!   cancelled                back to queued, └ cancel ───────────────────────────▶ cancelled
//!                            attempt not spent
//! ```
//!
//! `succeeded`, `failed`, `dead` and `cancelled` are terminal: only `agentq retry` (for the last
//! three) moves a task out of them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The pool's name wherever a worker's name goes (status, metrics, rings, pauses).
pub const POOL: &str = "pool";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Dead => "dead",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }

    /// Whether `agentq cancel` applies: only to work not yet finished.
    pub fn check_cancel(self) -> Result<(), &'static str> {
        if self.is_terminal() {
            Err("it has already ended; nothing to cancel")
        } else {
            Ok(())
        }
    }

    /// Whether `agentq retry` applies: to work that ended without success.
    pub fn check_retry(self) -> Result<(), &'static str> {
        match self {
            TaskState::Failed | TaskState::Dead | TaskState::Cancelled => Ok(()),
            TaskState::Succeeded => Err("it succeeded; submit the prompt again to run it again"),
            TaskState::Queued | TaskState::Running => Err("it has not ended yet"),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}: expected one of queued, running, succeeded, failed, cancelled, dead"
                )
            })
    }
}

/// Why an attempt failed, as a short code to count and filter by; the reason beside it says the
/// rest in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Past its wall-clock `timeout`.
    Timeout,
    /// No output for `idle_timeout`: hung.
    IdleTimeout,
    /// Its process tree held more than `max_memory`.
    MemoryLimit,
    /// It had more than `max_processes` processes at once (a fork bomb).
    ProcessLimit,
    /// Ended by a signal or with a non-zero exit code.
    Crashed,
    /// The agent answered with an error (e.g. a Claude error result).
    AgentError,
    /// The agent could not be started for a reason that may pass (e.g. too many open files).
    SpawnFailed,
    /// The worker's setup is wrong: missing program or folder. Running again cannot help.
    Config,
    /// The task's input was refused. Running again cannot help.
    BadInput,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Timeout,
        Cause::IdleTimeout,
        Cause::MemoryLimit,
        Cause::ProcessLimit,
        Cause::Crashed,
        Cause::AgentError,
        Cause::SpawnFailed,
        Cause::Config,
        Cause::BadInput,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::IdleTimeout => "idle_timeout",
            Cause::MemoryLimit => "memory_limit",
            Cause::ProcessLimit => "process_limit",
            Cause::Crashed => "crashed",
            Cause::AgentError => "agent_error",
            Cause::SpawnFailed => "spawn_failed",
            Cause::Config => "config",
            Cause::BadInput => "bad_input",
        }
    }

    /// Whether running the task again could help, unless the agent said otherwise.
    pub fn retryable(self) -> bool {
        !matches!(self, Cause::Config | Cause::BadInput)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt of a task ended, as the runner saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    Succeeded,
    /// `retryable` is false where running again cannot help (the agent could not be started, the
    /// task's input was refused).
    Failed {
        cause: Cause,
        reason: String,
        retryable: bool,
    },
}

impl AttemptEnd {
    /// A failure, retryable as its cause says.
    pub fn failed(cause: Cause, reason: impl Into<String>) -> AttemptEnd {
        AttemptEnd::Failed {
            cause,
            reason: reason.into(),
            retryable: cause.retryable(),
        }
    }

    pub fn cause(&self) -> Option<Cause> {
        match self {
            AttemptEnd::Succeeded => None,
            AttemptEnd::Failed { cause, .. } => Some(*cause),
        }
    }
}

/// What happens to a task after an attempt, decided from the attempt's end and the task's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    Retry { delay: Duration },
    Failed,
    Dead,
}

impl Next {
    pub fn state(&self) -> TaskState {
        match self {
            Next::Succeeded => TaskState::Succeeded,
            Next::Retry { .. } => TaskState::Queued,
            Next::Failed => TaskState::Failed,
            Next::Dead => TaskState::Dead,
        }
    }
}

/// Retry delays: exponential from `base`, capped at `max`, with "equal jitter" (a random half on top
/// of a fixed half) so that tasks failing together do not come back together, yet never retry sooner
/// than half the planned delay.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `failed_attempts + 1`, where `jitter` is drawn uniformly from [0, 1).
    pub fn delay(&self, failed_attempts: u32, jitter: f64) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(32);
        let planned = self
            .base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let half = planned / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// The decision after an attempt. `attempts` counts the attempt that just ended.
pub fn after_attempt(
    end: &AttemptEnd,
    attempts: u32,
    max_attempts: u32,
    backoff: Backoff,
    jitter: f64,
) -> Next {
    match end {
        AttemptEnd::Succeeded => Next::Succeeded,
        AttemptEnd::Failed {
            retryable: false, ..
        } => Next::Failed,
        AttemptEnd::Failed { .. } if attempts >= max_attempts => Next::Dead,
        AttemptEnd::Failed { .. } => Next::Retry {
            delay: backoff.delay(attempts, jitter),
        },
    }
}

/// The conversation a worker is in, as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionState {
    pub id: String,
    /// The driver whose conversation it is: another agent cannot continue it.
    pub agent: String,
    /// Agents keep conversations per working directory: one started elsewhere cannot be resumed.
    pub cwd: String,
    pub tasks: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the conversation has cost so far.
    pub cost_usd: f64,
}

impl SessionState {
    /// A conversation of `agent` in `cwd` that has no id yet and has used nothing.
    pub fn empty(agent: &str, cwd: &str) -> SessionState {
        SessionState {
            id: String::new(),
            agent: agent.to_string(),
            cwd: cwd.to_string(),
            tasks: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };

    fn failed(retryable: bool) -> AttemptEnd {
        AttemptEnd::Failed {
            cause: Cause::Crashed,
            reason: "crashed (exit code 1)".into(),
            retryable,
        }
    }

    #[test]
    fn config_and_bad_input_are_not_retried_the_rest_are() {
        for cause in Cause::ALL {
            let next = after_attempt(&AttemptEnd::failed(cause, "x"), 1, 3, B, 0.0);
            let retried = matches!(next, Next::Retry { .. });
            assert_eq!(
                retried,
                !matches!(cause, Cause::Config | Cause::BadInput),
                "{cause}"
            );
        }
    }

    #[test]
    fn success_ends_the_task() {
        assert_eq!(
            after_attempt(&AttemptEnd::Succeeded, 3, 3, B, 0.5),
            Next::Succeeded
        );
    }

    #[test]
    fn a_failure_is_retried_until_max_attempts_then_dead() {
        assert!(matches!(
            after_attempt(&failed(true), 1, 3, B, 0.0),
            Next::Retry { .. }
        ));
        assert!(matches!(
            after_attempt(&failed(true), 2, 3, B, 0.0),
            Next::Retry { .. }
        ));
        assert_eq!(after_attempt(&failed(true), 3, 3, B, 0.0), Next::Dead);
        assert_eq!(after_attempt(&failed(true), 1, 1, B, 0.0), Next::Dead);
    }

    #[test]
    fn a_failure_that_cannot_be_helped_is_not_retried() {
        assert_eq!(after_attempt(&failed(false), 1, 3, B, 0.0), Next::Failed);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        // With jitter 0 a delay is half the planned one, with jitter near 1 nearly all of it.
        assert_eq!(B.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(B.delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(B.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(B.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(B.delay(10, 1.0), Duration::from_secs(60));
        assert_eq!(B.delay(10_000, 1.0), Duration::from_secs(60));
        for attempt in 1..20 {
            let lo = B.delay(attempt, 0.0);
            let hi = B.delay(attempt, 0.999);
            assert!(lo <= hi && hi <= B.max && lo * 2 >= hi.min(B.max) - Duration::from_millis(1));
            assert!(B.delay(attempt + 1, 0.0) >= lo, "never shrinks");
        }
    }

    #[test]
    fn cancel_and_retry_apply_to_the_right_states() {
        assert!(TaskState::Queued.check_cancel().is_ok());
        assert!(TaskState::Running.check_cancel().is_ok());
        assert!(TaskState::Dead.check_cancel().is_err());
        assert!(TaskState::Dead.check_retry().is_ok());
        assert!(TaskState::Failed.check_retry().is_ok());
        assert!(TaskState::Cancelled.check_retry().is_ok());
        assert!(TaskState::Succeeded.check_retry().is_err());
        assert!(TaskState::Running.check_retry().is_err());
    }

    #[test]
    fn states_round_trip_through_text() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}
