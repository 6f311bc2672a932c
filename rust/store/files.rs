//! Opening a store's own files: only regular files, never through a symlink, never blocking.
//!
//! A store directory may itself be reached through a symlink (users link datasets into place);
//! the manifest and shards inside it must be regular files in it. On Unix the open uses
//! `O_NOFOLLOW` (a symlink fails with `ELOOP`) and `O_NONBLOCK` (a FIFO opens at once instead of
//! waiting for a writer), then `fstat` rejects anything that is not a regular file (FIFOs,
//! devices, sockets, directories). Reads of small files are capped, so a manifest that is
//! really `/dev/zero` or a 100 GB file cannot exhaust memory.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Result, StoreError};

/// The largest `manifest.json` a store reads (a manifest lists shards and metadata: a store of
/// a million shards stays far below this).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Why a path is not one of the store's own regular files, for the error message.
fn not_regular(path: &Path, what: &str) -> StoreError {
    StoreError::corrupt(
        path,
        format!(
            "{what}: a store opens only regular files inside its own directory \
             (replace the link or special file with the file itself)"
        ),
    )
}

/// Open `path` for reading if it is a regular file and not a symlink. `Ok(None)` when it does
/// not exist.
pub fn open_regular(path: &Path) -> Result<Option<File>> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if is_symlink_error(&e) || path.is_symlink() => {
            return Err(not_regular(path, "a symbolic link"))
        }
        Err(e) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let meta = file.metadata().map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if !meta.file_type().is_file() {
        return Err(not_regular(
            path,
            "not a regular file (a FIFO, device, socket or directory)",
        ));
    }
    Ok(Some(file))
}

/// The bytes of the regular file `path`, at most `max` of them (a longer file is an error that
/// names the cap). `Ok(None)` when it does not exist.
pub fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let Some(file) = open_regular(path)? else {
        return Ok(None);
    };
    let io = |e: std::io::Error| StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(StoreError::corrupt(
            path,
            format!("{len} bytes, more than the {max} a store reads for this file"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(StoreError::corrupt(
            path,
            format!("grew past the {max} bytes a store reads for this file while being read"),
        ));
    }
    Ok(Some(bytes))
}

#[cfg(unix)]
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(not(unix))]
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    if path.is_symlink() {
        return Err(std::io::Error::other("a symbolic link"));
    }
    File::open(path)
}

#[cfg(unix)]
fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(not(unix))]
fn is_symlink_error(_: &std::io::Error) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_open_and_everything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        assert!(open_regular(&file).unwrap().is_some());
        assert!(open_regular(&dir.path().join("missing")).unwrap().is_none());
        assert_eq!(read_capped(&file, 5).unwrap().unwrap(), b"hello");
        let e = read_capped(&file, 4).unwrap_err();
        assert!(
            e.is_corrupt() && e.to_string().contains("more than the 4"),
            "{e}"
        );
        // a directory
        let e = open_regular(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret");
        std::fs::write(&target, b"{}").unwrap();
        let link = dir.path().join("manifest.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_regular(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_capped(&zero, 1 << 20).is_err());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err(); // returns at once: O_NONBLOCK
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = open_regular(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
