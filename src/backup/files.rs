//! Snapshot files on disk: written atomically (FILE.part, fsync, rename, fsync the directory),
//! named `skiff-snapshot-<member>-<unix ms>.snap` when scheduled, listed and pruned by the
//! creation time in their headers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use skiff_storage::{SnapshotHeader, read_header};

use super::error::BackupError;

/// Extension of snapshot files that `ls` and `prune` consider.
pub const SNAPSHOT_EXT: &str = "snap";

/// Writes `path` through `write` into `path.part`, then fsyncs and renames it, so `path` only
/// ever holds a complete file. The part file is removed when `write` fails.
pub fn write_atomically<T, E>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<BackupError>,
{
    let part = part_path(path);
    let file = File::create(&part).map_err(|e| BackupError::io("creating", &part, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let outcome = write(&mut out).and_then(|value| {
        let file = out
            .into_inner()
            .map_err(|e| BackupError::io("writing", &part, e.into_error()))?;
        file.sync_all()
            .map_err(|e| BackupError::io("syncing", &part, e))?;
        std::fs::rename(&part, path).map_err(|e| BackupError::io("renaming", &part, e))?;
        sync_parent(path)?;
        Ok(value)
    });
    if outcome.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    outcome
}

pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Makes a rename or removal in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackupError::io("syncing directory", dir, e))
}

/// File name of a scheduled snapshot.
pub fn scheduled_name(member: &str, unix_ms: u64) -> String {
    let member: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("skiff-snapshot-{member}-{unix_ms}.{SNAPSHOT_EXT}")
}

/// One snapshot file in a directory.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
    /// The header, or why it could not be read.
    pub header: Result<SnapshotHeader, String>,
}

impl SnapshotFile {
    /// Creation time: the header's, else 0 (unreadable files sort oldest).
    pub fn created_unix_ms(&self) -> u64 {
        self.header.as_ref().map_or(0, |h| h.created_unix_ms)
    }
}

/// Snapshot files (`*.snap`) in `dir`, oldest first. Only headers are read.
pub fn list(dir: &Path) -> Result<Vec<SnapshotFile>, BackupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BackupError::io("listing", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BackupError::io("listing", dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SNAPSHOT_EXT) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        // Through the envelope: scheduled snapshots carry the at-rest keys ahead of the header.
        let header = super::envelope::open(&path, None)
            .map_err(|e| e.to_string())
            .and_then(|mut opened| read_header(&mut opened.snapshot).map_err(|e| e.to_string()));
        files.push(SnapshotFile { path, size, header });
    }
    files.sort_by(|a, b| (a.created_unix_ms(), &a.path).cmp(&(b.created_unix_ms(), &b.path)));
    Ok(files)
}

/// Deletes all but the newest `retention` snapshot files in `dir`; returns the deleted paths.
pub fn prune(dir: &Path, retention: usize) -> Result<Vec<PathBuf>, BackupError> {
    let files = list(dir)?;
    let excess = files.len().saturating_sub(retention);
    let mut removed = Vec::new();
    for file in files.into_iter().take(excess) {
        std::fs::remove_file(&file.path).map_err(|e| BackupError::io("removing", &file.path, e))?;
        removed.push(file.path);
    }
    if !removed.is_empty() {
        sync_parent(&dir.join("x"))?;
    }
    Ok(removed)
}
