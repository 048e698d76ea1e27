//! The doorbell's transport: short messages from any local process to the daemon of a state
//! folder, sent without blocking and lost without harm when nobody listens (the database stays
//! the source of truth; what the messages mean is `agentq_core::wake`'s business).
//!
//! Unix: a datagram socket `wake.sock` in the state folder. Windows: a message-mode named pipe
//! `\\.\pipe\agentq-<hash of the folder's full path>`, served by the daemon with a listening
//! instance always ready; a client that finds none (the daemon between two accepts) tries again
//! for a moment, then gives up quietly.

use std::io;
use std::path::Path;

/// The receiving end, bound by the daemon that holds the folder's lock.
pub struct Listener {
    inner: imp::Listener,
}

impl Listener {
    /// Binds the folder's doorbell. The caller holds the state lock, so a Unix socket file
    /// already there is a dead daemon's leftover and is replaced.
    pub fn bind(state_dir: &Path) -> io::Result<Listener> {
        Ok(Listener {
            inner: imp::Listener::bind(state_dir)?,
        })
    }

    /// The next message (at most 256 bytes).
    pub async fn recv(&self) -> io::Result<Vec<u8>> {
        self.inner.recv().await
    }
}

/// Sends `message` to the daemon of `state_dir`, if one listens. Never blocks for long, never
/// fails loudly.
pub fn send(state_dir: &Path, message: &[u8]) {
    imp::send(state_dir, message)
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::path::PathBuf;

    const SOCKET: &str = "wake.sock";

    pub struct Listener {
        socket: tokio::net::UnixDatagram,
        path: PathBuf,
    }

    impl Listener {
        pub fn bind(state_dir: &Path) -> io::Result<Listener> {
            let path = state_dir.join(SOCKET);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let socket = tokio::net::UnixDatagram::bind(&path)?;
            Ok(Listener { socket, path })
        }

        pub async fn recv(&self) -> io::Result<Vec<u8>> {
            let mut buf = [0u8; 256];
            let n = self.socket.recv(&mut buf).await?;
            Ok(buf[..n].to_vec())
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub fn send(state_dir: &Path, message: &[u8]) {
        let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
            return;
        };
        let _ = socket.set_nonblocking(true);
        let _ = socket.send_to(message, state_dir.join(SOCKET));
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::windows::named_pipe::{PipeMode, ServerOptions};
    use tokio::sync::{Mutex, mpsc};

    /// The pipe's name: a hash of the folder's full path, lower-cased as Windows paths compare.
    pub fn pipe_name(state_dir: &Path) -> String {
        let full = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let text = full.to_string_lossy().to_lowercase();
        // FNV-1a, 64 bits: stable across builds and versions, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.trim_end_matches('\\').bytes() {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!(r"\\.\pipe\agentq-{hash:016x}")
    }

    pub struct Listener {
        messages: Mutex<mpsc::Receiver<Vec<u8>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Listener {
        pub fn bind(state_dir: &Path) -> io::Result<Listener> {
            let name = pipe_name(state_dir);
            let first = ServerOptions::new()
                .first_pipe_instance(true)
                .pipe_mode(PipeMode::Message)
                .reject_remote_clients(true)
                .create(&name)?;
            let (tx, rx) = mpsc::channel(256);
            let task = tokio::spawn(async move {
                let mut server = first;
                loop {
                    if server.connect().await.is_err() {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    // The next instance is ready before this one is read, so a client rarely
                    // finds none.
                    let next = match ServerOptions::new()
                        .pipe_mode(PipeMode::Message)
                        .reject_remote_clients(true)
                        .create(&name)
                    {
                        Ok(n) => n,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let mut connected = std::mem::replace(&mut server, next);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let read = tokio::time::timeout(
                            std::time::Duration::from_secs(2),
                            (&mut connected).take(256).read_to_end(&mut buf),
                        )
                        .await;
                        if matches!(read, Ok(Ok(_))) {
                            let _ = tx.send(buf).await;
                        }
                    });
                }
            });
            Ok(Listener {
                messages: Mutex::new(rx),
                task,
            })
        }

        pub async fn recv(&self) -> io::Result<Vec<u8>> {
            self.messages
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::other("the doorbell's pipe server stopped"))
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub fn send(state_dir: &Path, message: &[u8]) {
        use std::io::Write;
        let name = pipe_name(state_dir);
        // A plain file open of the pipe's name: no runtime needed, so any caller can ring.
        for _ in 0..20 {
            match std::fs::OpenOptions::new().write(true).open(&name) {
                Ok(mut pipe) => {
                    let _ = pipe.write_all(message);
                    return;
                }
                // ERROR_PIPE_BUSY: every instance is taken for a moment.
                Err(e) if e.raw_os_error() == Some(231) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return, // nobody listens
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_reaches_the_listener_and_none_is_harmless() {
        let tmp = tempfile::tempdir().unwrap();
        send(tmp.path(), b"nobody"); // nothing listens: no error, no wait
        let listener = Listener::bind(tmp.path()).unwrap();
        for i in 0..5 {
            let dir = tmp.path().to_path_buf();
            let msg = format!("w{i}");
            tokio::task::spawn_blocking(move || send(&dir, msg.as_bytes()))
                .await
                .unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
                .await
                .expect("a ring within 5 s")
                .unwrap();
            assert_eq!(got, format!("w{i}").into_bytes());
        }
    }
}
