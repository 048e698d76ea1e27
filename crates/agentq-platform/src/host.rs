//! The machine's name and the user's.

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
