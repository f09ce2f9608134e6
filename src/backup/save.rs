//! `skiff backup --out FILE`: asks one member for a snapshot over the admin API and keeps it.
//! The bytes are validated while they arrive (structure, every record, SHA-256 trailer) and
//! land in FILE.part, which is fsynced and renamed to FILE only when all of it checked out.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow};
use skiff_proto::admin::BackupRequest;
use skiff_storage::{SnapshotHeader, SnapshotStats, scan_snapshot};
use tokio::sync::mpsc;

use super::error::BackupError;
use super::files::write_atomically;
use super::selective::Target;
use crate::pki::PkiPaths;
use crate::pki::at_rest::key_file_from_wire;
use crate::progress::Progress;
use crate::server::bootstrap::admin_client;
use crate::server::identity::NodeIdentity;

/// What `skiff backup` needs.
pub struct SaveRequest {
    pub out: PathBuf,
    pub data: PathBuf,
    pub server: Option<String>,
    /// Credentials and server from an admin kubeconfig instead of the data dir.
    pub kubeconfig: Option<PathBuf>,
    pub compress: bool,
    /// Encrypt with this cluster token.
    pub encrypt_with: Option<String>,
}

/// The API address and the admin credentials to ask with: an admin kubeconfig's, or the
/// member's in `data` (its own API address unless `server` is given).
pub fn admin_target(
    data: &Path,
    server: Option<&str>,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Target> {
    let server = server.map(|s| s.trim_start_matches("https://").to_string());
    if let Some(path) = kubeconfig {
        let target = Target::from_kubeconfig(path)?;
        return Ok(Target {
            server: server.unwrap_or(target.server),
            ..target
        });
    }
    let identity = NodeIdentity::load(data)?.ok_or_else(|| {
        anyhow!(
            "{} holds no member (use --data with a member's data dir, or --kubeconfig)",
            data.display()
        )
    })?;
    let pki = PkiPaths::new(data)
        .load()
        .context("loading admin credentials")?;
    Ok(Target {
        server: server.unwrap_or(identity.api_addr),
        ca_pem: pki.ca.cert_pem,
        client: pki.admin,
    })
}

#[tracing::instrument(skip_all, fields(out = %req.out.display()))]
pub async fn run(req: SaveRequest) -> anyhow::Result<()> {
    let Target {
        server,
        ca_pem,
        client: admin,
    } = admin_target(&req.data, req.server.as_deref(), req.kubeconfig.as_deref())?;
    let started = Instant::now();
    let mut client = admin_client(&server, &ca_pem, Some(&admin)).await?;
    let mut stream = client
        .backup(BackupRequest {})
        .await
        .map_err(|s| anyhow!("backup from {server}: {}", s.message()))?
        .into_inner();

    // The first chunk carries the cluster's at-rest keys: they go into the file ahead of the
    // snapshot (the Secrets in it are sealed with them).
    let mut first = stream
        .message()
        .await
        .map_err(|s| anyhow!("backup stream from {server}: {}", s.message()))?
        .ok_or_else(|| anyhow!("backup stream from {server} ended before any data"))?;
    let at_rest_keys = key_file_from_wire(std::mem::take(&mut first.secrets_encryption_keys));

    // The receiving thread validates and writes; this task feeds it and shows progress.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let out = req.out.clone();
    let (compress, encrypt_with) = (req.compress, req.encrypt_with.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut input = ChannelReader {
            rx,
            current: Vec::new(),
            pos: 0,
        };
        let wrapping = super::envelope::Wrapping {
            compress,
            token: encrypt_with.as_deref(),
            at_rest_keys: at_rest_keys.as_deref(),
        };
        write_atomically(&out, |w| -> Result<_, BackupError> {
            let scanned = super::envelope::write_wrapped(w, wrapping, |inner| {
                scan_snapshot(&mut input, Some(inner), true, &mut |_| {}).map_err(io::Error::other)
            });
            scanned.map_err(|e| BackupError::writing(&out, e))
        })
    });
    let progress = Progress::transfer(&format!("backup from {server}"));
    let mut received = first.data.len() as u64;
    progress.transfer_update(received, first.records);
    let mut stream_error = None;
    // A writer that already stopped found the first chunk invalid; its error says why.
    if tx.send(first.data).await.is_ok() {
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    received += chunk.data.len() as u64;
                    progress.transfer_update(received, chunk.records);
                    if tx.send(chunk.data).await.is_err() {
                        // The writer stopped (it found the data invalid); its error says why.
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    stream_error =
                        Some(anyhow!("backup stream from {server}: {}", status.message()));
                    break;
                }
            }
        }
    }
    drop(tx);
    let written = writer.await.context("backup writer thread")?;
    if let Some(e) = stream_error {
        progress.finish("backup failed");
        return Err(e);
    }
    let (header, stats): (SnapshotHeader, SnapshotStats) =
        written.with_context(|| format!("the snapshot received from {server} is not valid"))?;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    progress.finish(&format!(
        "backup {}: revision {}, {} keys, {} history events, {} bytes in {:.1}s ({:.1} MB/s, {:.0} keys/s)",
        req.out.display(),
        header.revision,
        stats.kv_count,
        stats.history_count,
        stats.bytes,
        secs,
        stats.bytes as f64 / 1e6 / secs,
        stats.kv_count as f64 / secs,
    ));
    println!(
        "{}: cluster {} revision {} ({} keys, {} bytes)",
        req.out.display(),
        header.cluster_id,
        header.revision,
        stats.kv_count,
        stats.bytes
    );
    Ok(())
}

/// `Read` over chunks arriving on a channel; end of stream when the sender is dropped.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
