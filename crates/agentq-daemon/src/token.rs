//! The API token: `.agentq/token`, the one secret the HTTP API asks of its callers.
//!
//! It is 32 random bytes written as hex, in a file only its owner can read (mode 0600). The file is
//! written under a temporary name that is created 0600 from the start, then hard-linked into place:
//! the token is never readable by others, not even for an instant, and two processes creating it
//! at once agree on one token (the second link fails, and the loser reads the winner's file).

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngExt;

use agentq_core::error::{Error, Result};

const FILE: &str = "token";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The token of `state_dir`, created first if there is none.
pub fn ensure(state_dir: &Path) -> Result<String> {
    agentq_core::state::ensure_dir(state_dir)?;
    if let Some(token) = read(state_dir)? {
        return Ok(token);
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token = hex::encode(bytes);
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = agentq_platform::fs::create_new_private(&tmp)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()
    };
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("writing the API token to", &tmp, e));
    }
    let linked = std::fs::hard_link(&tmp, &target);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        // Someone else created it meanwhile: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(state_dir)?.ok_or_else(|| Error::io("reading the API token from", &target, e))
        }
        Err(e) => Err(Error::io("writing the API token to", &target, e)),
    }
}

/// The token of `state_dir`, if it has one.
pub fn read(state_dir: &Path) -> Result<Option<String>> {
    let path = path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => Err(Error::Usage(format!(
            "{} is empty; remove it and run `agentq token` to make a new one",
            path.display()
        ))),
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading the API token from", &path, e)),
    }
}

/// Compares a presented token with the real one in time that does not depend on where they
/// differ, so response times do not reveal the token byte by byte.
pub fn matches(presented: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    if presented.len() != token.len() {
        return false;
    }
    let diff = presented
        .iter()
        .zip(token)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_private_random_hex_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".agentq");
        assert_eq!(read(&state).unwrap(), None);
        let token = ensure(&state).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            agentq_platform::fs::exposure(&path(&state)).unwrap(),
            agentq_platform::fs::Exposure::Private
        );
        assert_eq!(ensure(&state).unwrap(), token, "an existing token is kept");
        assert_eq!(read(&state).unwrap().as_deref(), Some(token.as_str()));
        let others: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "token" && n != ".gitignore")
            .collect();
        assert!(others.is_empty(), "no temporary file left: {others:?}");

        let other = tempfile::tempdir().unwrap();
        assert_ne!(ensure(other.path()).unwrap(), token);
    }

    #[test]
    fn matching_needs_the_whole_token() {
        assert!(matches(b"abc", "abc"));
        assert!(!matches(b"abd", "abc"));
        assert!(!matches(b"ab", "abc"));
        assert!(!matches(b"", "abc"));
    }
}
