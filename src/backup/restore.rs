//! `skiff restore --from FILE --data DIR --advertise IP`: a new single-member cluster holding a
//! backup's state, and the first start of such a member.
//!
//! Steps of a restore (a crash at any point leaves either no member or a complete one, because
//! node.json is written last):
//! 1. refuse a data dir that already holds a member;
//! 2. make a new cluster identity (new cluster id, node 1, new token; a new CA unless the old
//!    PKI is reused with `--pki-from`);
//! 3. load the backup into DIR/db: the kv state and history at the backup's revision, no raft
//!    log and no membership (nothing is ingested unless the whole file checked out); meanwhile
//!    the PKI, token, kubeconfig and node.json are written and synced under temporary names;
//! 4. put the restore marker, the PKI, token and kubeconfig in place, then node.json.
//!
//! The first `skiff server --data DIR` then sees the marker (`Origin::Restored`): it initializes
//! raft with itself alone, builds a raft snapshot of the restored state and purges the log
//! under it, so members that join later receive the state as a snapshot (the restored data is
//! in no log entry), and only then removes the marker. Every step is idempotent, so a crash in
//! between is repaired by the next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use skiff_raft::RaftNode;
use skiff_storage::{Store, StoreOptions};
use tracing::info;

use crate::pki::{FileSpec, PkiPaths, StagedFiles};
use crate::progress::Progress;
use crate::server::Addresses;
use crate::server::bootstrap::{self, MemberFiles, NewCluster};
use crate::server::identity::NodeIdentity;

/// What `skiff restore` needs.
pub struct RestoreRequest {
    pub from: PathBuf,
    pub data: PathBuf,
    pub advertise: String,
    pub name: Option<String>,
    pub skip_hash_check: bool,
    pub pki_from: Option<PathBuf>,
    /// The cluster token an encrypted backup was sealed with.
    pub token: Option<String>,
}

/// DATA/restored.json: present from a restore until its first start has sealed the state.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreMarker {
    pub from_file: String,
    pub from_cluster: String,
    pub revision: i64,
}

impl RestoreMarker {
    fn path(data: &Path) -> PathBuf {
        data.join("restored.json")
    }

    pub fn exists(data: &Path) -> bool {
        Self::path(data).exists()
    }

    fn file(&self, data: &Path) -> anyhow::Result<FileSpec> {
        Ok(FileSpec {
            path: Self::path(data),
            contents: serde_json::to_vec_pretty(self)?,
            secret: false,
        })
    }

