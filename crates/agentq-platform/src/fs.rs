//! Files: private folders and files, the daemon's lock on its state folder, file identity,
//! opening without following links, whether a file is still being written, network drives.
//!
//! "Private" means readable and writable by the owning user only: mode 0700 (folders) or 0600
//! (files) on Unix; on Windows a *protected* DACL (inheriting nothing from the parent) with one
//! entry granting the current user full control, inherited by what the folder later holds.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) if it is missing and makes it private; an existing folder is
/// left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    imp::create_private_dir(dir)
}

/// Makes an existing file or folder private.
pub fn make_private(path: &Path) -> io::Result<()> {
    imp::make_private(path)
}

/// Whether `path` is private (see the module's doc). `Ok(false)` names what others may do in
/// [`Exposure`].
pub fn exposure(path: &Path) -> io::Result<Exposure> {
    imp::exposure(path)
}

/// Who besides the owner may reach a file or folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    Private,
    /// Others may: the text says who and what (`mode 0755`, `Everyone: read`).
    Open(String),
}

/// Whether one `write` to a file opened for appending lands whole at its end even when other
/// handles append at once (`O_APPEND` on Unix). Windows promises it for `FILE_APPEND_DATA`, but
/// Wine emulates it, so appenders there take turns.
pub const APPEND_IS_ATOMIC: bool = cfg!(unix);

/// What a private folder allows, for people: `mode 0700`, or `owner-only access`.
pub fn private_access() -> &'static str {
    if cfg!(windows) {
        "owner-only access"
    } else {
        "mode 0700"
    }
}

/// The command that makes `shown` (a folder) private, for a fix line.
pub fn how_to_make_private(shown: &str) -> String {
    if cfg!(windows) {
        format!("`icacls \"{shown}\" /inheritance:r /grant:r \"%USERNAME%:(OI)(CI)F\"`")
    } else {
        format!("`chmod 700 {shown}`")
    }
}

/// The command that gives `shown` (a folder) to the current user, for a fix line.
pub fn how_to_take_over(shown: &str) -> String {
    if cfg!(windows) {
        format!("`takeown /f \"{shown}\" /r`")
    } else {
        format!("`chown -R \"$USER\" {shown}`")
    }
}

/// Whether this user may create files in `dir`.
pub fn writable_dir(dir: &Path) -> io::Result<()> {
    imp::writable_dir(dir)
}

/// Whether the file at `path` (with metadata `m`) can be run: an execute bit on Unix; on
/// Windows an extension `PATHEXT` names (`.exe`, `.cmd`, ...).
pub fn is_executable(path: &Path, m: &Metadata) -> bool {
    m.is_file() && imp::is_executable(path, m)
}

/// The names a bare program name may have on disk: itself on Unix; on Windows, when it has no
/// extension, itself with each of `PATHEXT`'s (`claude` -> `claude.exe`, `claude.cmd`, ...).
pub fn program_names(program: &str) -> Vec<String> {
    imp::program_names(program)
}

/// Looks a bare program name up on `path_var` (the `PATH` variable's value), as the system's
/// shell would: the first folder holding a runnable file of one of [`program_names`].
pub fn find_on_path(program: &str, path_var: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    std::env::split_paths(path_var).find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            dir
        };
        program_names(program).into_iter().find_map(|name| {
            let candidate = dir.join(name);
            std::fs::metadata(&candidate)
                .is_ok_and(|m| is_executable(&candidate, &m))
                .then_some(candidate)
        })
    })
}

/// Whether `program` names a path (has a folder part) rather than a bare name to look up.
pub fn is_path(program: &str) -> bool {
    program.contains('/') || (cfg!(windows) && (program.contains('\\') || program.contains(':')))
}

/// `path` made absolute with every link resolved, written as the system's own tools write it. On
/// Windows that is without the `\\?\` prefix std's `canonicalize` puts before every path, which
/// Task Scheduler, `cmd.exe` and many programs do not take, wherever the plain form names the same
/// file (see [`plain_windows_path`]).
pub fn canonical(path: &Path) -> io::Result<std::path::PathBuf> {
    let full = std::fs::canonicalize(path)?;
    if cfg!(windows)
        && let Some(plain) = full.to_str().and_then(plain_windows_path)
    {
        return Ok(plain.into());
    }
    Ok(full)
}

