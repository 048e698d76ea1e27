//! The doorbell: how `agentq submit` in another process wakes the daemon within milliseconds.
//!
//! The daemon binds a Unix datagram socket at `.agentq/wake.sock`; a client that changed the queue
//! sends one datagram naming the worker concerned (or empty for "everyone"). Sending never blocks and
//! never fails loudly: with no daemon listening there is nobody to wake, and the task waits in the
//! store for the next `agentq run`. The database stays the source of truth; a lost datagram only
//! delays a task until the daemon's next scheduled look, never loses it.

use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;

const SOCKET: &str = "wake.sock";

pub struct Doorbell {
    socket: UnixDatagram,
    path: PathBuf,
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
        let path = state_dir.join(SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = UnixDatagram::bind(&path)?;
        Ok(Doorbell { socket, path })
    }

    pub async fn next(&self) -> std::io::Result<Ring> {
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).await?;
        Ok(Ring::decode(std::str::from_utf8(&buf[..n]).unwrap_or("")))
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

impl Drop for Doorbell {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
    let Ok(socket) = StdDatagram::unbound() else {
        return;
    };
    let _ = socket.set_nonblocking(true);
    let _ = socket.send_to(message.as_bytes(), state_dir.join(SOCKET));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_reaches_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Doorbell::bind(dir.path()).unwrap();
        ring(dir.path(), Some("sentinela"));
        ring(dir.path(), None);
        ring_restart(dir.path(), "w");
        ring_check(dir.path(), "pool");
        assert_eq!(bell.next().await.unwrap(), Ring::Worker("sentinela".into()));
        assert_eq!(bell.next().await.unwrap(), Ring::Everyone);
        assert_eq!(bell.next().await.unwrap(), Ring::Restart("w".into()));
        assert_eq!(bell.next().await.unwrap(), Ring::Check("pool".into()));
        drop(bell);
        assert!(!dir.path().join(SOCKET).exists());
        ring(dir.path(), Some("nobody listens")); // and nothing happens
    }
}
