//! Everything agentq does that differs between Unix and Windows, behind one small interface.
//!
//! The rest of the workspace calls these functions and types and never names a platform: the
//! `cfg(unix)`/`cfg(windows)` halves live here, each beside the other in the module that owns the
//! topic, so a reader sees both promises at once.
//!
//! - [`fs`]: private folders and files (mode 0700/0600; an owner-only protected DACL), the
//!   daemon's lock on its state folder and who holds it, file identity, opening without following
//!   links, whether a writer still has a file open, network drives.
//! - [`files`]: files replaced whole (written aside, renamed into place).
//! - [`doorbell`]: the datagram a client sends to wake the daemon (a Unix datagram socket in the
//!   state folder; a named pipe named after the folder on Windows).
//! - [`process`]: an agent's process tree (a process group; a Job Object with kill-on-close), its
//!   graceful then forced stop, knowing when all of it has ended, its memory, and the processes
//!   the kernel can tell about.
//! - [`signals`]: what asks the daemon to stop (SIGINT/SIGTERM/SIGHUP; Ctrl-C, Ctrl-Break, console
//!   close and system shutdown), and the dispositions a daemon must own.
//! - [`term`]: the terminal's size, and the console window a program is given.
//! - [`host`]: the machine's name and the user's.
//!
//! The Unix half is written for Linux and macOS alike: what reads Linux's `/proc` says so and has
//! an answer elsewhere, and the same code builds on both.

pub mod doorbell;
pub mod files;
pub mod fs;
pub mod host;
pub mod process;
pub mod signals;
pub mod term;

/// Whether this process runs under Wine (a Windows build tested on Linux). Tests use it to skip
/// checks of what Wine does not implement (job memory limits, console control events).
#[cfg(windows)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both calls take NUL-terminated names and only read them.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// Whether this process runs under Wine: never, off Windows.
#[cfg(not(windows))]
pub fn under_wine() -> bool {
    false
}