/// A Windows verbatim path (`\\?\C:\x`, `\\?\UNC\server\share\x`) in its plain form
/// (`C:\x`, `\\server\share\x`), when that form means the same: shorter than `MAX_PATH`, and
/// no part that the plain form would change (a trailing dot or space, a device name such as
/// `CON` or `nul.txt`, a `.` or `..`). `None` otherwise, and for a path that is not verbatim.
pub fn plain_windows_path(verbatim: &str) -> Option<String> {
    let plain = if let Some(rest) = verbatim.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else {
        let rest = verbatim.strip_prefix(r"\\?\")?;
        let drive = rest.as_bytes();
        if drive.len() < 3 || !drive[0].is_ascii_alphabetic() || &drive[1..3] != b":\\" {
            return None;
        }
        rest.to_string()
    };
    const DEVICES: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    let changed_by_plain = |part: &str| {
        let stem = part.split('.').next().unwrap_or("").trim_end();
        part == "."
            || part == ".."
            || part.ends_with('.')
            || part.ends_with(' ')
            || DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem))
    };
    let parts = plain.trim_start_matches('\\').split('\\').skip(1);
    (plain.len() < 260 && !parts.filter(|p| !p.is_empty()).any(changed_by_plain)).then_some(plain)
}

/// Creates a new file no other user can read, not even for an instant (Unix: created with mode
/// 0600; Windows: created, then made private; callers create it in a private folder, whose
/// entry the new file inherits from the start). Fails if `path` exists.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    imp::create_new_private(path)
}

/// What tells two files apart for the life of both: device and inode on Unix, volume serial and
/// file index on Windows.
/// Whether `path` names the open file `open` (a missing `path` names nothing). Unix looks at
/// the path without opening it; Windows must open it.
pub fn same_file(path: &Path, open: &File) -> io::Result<bool> {
    match imp::path_id(path) {
        Ok(id) => Ok(id == imp::file_id(open)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The identity of an open file (see [`same_file`]).
pub fn file_id(file: &File) -> io::Result<(u64, u64)> {
    imp::file_id(file)
}

/// What changes when a file at a path is written, replaced or touched, as far as its metadata
/// tells (for intake's "has it settled" check): the inode and change time on Unix; the creation
/// time on Windows (a file renamed into place has its own), with the modification time on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    id: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    pub fn of(m: &Metadata) -> Stamp {
        imp::stamp(m)
    }
}

/// Opens `path` for reading without following a symbolic link and without blocking on a pipe.
/// `Ok(None)`: it is a symbolic link.
pub fn open_no_follow(path: &Path) -> io::Result<Option<File>> {
    imp::open_no_follow(path)
}

/// Whether some process has `path` open for writing, where the system can tell; `false` where it
/// cannot, and the caller's settle time alone decides. Linux: a read lease (`F_SETLEASE`) is
/// refused exactly then (the daemon owns SIGIO, see [`crate::signals::own_daemon_signals`]);
/// Windows: opening it without sharing write access fails with a sharing violation.
pub fn held_open_for_writing(path: &Path) -> bool {
    imp::held_open_for_writing(path)
}

/// Whether `dir` is on a network file system, whose changes made by other hosts raise no
/// file-system events here. `false` when unknown.
pub fn is_network_fs(dir: &Path) -> bool {
    imp::is_network_fs(dir)
}

/// The bytes this user may still write on the file system that holds `path` (statvfs's
/// `f_bavail` blocks: what is left after the root's reserve; `GetDiskFreeSpaceExW`'s
/// caller-available bytes, which count a disk quota). `path` may be a file or a folder; one that
/// does not exist yet is looked up by its nearest existing ancestor, on whose file system it would
/// be created.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let mut at = path;
    loop {
        match imp::free_space(at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => return Err(e),
            },
            other => return other,
        }
    }
}

/// Whether an I/O error says the disk (or the user's quota) is full: ENOSPC and EDQUOT;
/// ERROR_DISK_FULL and ERROR_HANDLE_DISK_FULL on Windows (std maps them all).
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// An exclusive lock on a file, held while the value lives and released by the system when the
/// process ends however it ends. Unlike a plain file lock, its holder can be asked for without
/// taking it: a POSIX record lock on Unix (`F_GETLK` gives the holder's pid); on Windows a lock on
/// one byte far past the file's end (so the file's text stays readable to others), the holder's
/// pid being what the file says.
#[derive(Debug)]
pub struct OwnerLock {
    file: File,
}