    fn remove(data: &Path) -> anyhow::Result<()> {
        let path = Self::path(data);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(super::files::sync_parent(&path)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

#[tracing::instrument(skip_all, fields(from = %req.from.display(), data = %req.data.display()))]
pub async fn run(req: RestoreRequest) -> anyhow::Result<()> {
    // 1. Refuse a data dir that is already a member.
    if let Some(existing) = NodeIdentity::load(&req.data)? {
        bail!(
            "{} already holds a member of cluster {}; restore into an empty --data dir",
            req.data.display(),
            existing.cluster_id
        );
    }
    let addrs = Addresses::new(&req.advertise, req.name.clone(), None, None, None)?;
    // 2. The new cluster's identity.
    let keep_pki = match &req.pki_from {
        Some(old) => Some(
            PkiPaths::new(old)
                .load()
                .with_context(|| format!("loading the PKI to keep from {}", old.display()))?,
        ),
        None => None,
    };
    // The backup's at-rest keys (its Secrets are sealed with them) become the new cluster's.
    let backup_keys = super::envelope::open(&req.from, req.token.as_deref())
        .with_context(|| format!("opening {}", req.from.display()))?
        .at_rest_keys;
    let NewCluster {
        identity,
        pki,
        token,
    } = bootstrap::new_cluster(&addrs, keep_pki.as_ref(), backup_keys.as_deref())?;
    std::fs::create_dir_all(&req.data)
        .with_context(|| format!("creating {}", req.data.display()))?;

    // 3. The backup into DIR/db (RocksDB work: off the async threads). The member's files are
    //    staged (written and fsynced under temporary names) at the same time: their fsyncs
    //    wait on the disk while the load keeps the CPU busy.
    let progress = Progress::spinner(&format!("restoring {}", req.from.display()));
    let started = Instant::now();
    let member = MemberFiles::new(&req.data, &identity, &pki, &token, &addrs)?;
    let staging = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let rest = StagedFiles::write(&member.rest)?;
        match StagedFiles::write(std::slice::from_ref(&member.node)) {
            Ok(node) => Ok((rest, node)),
            Err(e) => {
                rest.discard();
                Err(e.into())
            }
        }
    });
    let from = req.from.clone();
    let db = req.data.join("db");
    let opts = StoreOptions {
        cluster_id: identity.cluster_id.clone(),
        ..Default::default()
    };
    let check_digest = !req.skip_hash_check;
    let file_bytes = std::fs::metadata(&from)
        .with_context(|| format!("reading {}", from.display()))?
        .len();
    let created_db = !db.exists();
    let db_dir = db.clone();
    let backup_token = req.token.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut input = super::envelope::open(&from, backup_token.as_deref())
            .with_context(|| format!("opening {}", from.display()))?
            .snapshot;
        Store::restore_backup_checked(&db, &opts, &mut input, check_digest)
            .with_context(|| format!("{} cannot be restored", from.display()))
    })
    .await
    .map_err(|e| anyhow!("restore thread: {e}"))?;
    let staged = staging
        .await
        .map_err(|e| anyhow!("restore file thread: {e}"))?;
    let (header, (rest, node)) = match (loaded, staged) {
        (Ok(header), Ok(staged)) => (header, staged),
        (loaded, staged) => {
            // Nothing was made durable in the store (the files are ingested only after the
            // whole backup checked out); do not leave an empty store or staged files behind
            // for the next attempt to trip on.
            if created_db {
                let _ = std::fs::remove_dir_all(&db_dir);
            }
            let staging_error = match staged {
                Ok((rest, node)) => {
                    rest.discard();
                    node.discard();
                    None
                }
                Err(e) => Some(e.context("writing the member's files")),
            };
            // Staging made it; it is left only if something else is in it.
            let _ = std::fs::remove_dir(req.data.join("pki"));
            progress.finish("restore refused");
            return Err(loaded
                .err()
                .or(staging_error)
                .unwrap_or_else(|| anyhow!("restore failed")));
        }
    };
    let secs = started.elapsed().as_secs_f64().max(1e-3);

    // 4. The marker and the member's files in place, node.json last.
    let marker = RestoreMarker {
        from_file: req.from.display().to_string(),
        from_cluster: header.cluster_id.clone(),
        revision: header.revision,
    };
    let placed = StagedFiles::write(&[marker.file(&req.data)?])
        .map_err(anyhow::Error::from)
        .and_then(|marker| Ok(rest.merge(marker).commit()?));
    if let Err(e) = placed {
        node.discard();
        return Err(e);
    }
    node.commit()?;
    progress.finish(&format!(
        "restored revision {} of cluster {} ({} bytes in {:.1}s, {:.1} MB/s)",
        header.revision,
        header.cluster_id,
        file_bytes,
        secs,
        file_bytes as f64 / 1e6 / secs
    ));
    info!(new_cluster = %identity.cluster_id, revision = header.revision, "restore complete");
    println!(
        "restored revision {} into new cluster {} in {}",
        header.revision,
        identity.cluster_id,
        req.data.display()
    );
    println!(
        "start it with: skiff server --data {} --advertise {}",
        req.data.display(),
        req.advertise
    );
    println!(
        "other members join with --join https://{} --token {token}",
        addrs.api_advertised
    );
    Ok(())
}

/// The first start of a restored member (see the module comment). Runs before the API port
/// serves joins.
#[tracing::instrument(skip_all, fields(node_id = node.id()))]
pub async fn finish_first_start(node: &RaftNode, data: &Path) -> anyhow::Result<()> {
    const WAIT: Option<Duration> = Some(Duration::from_secs(60));
    node.initialize().await?;
    let raft = node.raft();
    let id = node.id();
    let metrics = raft
        .wait(WAIT)
        .metrics(
            |m| {
                m.current_leader == Some(id)
                    && m.last_log_index.is_some()
                    && m.last_applied.map(|l| l.index) == m.last_log_index
            },
            "the restored member leads and has applied its log",
        )
        .await
        .map_err(|e| anyhow!("restored member did not become leader: {e}"))?;
    let upto = metrics.last_applied.map_or(0, |l| l.index);
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| anyhow!("building the restored snapshot: {e}"))?;
    raft.wait(WAIT)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= upto),
            "a raft snapshot of the restored state",
        )
        .await
        .map_err(|e| anyhow!("building the restored snapshot: {e}"))?;
    raft.trigger()
        .purge_log(upto)
        .await
        .map_err(|e| anyhow!("purging the log: {e}"))?;
    raft.wait(WAIT)
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= upto),
            "the log purged under the snapshot",
        )
        .await
        .map_err(|e| anyhow!("purging the log: {e}"))?;
    RestoreMarker::remove(data)?;
    info!(upto, "restored state sealed into a raft snapshot");
    Ok(())
}
