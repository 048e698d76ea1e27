//! The machine's name and the user's; and how the daemon's heap is kept (glibc's arenas).

/// The machine's name, as the system gives it (`None` when it cannot be read).
pub fn hostname() -> Option<String> {
    imp::hostname().filter(|h| !h.is_empty())
}

/// This process's user id, where users have numbers (Unix); launchd names a user's domain by it.
pub fn user_id() -> Option<u32> {
    imp::user_id()
}

/// The name of the user owning `path` (Unix: its uid's login name; Windows: not looked up).
pub fn owner_name(path: &std::path::Path) -> Option<String> {
    imp::owner_name(path)
}

#[cfg(unix)]
mod imp {
    pub fn hostname() -> Option<String> {
        nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned())
    }

    pub fn user_id() -> Option<u32> {
        Some(nix::unistd::getuid().as_raw())
    }

    pub fn owner_name(path: &std::path::Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(path).ok()?.uid();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
        Some(user.name)
    }
}

#[cfg(windows)]
mod imp {
    pub fn hostname() -> Option<String> {
        std::env::var("COMPUTERNAME").ok()
    }

    pub fn user_id() -> Option<u32> {
        None
    }

    pub fn owner_name(_path: &std::path::Path) -> Option<String> {
        std::env::var("USERNAME").ok()
    }
}

/// Keeps a long-running daemon's heap from creeping: glibc gives threads that allocate at the
/// same time arenas of their own (up to eight per core), and what is freed in one arena serves
/// only that one, so a daemon whose runtime and blocking threads take turns at the work holds
/// more and more of them. Measured by the benchmark's soak (`scripts/bench --only soak
/// --soak-tasks 30000`, 4 workers and a pool of 4): the daemon's anonymous memory went from 3 to
/// 24 MiB in 20,000 tasks with the default and crept on; it stayed at 7 MiB with one arena and
/// 9 MiB with two, at the same tasks/s (the daemon's threads seldom allocate at once). One it
/// is. An explicit `MALLOC_ARENA_MAX` wins. Elsewhere (musl, macOS, Windows) nothing is done.
/// Call it before any thread starts.
pub fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers; called before other threads allocate.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}
