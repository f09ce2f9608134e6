//! Command-line arguments of `skiff backup` and `skiff restore`, and the scheduled-snapshot
//! flags of `skiff server` (the work is in src/backup/).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::backup::cron::Schedule;
use crate::backup::schedule::SnapshotSchedule;
use crate::backup::{inspect, restore, save};

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Write the snapshot to this file (via FILE.part, fsynced, then renamed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub target: super::AdminTargetArgs,
    /// Compress the backup with zstd.
    #[arg(long)]
    pub compress: bool,
    /// Encrypt the backup (AES-256-GCM) with the cluster token: --token, or DATA/token.
    #[arg(long)]
    pub encrypt: bool,
    /// The cluster token (for --encrypt without a data dir).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BackupCommand {
    /// Check a backup's hash and structure; print its revision, cluster and key counts.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// The cluster token, for an encrypted backup.
        #[arg(long)]
        token: Option<String>,
    },
    /// List the snapshots in a directory, oldest first.
    Ls {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delete all but the newest N snapshots in a directory.
    Prune {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        retention: usize,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file to restore.
    #[arg(long)]
    pub from: PathBuf,
    /// Data directory of the new cluster's first member (must not hold a member); with
    /// --only, a running member's data dir whose admin credentials and API to use.
    #[arg(long, required_unless_present = "kubeconfig")]
    pub data: Option<PathBuf>,
    /// The IP the restored member is reached at (a full restore).
    #[arg(long, required_unless_present = "only")]
    pub advertise: Option<String>,
    /// Restore only this into a running cluster, as ordinary creates: `namespace=NAME`.
    #[arg(long, value_name = "namespace=NAME")]
    pub only: Option<String>,
    /// With --only: the running cluster's kubeconfig (instead of --data).
    #[arg(long, requires = "only")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster token an encrypted backup was sealed with (with --only, DATA/token is used
    /// when not given).
    #[arg(long)]
    pub token: Option<String>,
    /// Member name (default: node-<advertise>).
    #[arg(long)]
    pub name: Option<String>,
    /// Restore even if the SHA-256 trailer does not match (the structure is still checked).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Keep the CA and admin credentials of this old data dir instead of making a new PKI.
    #[arg(long, value_name = "OLD_DATA_DIR")]
    pub pki_from: Option<PathBuf>,
}

/// `skiff server` flags for scheduled snapshots.
#[derive(Args, Debug, Clone)]
pub struct SnapshotScheduleArgs {
    /// Take snapshots on this schedule (UTC): 5-field cron ("0 */12 * * *"), @hourly, @daily,
    /// ..., or "@every 30s" / "@every 5m" for fixed intervals. Each member writes its own.
    #[arg(long, value_name = "CRON")]
    pub snapshot_cron: Option<String>,
    /// Scheduled snapshots to keep.
    #[arg(long, default_value_t = 5)]
    pub snapshot_retention: usize,
    /// Where scheduled snapshots go (default DATA/backups).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
}

impl SnapshotScheduleArgs {
    /// The schedule to run, if any.
    pub fn schedule(
        &self,
        data: &std::path::Path,
        member: &str,
    ) -> anyhow::Result<Option<SnapshotSchedule>> {
        let Some(expr) = &self.snapshot_cron else {
            return Ok(None);
        };
        if self.snapshot_retention == 0 {
            bail!("--snapshot-retention must be at least 1");
        }
        let schedule: Schedule = expr.parse().context("--snapshot-cron")?;
        Ok(Some(SnapshotSchedule {
            schedule,
            retention: self.snapshot_retention,
            dir: self
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| data.join("backups")),
            member: member.to_string(),
            at_rest_keys: None,
        }))
    }
}

pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BackupCommand::Verify { file, token }) => inspect::verify(&file, token.as_deref()),
        Some(BackupCommand::Ls { dir }) => inspect::list(&dir),
        Some(BackupCommand::Prune { dir, retention }) => inspect::prune(&dir, retention),
        None => {
            let Some(out) = args.out else {
                bail!("skiff backup needs --out FILE (or a subcommand: verify, ls, prune)");
            };
            let encrypt_with = if args.encrypt {
                Some(token_of(args.token.as_deref(), Some(&args.target.data))?)
            } else {
                None
            };
            save::run(save::SaveRequest {
                out,
                data: args.target.data,
                server: args.target.server,
                kubeconfig: args.target.kubeconfig,
                compress: args.compress,
                encrypt_with,
            })
            .await
        }
    }
}

pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    if let Some(only) = &args.only {
        let namespace = only
            .strip_prefix("namespace=")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--only takes namespace=NAME (got {only:?})"))?;
        let kubeconfig = match (&args.kubeconfig, &args.data) {
            (Some(k), _) => k.clone(),
            (None, Some(data)) => data.join("admin.kubeconfig"),
            (None, None) => anyhow::bail!("--only needs --kubeconfig or --data"),
        };
        let target = crate::backup::selective::Target::from_kubeconfig(&kubeconfig)?;
        let token = match &args.token {
            Some(t) => Some(t.clone()),
            None => args
                .data
                .as_deref()
                .and_then(|d| token_of(None, Some(d)).ok()),
        };
        return crate::backup::selective::run(
            &args.from,
            token.as_deref(),
            args.skip_hash_check,
            namespace,
            &target,
        )
        .await;
    }
    let (Some(data), Some(advertise)) = (args.data, args.advertise) else {
        anyhow::bail!("a full restore needs --data and --advertise");
    };
    restore::run(restore::RestoreRequest {
        from: args.from,
        data,
        advertise,
        name: args.name,
        skip_hash_check: args.skip_hash_check,
        pki_from: args.pki_from,
        token: args.token,
    })
    .await
}

/// The cluster token: given, or read from DATA/token.
fn token_of(given: Option<&str>, data: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(token) = given {
        return Ok(token.trim().to_string());
    }
    let path = data
        .map(crate::server::bootstrap::token_path)
        .ok_or_else(|| anyhow::anyhow!("no token: pass --token or --data"))?;
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading the cluster token from {}", path.display()))?
        .trim()
        .to_string())
}
