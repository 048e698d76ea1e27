//! The doorbell: how `agentq submit` in another process wakes the daemon within milliseconds.
//!
//! The daemon listens on the folder's doorbell (`agentq_platform::doorbell`: a Unix datagram
//! socket at `.agentq/wake.sock`, a named pipe on Windows); a client that changed the queue
//! sends one datagram naming the worker concerned (or empty for "everyone"). Sending never blocks and
//! never fails loudly: with no daemon listening there is nobody to wake, and the task waits in the
//! store for the next `agentq run`. The database stays the source of truth; a lost datagram only
//! delays a task until the daemon's next scheduled look, never loses it.

use std::path::Path;

use agentq_platform::doorbell::Listener;

pub struct Doorbell {
    listener: Listener,
}

/// Who a ring is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ring {
    Worker(String),
    Everyone,
    /// `agentq worker restart`: replace the worker's long-lived process.
    Restart(String),
    /// A running task of the worker (or of the pool) may have lost its claim (a cancel): its
    /// heartbeat looks now, and stops the agent if so.
    Check(String),
}

impl Doorbell {
    /// Binds the socket. The caller holds the state lock, so a socket file already there is a
    /// leftover of a dead daemon and is replaced.
    pub fn bind(state_dir: &Path) -> std::io::Result<Doorbell> {
        Ok(Doorbell {
            listener: Listener::bind(state_dir)?,
        })
    }

    pub async fn next(&self) -> std::io::Result<Ring> {
        let message = self.listener.recv().await?;
        Ok(Ring::decode(std::str::from_utf8(&message).unwrap_or("")))
    }
}

impl Ring {
    /// The ring as a short text: the doorbell's datagram, and the payload of a PostgreSQL
    /// notification (see `store::postgres`).
    pub fn encode(&self) -> String {
        match self {
            Ring::Worker(w) => w.clone(),
            Ring::Everyone => String::new(),
            Ring::Restart(w) => format!("{RESTART}{w}"),
            Ring::Check(w) => format!("{CHECK}{w}"),
        }
    }

    /// Reads what [`Ring::encode`] wrote; anything unreadable rings everyone.
    pub fn decode(text: &str) -> Ring {
        // Worker names have no ':' (see `config::validate_name`).
        if let Some(w) = text.strip_prefix(RESTART) {
            Ring::Restart(w.to_string())
        } else if let Some(w) = text.strip_prefix(CHECK) {
            Ring::Check(w.to_string())
        } else if text.is_empty() {
            Ring::Everyone
        } else {
            Ring::Worker(text.to_string())
        }
    }
}

const RESTART: &str = "restart:";
const CHECK: &str = "check:";

/// Wakes the daemon of `state_dir` for `worker` (all workers when `None`), if one is listening.
pub fn ring(state_dir: &Path, worker: Option<&str>) {
    send_ring(
        state_dir,
        &worker.map_or(Ring::Everyone, |w| Ring::Worker(w.to_string())),
    );
}

/// Asks the daemon of `state_dir`, if one is listening, to replace `worker`'s long-lived process.
pub fn ring_restart(state_dir: &Path, worker: &str) {
    send_ring(state_dir, &Ring::Restart(worker.to_string()));
}

/// Tells the daemon of `state_dir`, if one is listening, that a running task of `worker` (or of
/// `pool`) may have lost its claim.
pub fn ring_check(state_dir: &Path, worker: &str) {
    send_ring(state_dir, &Ring::Check(worker.to_string()));
}

/// Sends `ring` to the daemon of `state_dir`, if one is listening.
pub fn send_ring(state_dir: &Path, ring: &Ring) {
    send(state_dir, &ring.encode());
}

fn send(state_dir: &Path, message: &str) {
    agentq_platform::doorbell::send(state_dir, message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_reaches_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Doorbell::bind(dir.path()).unwrap();
        type Send = fn(&Path);
        let rings: [(Send, Ring); 4] = [
            (
                |d| ring(d, Some("sentinela")),
                Ring::Worker("sentinela".into()),
            ),
            (|d| ring(d, None), Ring::Everyone),
            (|d| ring_restart(d, "w"), Ring::Restart("w".into())),
            (|d| ring_check(d, "pool"), Ring::Check("pool".into())),
        ];
        for (send, expected) in rings {
            let d = dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || send(&d)).await.unwrap();
            assert_eq!(bell.next().await.unwrap(), expected);
        }
        drop(bell);
        ring(dir.path(), Some("nobody listens")); // and nothing happens
    }
}
