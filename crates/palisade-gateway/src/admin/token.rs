//! The admin API token: from the environment, the config, or generated into the data dir.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `PALISADE_ADMIN_TOKEN`.
    Env,
    /// `[server] admin_token`.
    Config,
    /// A file in the data dir (generated if it did not exist).
    File(PathBuf),
}

/// Resolves the admin token. A generated token is 32 random bytes, hex, in `admin.token` with
/// mode 0600, written atomically (temp file + rename) so a crash never leaves half a token.
pub fn resolve(
    env: Option<String>,
    config: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<(String, TokenSource)> {
    if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
        return Ok((t.trim().to_owned(), TokenSource::Env));
    }
    if let Some(t) = config.filter(|t| !t.trim().is_empty()) {
        return Ok((t.trim().to_owned(), TokenSource::Config));
    }
    let path = data_dir.join("admin.token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim();
        if t.len() >= 32 {
            return Ok((t.to_owned(), TokenSource::File(path)));
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let token: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let tmp = data_dir.join(".admin.token.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok((token, TokenSource::File(path)))
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_stable_across_restarts() {
        let dir = std::env::temp_dir().join(format!("palisade-token-{}", rand::random::<u64>()));
        let (a, src) = resolve(None, None, &dir).unwrap();
        assert_eq!(a.len(), 64);
        assert!(matches!(src, TokenSource::File(_)));
        let (b, _) = resolve(None, None, &dir).unwrap();
        assert_eq!(a, b);
        let (c, src) = resolve(Some("from-env".into()), Some("from-config"), &dir).unwrap();
        assert_eq!((c.as_str(), src), ("from-env", TokenSource::Env));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
