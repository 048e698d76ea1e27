//! Files replaced whole: a reader sees the old one or the new one, never half of one. Each is
//! written under a temporary name in the same folder and renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path`, flushed to disk, so that `path` is never seen half-written (config
/// files, a rejected prompt's reason, a service unit: what must survive a power cut).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// A name in `path`'s folder that no other write of this process uses at the same time.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` under a temporary name and renames it to `path`.
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` as [`write_atomic`] does, as a private file (see [`crate::fs`]: 0600
/// on Unix): the temporary file is created private, so what it holds (a secret) is never
/// readable by another user, not even before the rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        let mut f = crate::fs::create_new_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes `link` another name of `target` (same folder), replacing what `link` was, atomically.
pub fn relink(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = temporary(link);
    std::fs::hard_link(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_0600_and_replaces_a_readable_one() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("service.env");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"KEY=secret\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "KEY=secret\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("latest.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
