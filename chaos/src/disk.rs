//! Disk full on one member: its data dir is a small tmpfs of its own (mounted by the caller
//! before the member starts, which needs root), and the fault fills that tmpfs with a filler
//! file, so the member's next RocksDB write or fsync fails with ENOSPC as on a real full disk.
//! Heal removes the filler and restarts the member: RocksDB stays read-only after a background
//! write error until it is reopened, which is what an operator does after freeing space.

use std::io::Write;
use std::path::PathBuf;

use futures::future::BoxFuture;

use crate::error::ChaosError;
use crate::nemesis::{MemberControl, Nemesis, Target};

/// The member whose data dir is the small tmpfs (0-based).
pub const DISK_MEMBER: usize = 2;
/// Size of that tmpfs: ample for a minute of workload, small enough to fill at once.
pub const DISK_SIZE: &str = "256m";
const FILLER: &str = "chaos-disk-filler";

pub struct DiskFull {
    /// The tmpfs mount point (the member's data dir).
    dir: PathBuf,
    filled: Option<usize>,
}

impl DiskFull {
    pub fn new(dir: PathBuf) -> DiskFull {
        DiskFull { dir, filled: None }
    }

    /// Writes zeros until the file system refuses; returns the bytes written.
    fn fill(&self) -> std::io::Result<u64> {
        let mut file = std::fs::File::create(self.dir.join(FILLER))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
        // Whatever is still buffered is lost on purpose: the disk is full.
        let _ = file.sync_all();
        Ok(written)
    }
}

impl Nemesis for DiskFull {
    fn name(&self) -> &'static str {
        "disk-full"
    }
    fn target(&self) -> Target {
        Target::Member(DISK_MEMBER)
    }
    fn inject<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            self.filled = Some(member);
            let written = self.fill().map_err(|e| ChaosError::Process {
                member,
                reason: format!("filling {}: {e}", self.dir.display()),
            })?;
            Ok(format!(
                "filled member {member}'s data disk ({} MiB more would not fit)",
                written >> 20
            ))
        })
    }
    fn heal<'a>(
        &'a mut self,
        ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            let Some(member) = self.filled.take() else {
                return Ok(String::new());
            };
            let filler = self.dir.join(FILLER);
            std::fs::remove_file(&filler).map_err(|e| ChaosError::Process {
                member,
                reason: format!("removing {}: {e}", filler.display()),
            })?;
            // It may have exited on the write error already.
            let _ = ctl.kill(member).await;
            ctl.restart(member).await?;
            Ok(format!("freed the disk and restarted member {member}"))
        })
    }
}
