//! Writing a set of small files durably at once: each is written under a temporary name and
//! fsynced, all in parallel, then all are renamed into place and their directories synced.
//!
//! Why in parallel: on ext4 one fsync of a new file costs a journal commit (~10 ms on the disks
//! measured here), and concurrent fsyncs share one commit; a member's ten files written one
//! after the other cost more than a restore's whole data load. Staging also lets a caller write
//! the files while it does other work and decide afterwards whether they go in place.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::PkiError;

/// A file to write: secrets get mode 0600.
pub struct FileSpec {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub secret: bool,
}

/// Files written and synced under temporary names, not yet in place. Dropping this without
/// `commit` leaves the temporary files: call `discard`.
#[must_use = "staged files are only in place after commit()"]
pub struct StagedFiles {
    /// (temporary path, final path)
    files: Vec<(PathBuf, PathBuf)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".staged");
    path.with_file_name(name)
}

fn write_synced(tmp: &Path, spec: &FileSpec) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if spec.secret { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(tmp).map_err(io_err(tmp))?;
    file.write_all(&spec.contents).map_err(io_err(tmp))?;
    file.sync_all().map_err(io_err(tmp))
}

/// The distinct parent directories of `paths`.
fn parents<'a>(paths: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths
        .filter_map(Path::parent)
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Runs `work` on every item on threads of its own, returning the first error.
fn on_threads<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), PkiError> + Sync,
) -> Result<(), PkiError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(|| work(item)))
            .collect();
        let mut outcome = Ok(());
        for handle in handles {
            let result = handle.join().unwrap_or_else(|_| {
                Err(PkiError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other("a file writer thread panicked"),
                })
            });
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    })
}

impl StagedFiles {
    /// Writes and fsyncs every file under a temporary name next to its final one (creating the
    /// directories). On error, nothing is left behind but the directories.
    pub fn write(specs: &[FileSpec]) -> Result<StagedFiles, PkiError> {
        for dir in parents(specs.iter().map(|s| s.path.as_path())) {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let staged = StagedFiles {
            files: specs
                .iter()
                .map(|s| (staged_path(&s.path), s.path.clone()))
                .collect(),
        };
        let pairs: Vec<(&FileSpec, &PathBuf)> = specs
            .iter()
            .zip(staged.files.iter().map(|(t, _)| t))
            .collect();
        match on_threads(&pairs, |(spec, tmp)| write_synced(tmp, spec)) {
            Ok(()) => Ok(staged),
            Err(e) => {
                staged.discard();
                Err(e)
            }
        }
    }

    /// Adds `other`'s files to these, to be committed together.
    pub fn merge(mut self, other: StagedFiles) -> StagedFiles {
        self.files.extend(other.files);
        self
    }

    /// Renames every file into place and syncs their directories: when this returns, all of
    /// them are durable under their names.
    pub fn commit(self) -> Result<(), PkiError> {
        for (tmp, path) in &self.files {
            fs::rename(tmp, path).map_err(io_err(path))?;
        }
        let dirs = parents(self.files.iter().map(|(_, p)| p.as_path()));
        on_threads(&dirs, |dir| {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        })
    }

    /// Removes the temporary files (the final ones are left as they were).
    pub fn discard(self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_appear_only_on_commit_and_discard_leaves_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let spec = |name: &str, secret| FileSpec {
            path: dir.path().join("sub").join(name),
            contents: name.as_bytes().to_vec(),
            secret,
        };
        let staged =
            StagedFiles::write(&[spec("a.crt", false), spec("a.key", true)]).expect("write");
        assert!(!dir.path().join("sub/a.crt").exists());
        staged.commit().expect("commit");
        assert_eq!(
            fs::read(dir.path().join("sub/a.key")).expect("read"),
            b"a.key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |n: &str| {
                fs::metadata(dir.path().join("sub").join(n))
                    .expect("meta")
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!((mode("a.crt"), mode("a.key")), (0o644, 0o600));
        }
        StagedFiles::write(&[spec("b", false)])
            .expect("write")
            .discard();
        let mut names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.crt", "a.key"]);
    }
}
