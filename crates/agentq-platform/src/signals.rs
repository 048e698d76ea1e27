//! What asks agentq to stop, and the signal dispositions the daemon must own.

use std::io;

/// Requests to stop: SIGINT, SIGTERM and SIGHUP (a closed terminal) on Unix; Ctrl-C, Ctrl-Break,
/// the console window closed, and logoff or shutdown on Windows.
pub struct StopRequests {
    inner: imp::StopRequests,
}

impl StopRequests {
    /// Starts listening; from here on these requests no longer end the process by default.
    pub fn listen() -> io::Result<StopRequests> {
        Ok(StopRequests {
            inner: imp::StopRequests::listen()?,
        })
    }

    /// The next request.
    pub async fn recv(&mut self) {
        self.inner.recv().await
    }
}

/// Held for the daemon's life: what would otherwise cost it its agents or its life. Unix: a
/// SIGCHLD ignored by whoever started the daemon (inherited across exec) would have the kernel
/// reap agents before their runners see their status, so it is set back to its default; intake's
/// write-lease check makes the kernel send SIGIO if a writer opens the file in that instant, and
/// SIGIO's default action ends the process, so it is handled. Windows: nothing to own.
pub struct DaemonSignals {
    _inner: imp::DaemonSignals,
}

pub fn own_daemon_signals() -> io::Result<DaemonSignals> {
    Ok(DaemonSignals {
        _inner: imp::own_daemon_signals()?,
    })
}

/// Restores SIGPIPE's default in a command-line program, so `agentq ... | head` ends quietly
/// instead of failing on a closed pipe (Rust ignores SIGPIPE). Nothing to do on Windows.
pub fn default_sigpipe() {
    imp::default_sigpipe()
}

#[cfg(unix)]
mod imp {
    use super::*;
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub struct StopRequests {
        int: Signal,
        term: Signal,
        hup: Signal,
    }

    impl StopRequests {
        pub fn listen() -> io::Result<StopRequests> {
            Ok(StopRequests {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
                _ = self.hup.recv() => {}
            }
        }
    }

    pub struct DaemonSignals(#[allow(dead_code)] Signal);

    pub fn own_daemon_signals() -> io::Result<DaemonSignals> {
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGCHLD,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
        Ok(DaemonSignals(signal(SignalKind::io())?))
    }

    pub fn default_sigpipe() {
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use tokio::signal::windows::{
        CtrlBreak, CtrlC, CtrlClose, CtrlShutdown, ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown,
    };

    pub struct StopRequests {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        shutdown: CtrlShutdown,
    }

    impl StopRequests {
        pub fn listen() -> io::Result<StopRequests> {
            Ok(StopRequests {
                c: ctrl_c()?,
                brk: ctrl_break()?,
                close: ctrl_close()?,
                shutdown: ctrl_shutdown()?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.c.recv() => {}
                _ = self.brk.recv() => {}
                _ = self.close.recv() => {}
                _ = self.shutdown.recv() => {}
            }
        }
    }

    pub struct DaemonSignals;

    pub fn own_daemon_signals() -> io::Result<DaemonSignals> {
        Ok(DaemonSignals)
    }

    pub fn default_sigpipe() {}
}