impl OwnerLock {
    /// Takes the lock on `file` (opened for reading and writing), or returns the holder's pid
    /// (`None` inside when it cannot be told).
    pub fn try_take(file: File) -> io::Result<Result<OwnerLock, Option<u32>>> {
        if imp::try_owner_lock(&file)? {
            return Ok(Ok(OwnerLock { file }));
        }
        Ok(Err(imp::owner_of(&file)?))
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

/// The pid holding an [`OwnerLock`] on `file`, if a process does. A process never sees its own
/// lock as held on Unix (record locks are per process).
pub fn lock_holder(file: &File) -> io::Result<Option<u32>> {
    imp::lock_holder(file)
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // The umask may have narrowed the mode further, never widened it; set it exactly.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }

    pub fn make_private(path: &Path) -> io::Result<()> {
        let mode = if path.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    pub fn exposure(path: &Path) -> io::Result<Exposure> {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok(if mode & 0o077 == 0 {
            Exposure::Private
        } else {
            Exposure::Open(format!("mode {mode:04o}"))
        })
    }

    pub fn create_new_private(path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    pub fn writable_dir(dir: &Path) -> io::Result<()> {
        nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(io::Error::from)
    }

    pub fn is_executable(_path: &Path, m: &Metadata) -> bool {
        m.permissions().mode() & 0o111 != 0
    }

    pub fn program_names(program: &str) -> Vec<String> {
        vec![program.to_string()]
    }

    pub fn file_id(file: &File) -> io::Result<(u64, u64)> {
        let m = file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    pub fn path_id(path: &Path) -> io::Result<(u64, u64)> {
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }

    pub fn stamp(m: &Metadata) -> Stamp {
        Stamp {
            id: m.ino(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        }
    }

    pub fn open_no_follow(path: &Path) -> io::Result<Option<File>> {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[cfg(target_os = "linux")]
    pub fn held_open_for_writing(path: &Path) -> bool {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match file {
            Ok(f) => f,
            // Someone else (a file server exporting the folder, say) holds a lease: it is in use.
            Err(e) => return e.raw_os_error() == Some(libc::EWOULDBLOCK),
        };
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns; F_SETLEASE takes an int argument.
        if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0 {
            // SAFETY: as above. Closing `file` would release the lease as well.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
            return false;
        }
        io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn held_open_for_writing(_path: &Path) -> bool {
        false
    }

    /// statfs's file-system magic numbers of NFS, SMB/CIFS, FUSE (sshfs and the like) and 9p.
    #[cfg(target_os = "linux")]
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    pub fn is_network_fs(dir: &Path) -> bool {
        use nix::sys::statfs::{NFS_SUPER_MAGIC, SMB_SUPER_MAGIC, statfs};
        const CIFS: i64 = 0xFF53_4D42;
        const SMB2: i64 = 0xFE53_4D42;
        const FUSE: i64 = 0x6573_5546;
        const V9FS: i64 = 0x0102_1997;
        match statfs(dir) {
            Ok(st) => {
                let t = st.filesystem_type();
                t == NFS_SUPER_MAGIC
                    || t == SMB_SUPER_MAGIC
                    || [CIFS, SMB2, FUSE, V9FS].contains(&(t.0 as i64))
            }
            Err(_) => false,
        }
    }

    /// macOS and the BSDs name the file system's type in statfs's `f_fstypename`.
    #[cfg(not(target_os = "linux"))]
    pub fn is_network_fs(dir: &Path) -> bool {
        match nix::sys::statfs::statfs(dir) {
            Ok(st) => {
                let name = format!("{:?}", st.filesystem_type_name());
                ["nfs", "smbfs", "afpfs", "webdav", "fuse"]
                    .iter()
                    .any(|n| name.contains(n))
            }
            Err(_) => false,
        }
    }

    #[allow(clippy::unnecessary_cast)] // the fields' widths differ between targets
    pub fn free_space(path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// A write lock on the whole file (`F_WRLCK` is an int on Linux, a short on macOS).
    fn whole_file_lock() -> libc::flock {
        // SAFETY: flock is plain data; all-zero is a valid value that the fields below complete.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = 0;
        lock.l_len = 0;
        lock
    }

    pub fn try_owner_lock(file: &File) -> io::Result<bool> {
        let mut lock = whole_file_lock();
        // SAFETY: fcntl with F_SETLK reads a valid, initialised `flock` struct.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut lock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
            _ => Err(err),
        }
    }

    pub fn owner_of(file: &File) -> io::Result<Option<u32>> {
        lock_holder(file)
    }

    pub fn lock_holder(file: &File) -> io::Result<Option<u32>> {
        let mut lock = whole_file_lock();
        // SAFETY: fcntl with F_GETLK fills in the valid `flock` struct it is given.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid as u32))
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
    use std::os::windows::io::AsRawHandle;
    use std::ptr::{null, null_mut};

    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_LOCK_VIOLATION, ERROR_SHARING_VIOLATION, HANDLE, LocalFree,
    };
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, GetNamedSecurityInfoW, SE_FILE_OBJECT, SetSecurityInfo,
    };
    use windows_sys::Win32::Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_REVISION, ACL_SIZE_INFORMATION,
        AclSizeInformation, AddAccessAllowedAceEx, CONTAINER_INHERIT_ACE,
        DACL_SECURITY_INFORMATION, EqualSid, GetAce, GetAclInformation, GetLengthSid,
        GetTokenInformation, InitializeAcl, IsWellKnownSid, OBJECT_INHERIT_ACE,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, TOKEN_QUERY, TOKEN_USER,
        TokenUser, WinBuiltinAdministratorsSid, WinLocalSystemSid,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        BY_HANDLE_FILE_INFORMATION, FILE_ALL_ACCESS, FILE_FLAG_BACKUP_SEMANTICS,
        FILE_FLAG_OPEN_REPARSE_POINT, FILE_SHARE_DELETE, FILE_SHARE_READ, GetDriveTypeW,
        GetFileInformationByHandle, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LockFileEx,
        READ_CONTROL, WRITE_DAC,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    fn wide(path: &Path) -> Vec<u16> {
        path.as_os_str().encode_wide().chain(Some(0)).collect()
    }

    /// The current user's SID, copied out of the process token.
    fn user_sid() -> io::Result<Vec<u8>> {
        let mut token: HANDLE = null_mut();
        // SAFETY: the pseudo-handle of this process and an out-pointer for the token.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = 0u32;
        // SAFETY: a size query: no buffer, the needed length written to `len`.
        unsafe { GetTokenInformation(token, TokenUser, null_mut(), 0, &mut len) };
        // u64 words keep the TOKEN_USER inside aligned.
        let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
        // SAFETY: `buf` holds `len` bytes.
        let ok = unsafe {
            GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len)
        };
        let err = io::Error::last_os_error();
        // SAFETY: the token handle is ours to close.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return Err(err);
        }
        // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of `buf`, whose SID
        // points into `buf`, valid for GetLengthSid bytes.
        unsafe {
            let user = &*(buf.as_ptr() as *const TOKEN_USER);
            let sid = user.User.Sid;
            let n = GetLengthSid(sid) as usize;
            Ok(std::slice::from_raw_parts(sid as *const u8, n).to_vec())
        }
    }

    fn set_owner_only(path: &Path, folder: bool) -> io::Result<()> {
        let mut sid = user_sid()?;
        let size =
            std::mem::size_of::<ACL>() + std::mem::size_of::<ACCESS_ALLOWED_ACE>() + sid.len();
        let mut acl = vec![0u32; size.div_ceil(4)];
        let acl_ptr = acl.as_mut_ptr() as *mut ACL;
        let inherit = if folder {
            OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE
        } else {
            0
        };
        // SAFETY: `acl` is DWORD-aligned and `size` bytes long; `sid` is a valid SID.
        unsafe {
            if InitializeAcl(acl_ptr, (acl.len() * 4) as u32, ACL_REVISION) == 0
                || AddAccessAllowedAceEx(
                    acl_ptr,
                    ACL_REVISION,
                    inherit,
                    FILE_ALL_ACCESS,
                    sid.as_mut_ptr().cast(),
                ) == 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // Through a handle opened for WRITE_DAC (a folder needs backup semantics to be opened).
        let handle = std::fs::OpenOptions::new()
            .access_mode(WRITE_DAC | READ_CONTROL)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
            .open(path)?;
        // SAFETY: an open handle with WRITE_DAC and a valid ACL; owner, group and SACL are left
        // alone.
        let rc = unsafe {
            SetSecurityInfo(
                handle.as_raw_handle(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                acl_ptr,
                null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        Ok(())
    }

    /// A SID as text (`S-1-5-32-545`).
    fn sid_text(sid: *mut core::ffi::c_void) -> String {
        let mut text: *mut u16 = null_mut();
        // SAFETY: a valid SID; the string is allocated for us and freed below.
        unsafe {
            if ConvertSidToStringSidW(sid, &mut text) == 0 || text.is_null() {
                return "an unreadable SID".into();
            }
            let len = (0..).take_while(|i| *text.add(*i) != 0).count();
            let out = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
            LocalFree(text.cast());
            out
        }
    }

    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        set_owner_only(dir, true)
    }

    pub fn make_private(path: &Path) -> io::Result<()> {
        set_owner_only(path, path.is_dir())
    }

    pub fn exposure(path: &Path) -> io::Result<Exposure> {
        let me = user_sid()?;
        let name = wide(path);
        let mut dacl: *mut ACL = null_mut();
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: out-pointers for the DACL (inside the descriptor) and the descriptor, which is
        // freed below.
        let rc = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                &mut dacl,
                null_mut(),
                &mut descriptor,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        let result = if dacl.is_null() {
            Exposure::Open("no access control list: everyone has full access".into())
        } else {
            let mut info: ACL_SIZE_INFORMATION = unsafe { std::mem::zeroed() };
            // SAFETY: `dacl` is the descriptor's valid ACL; `info` has the asked-for size.
            unsafe {
                GetAclInformation(
                    dacl,
                    (&mut info as *mut ACL_SIZE_INFORMATION).cast(),
                    std::mem::size_of::<ACL_SIZE_INFORMATION>() as u32,
                    AclSizeInformation,
                )
            };
            let mut others: Vec<String> = Vec::new();
            for i in 0..info.AceCount {
                let mut ace: *mut core::ffi::c_void = null_mut();
                // SAFETY: `i` is below the ACL's count; the ACE stays inside the descriptor.
                if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
                    continue;
                }
                // SAFETY: every ACE starts with its header; an access-allowed one (type 0) is an
                // ACCESS_ALLOWED_ACE whose SID starts at SidStart.
                unsafe {
                    let header = &*(ace as *const ACE_HEADER);
                    if header.AceType != 0 {
                        continue;
                    }
                    let allowed = ace as *mut ACCESS_ALLOWED_ACE;
                    let sid = (&raw mut (*allowed).SidStart).cast();
                    // The system and the administrators may reach every file anyway (as
                    // OpenSSH for Windows allows for private keys); anyone else is exposure.
                    let trusted = EqualSid(sid, me.as_ptr() as *mut _) != 0
                        || IsWellKnownSid(sid, WinLocalSystemSid) != 0
                        || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0;
                    if !trusted {
                        others.push(sid_text(sid));
                    }
                }
            }
            if others.is_empty() {
                Exposure::Private
            } else {
                Exposure::Open(format!("access for others ({})", others.join(", ")))
            }
        };
        // SAFETY: the descriptor was allocated by GetNamedSecurityInfoW for us to free.
        unsafe { LocalFree(descriptor) };
        Ok(result)
    }

    pub fn writable_dir(dir: &Path) -> io::Result<()> {
        let probe = dir.join(format!(".agentq-probe-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)?;
        std::fs::remove_file(&probe)
    }

    fn extensions() -> Vec<String> {
        std::env::var("PATHEXT")
            .unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into())
            .split(';')
            .filter(|e| e.starts_with('.'))
            .map(str::to_ascii_lowercase)
            .collect()
    }

    pub fn is_executable(path: &Path, _m: &Metadata) -> bool {
        let Some(ext) = path.extension() else {
            return false;
        };
        let ext = format!(".{}", ext.to_string_lossy().to_ascii_lowercase());
        extensions().contains(&ext)
    }

    pub fn program_names(program: &str) -> Vec<String> {
        if Path::new(program).extension().is_some() {
            return vec![program.to_string()];
        }
        extensions()
            .into_iter()
            .map(|ext| format!("{program}{ext}"))
            .collect()
    }

    pub fn create_new_private(path: &Path) -> io::Result<File> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        set_owner_only(path, false)?;
        Ok(file)
    }

    pub fn file_id(file: &File) -> io::Result<(u64, u64)> {
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: a handle `file` keeps open, and an out-struct of the right type.
        if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            info.dwVolumeSerialNumber as u64,
            ((info.nFileIndexHigh as u64) << 32) | info.nFileIndexLow as u64,
        ))
    }

    pub fn path_id(path: &Path) -> io::Result<(u64, u64)> {
        // No access rights asked: enough to read the identity, and never refused for sharing.
        let file = std::fs::OpenOptions::new().access_mode(0).open(path)?;
        file_id(&file)
    }

    pub fn stamp(m: &Metadata) -> Stamp {
        let t = |ft: u64| ((ft / 10_000_000) as i64, ((ft % 10_000_000) * 100) as i64);
        Stamp {
            id: 0,
            modified: t(m.last_write_time()),
            changed: t(m.creation_time()),
        }
    }

    pub fn open_no_follow(path: &Path) -> io::Result<Option<File>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)?;
        if file.metadata()?.file_type().is_symlink() {
            return Ok(None);
        }
        Ok(Some(file))
    }

    pub fn held_open_for_writing(path: &Path) -> bool {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_DELETE)
            .open(path);
        matches!(opened, Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION as i32))
    }

    pub fn is_network_fs(dir: &Path) -> bool {
        let Ok(full) = std::path::absolute(dir) else {
            return false;
        };
        let text = full.to_string_lossy();
        if text.starts_with(r"\\") && !text.starts_with(r"\\?\") && !text.starts_with(r"\\.\") {
            return true; // \\server\share
        }
        let Some(root) = full.ancestors().last() else {
            return false;
        };
        let mut root = root.as_os_str().to_owned();
        if !root.to_string_lossy().ends_with('\\') {
            root.push("\\");
        }
        let name = wide(Path::new(&root));
        // SAFETY: a NUL-terminated root path.
        unsafe { GetDriveTypeW(name.as_ptr()) == DRIVE_REMOTE }
    }

    pub fn free_space(path: &Path) -> io::Result<u64> {
        use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
        // Any folder of the volume will do; a file's own path is refused.
        let dir = if path.is_file() {
            path.parent().unwrap_or(path)
        } else {
            path
        };
        if !dir.exists() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let name = wide(dir);
        let mut available: u64 = 0;
        // SAFETY: a NUL-terminated path; the one out-pointer is a live u64, the others null.
        let ok =
            unsafe { GetDiskFreeSpaceExW(name.as_ptr(), &mut available, null_mut(), null_mut()) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(available)
    }

    /// The pid a lock file's text names first (`pid host`).
    fn pid_in(file: &File) -> Option<u32> {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut file = file;
        file.seek(io::SeekFrom::Start(0)).ok()?;
        file.take(256).read_to_string(&mut text).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// `GetDriveTypeW`'s answer for a network drive.
    const DRIVE_REMOTE: u32 = 4;

    /// The locked byte: far past any text the file holds, so readers are never refused.
    const LOCK_OFFSET_HIGH: u32 = 0x4000_0000;

    pub fn try_owner_lock(file: &File) -> io::Result<bool> {
        let mut at: OVERLAPPED = unsafe { std::mem::zeroed() };
        at.Anonymous.Anonymous.OffsetHigh = LOCK_OFFSET_HIGH;
        // SAFETY: a handle `file` keeps open and a valid OVERLAPPED naming the offset.
        let ok = unsafe {
            LockFileEx(
                file.as_raw_handle(),
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut at,
            )
        };
        if ok != 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
            Ok(false)
        } else {
            Err(err)
        }
    }

    pub fn owner_of(file: &File) -> io::Result<Option<u32>> {
        Ok(pid_in(file))
    }

    /// Asks by taking the lock for an instant (in a handle of its own, closed at once, which
    /// releases it): Windows has no way to ask without taking.
    pub fn lock_holder(file: &File) -> io::Result<Option<u32>> {
        let probe = file.try_clone()?;
        if try_owner_lock(&probe)? {
            drop(probe);
            return Ok(None);
        }
        Ok(pid_in(file).or(Some(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_for_a_folder_a_file_and_a_path_not_made_yet() {
        let d = tempfile::tempdir().unwrap();
        let free = free_space(d.path()).unwrap();
        assert!(free > 0, "a temporary folder's file system has room");
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(free_space(&file).unwrap() > 0);
        // Not there yet: the file system it would be made on.
        assert!(free_space(&d.path().join("a/b/c")).unwrap() > 0);
    }

    #[test]
    fn a_full_disk_and_a_full_quota_are_told_from_other_errors() {
        assert!(is_storage_full(&io::Error::from(
            io::ErrorKind::StorageFull
        )));
        assert!(is_storage_full(&io::Error::from(
            io::ErrorKind::QuotaExceeded
        )));
        assert!(!is_storage_full(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        #[cfg(unix)]
        assert!(is_storage_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        #[cfg(windows)]
        assert!(is_storage_full(&io::Error::from_raw_os_error(112))); // ERROR_DISK_FULL
    }

    #[test]
    fn verbatim_windows_paths_are_written_plain_where_that_means_the_same() {
        assert_eq!(
            plain_windows_path(r"\\?\C:\Users\ann\my proj").as_deref(),
            Some(r"C:\Users\ann\my proj")
        );
        assert_eq!(
            plain_windows_path(r"\\?\UNC\srv\share\p").as_deref(),
            Some(r"\\srv\share\p")
        );
        assert_eq!(plain_windows_path(r"C:\already\plain"), None);
        assert_eq!(plain_windows_path(r"\\?\Volume{x}\p"), None);
        for kept in [
            r"\\?\C:\a\con",
            r"\\?\C:\a\nul.txt",
            r"\\?\C:\dot.",
            r"\\?\C:\sp ",
        ] {
            assert_eq!(plain_windows_path(kept), None, "{kept}");
        }
        let long = format!(r"\\?\C:\{}", "a".repeat(300));
        assert_eq!(plain_windows_path(&long), None);
        let here = tempfile::tempdir().unwrap();
        let found = canonical(here.path()).unwrap();
        assert!(found.is_absolute(), "{}", found.display());
        assert!(
            !found.to_string_lossy().starts_with(r"\\?\"),
            "{}",
            found.display()
        );
    }

    #[test]
    fn a_private_folder_and_file_are_private_and_a_plain_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a b/é/.agentq");
        create_private_dir(&dir).unwrap();
        // Wine accepts a DACL and keeps none (a file's access is its Unix mode there): what it
        // reads back is checked on real Windows only.
        let private = |path: &Path| {
            let found = exposure(path).unwrap();
            if !crate::under_wine() {
                assert_eq!(found, Exposure::Private, "{}", path.display());
            }
        };
        private(&dir);
        let file = dir.join("token");
        drop(create_new_private(&file).unwrap());
        private(&file);
        assert!(
            create_new_private(&file).is_err(),
            "create_new refuses an existing file"
        );
        let plain = tmp.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(exposure(&plain).unwrap(), Exposure::Open(_)));
        }
        make_private(&plain).unwrap();
        private(&plain);
    }

    #[test]
    fn a_file_is_the_same_as_itself_and_not_as_its_replacement() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let open = File::open(&path).unwrap();
        assert!(same_file(&path, &open).unwrap());
        std::fs::write(tmp.path().join("g"), "two").unwrap();
        drop(open);
        let open = File::open(&path).unwrap();
        std::fs::rename(&path, tmp.path().join("f.1")).unwrap();
        std::fs::rename(tmp.path().join("g"), &path).unwrap();
        assert!(!same_file(&path, &open).unwrap());
        assert!(!same_file(&tmp.path().join("missing"), &open).unwrap());
    }

    #[test]
    fn an_owner_lock_is_held_once_and_released_with_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("daemon.lock");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let mut lock = OwnerLock::try_take(open()).unwrap().unwrap();
        use std::io::Write;
        writeln!(lock.file(), "{} h", std::process::id()).unwrap();
        // Windows locks per handle: a second take in this process is refused, and the text is
        // still readable. (Unix record locks are per process; tests/cli.rs checks another one.)
        #[cfg(windows)]
        {
            assert_eq!(
                OwnerLock::try_take(open()).unwrap().unwrap_err(),
                Some(std::process::id())
            );
            assert_eq!(lock_holder(&open()).unwrap(), Some(std::process::id()));
        }
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with(&std::process::id().to_string())
        );
        drop(lock);
        assert_eq!(lock_holder(&open()).unwrap(), None);
        assert!(OwnerLock::try_take(open()).unwrap().is_ok());
    }

    #[test]
    fn a_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        std::fs::write(&target, "x").unwrap();
        assert!(open_no_follow(&target).unwrap().is_some());
        #[cfg(unix)]
        {
            let link = tmp.path().join("l");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(open_no_follow(&link).unwrap().is_none());
        }
    }
}
