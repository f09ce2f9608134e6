//! `skiff doctor`: what an operator checks before trusting a cluster — quorum, leader, clock
//! skew between members, the data dir's disk (fsync latency, free space), certificates'
//! expiry, store size — each with a verdict (OK/WARN/FAIL) and what to do. Exits non-zero when
//! any check fails, so scripts can gate on it.
//!
//! Members are asked over the admin RPC (its Status answer carries the member's clock and, on
//! the leader, how fresh its quorum is); the disk and the certificates are checked locally, in
//! the data dir given. The thresholds and their sources are in `doctor_checks.rs`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use clap::Args;
use serde::Serialize;
use skiff_proto::admin::{StatusRequest, StatusResponse};

use super::doctor_checks::{self as checks, Check, Level};
use crate::backup::selective::Target;
use crate::server::bootstrap::admin_client;
use crate::server::identity::NodeIdentity;

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    // The member whose data dir is given also has its disk and certificates checked.
    #[command(flatten)]
    pub target: super::AdminTargetArgs,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

/// fdatasyncs measured at most, and for how long (at least `FSYNC_MIN_SAMPLES` either way).
const FSYNC_SAMPLES: usize = 200;
const FSYNC_MIN_SAMPLES: usize = 20;
const FSYNC_BUDGET: Duration = Duration::from_secs(3);
/// etcd's WAL-like write size used by the usual fio check for etcd disks.
const FSYNC_BLOCK: usize = 2300;

#[derive(Serialize)]
struct Report {
    cluster_id: String,
    checks: Vec<Check>,
    summary: Summary,
}

#[derive(Serialize, Default)]
struct Summary {
    ok: usize,
    warn: usize,
    fail: usize,
    skip: usize,
}

/// One member's answer to Status and how its clock compares with this host's.
struct Answer {
    status: StatusResponse,
    offset_ms: i64,
    uncertainty_ms: i64,
}

struct Probe {
    id: u64,
    name: String,
    voter: bool,
    answer: Result<Answer, String>,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let target = args.target.resolve()?;
    let mut report = Report {
        cluster_id: String::new(),
        checks: Vec::new(),
        summary: Summary::default(),
    };
    match probe(&target.server, &target).await {
        Ok(first) => {
            report.cluster_id = first.status.cluster_id.clone();
            let probes = probe_members(&first.status, &target).await;
            report.checks.extend(cluster_checks(&probes));
        }
        Err(e) => report.checks.push(
            Check::new(
                "reach",
                Level::Fail,
                format!("{} does not answer: {e}", target.server),
            )
            .advise("start that member, or point --server (or --kubeconfig) at another one"),
        ),
    }
    report.checks.extend(local_checks(&args, &target).await);
    for check in &report.checks {
        match check.status {
            Level::Ok => report.summary.ok += 1,
            Level::Warn => report.summary.warn += 1,
            Level::Fail => report.summary.fail += 1,
            Level::Skip => report.summary.skip += 1,
        }
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report)?;
    }
    if report.summary.fail > 0 {
        return Err(anyhow!("{} check(s) failed", report.summary.fail));
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Status from `api`, with the member's clock offset estimated NTP-style: its time minus ours
/// at the middle of the round trip, uncertain by half the round trip.
async fn probe(api: &str, target: &Target) -> Result<Answer, String> {
    let mut client = admin_client(api, &target.ca_pem, Some(&target.client))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let sent_ms = now_ms();
    let started = Instant::now();
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let half_rtt = (started.elapsed().as_millis() as i64 + 1) / 2;
    Ok(Answer {
        offset_ms: status.unix_time_ms - (sent_ms + half_rtt),
        // +1: both clocks are read in whole milliseconds.
        uncertainty_ms: half_rtt + 1,
        status,
    })
}

/// Every member in `first`'s membership, asked at once.
async fn probe_members(first: &StatusResponse, target: &Target) -> Vec<Probe> {
    let asks = first.members.iter().map(|m| async move {
        Probe {
            id: m.node_id,
            name: m.name.clone(),
            voter: m.voter,
            answer: probe(&m.api_addr, target).await,
        }
    });
    futures::future::join_all(asks).await
}

fn cluster_checks(probes: &[Probe]) -> Vec<Check> {
    let answered: Vec<(&Probe, &Answer)> = probes
        .iter()
        .filter_map(|p| p.answer.as_ref().ok().map(|a| (p, a)))
        .collect();
    let name_of = |id: u64| {
        probes
            .iter()
            .find(|p| p.id == id && id != 0)
            .map(|p| p.name.as_str())
    };
    let voters = probes.iter().filter(|p| p.voter).count();
    let down: Vec<&str> = probes
        .iter()
        .filter(|p| p.voter && p.answer.is_err())
        .map(|p| p.name.as_str())
        .collect();
    let quorum = checks::quorum(&checks::Quorum {
        voters,
        up: voters - down.len(),
        down,
        learners: probes.len() - voters,
    });
    let views: Vec<checks::LeaderView> = answered
        .iter()
        .map(|(p, a)| checks::LeaderView {
            name: &p.name,
            term: a.status.term,
            leader: name_of(a.status.leader_id),
            quorum_ack: a.status.millis_since_quorum_ack.map(Duration::from_millis),
            is_leader: a.status.state == "Leader" && a.status.leader_id == a.status.node_id,
        })
        .collect();
    let clocks: Vec<checks::ClockSample> = answered
        .iter()
        .map(|(p, a)| checks::ClockSample {
            name: &p.name,
            offset_ms: a.offset_ms,
            uncertainty_ms: a.uncertainty_ms,
        })
        .collect();
    let sizes: Vec<(&str, u64)> = answered
        .iter()
        .map(|(p, a)| (p.name.as_str(), a.status.db_size_bytes))
        .collect();
    let mut out = vec![quorum, checks::leader(&views), checks::clock_skew(&clocks)];
    out.push(checks::db_size(&sizes));
    for p in probes {
        if let Err(e) = &p.answer {
            out.push(
                Check::new(
                    format!("member {}", p.name),
                    Level::Warn,
                    format!("unreachable: {e}"),
                )
                .advise("check that it runs and that this host reaches its API port (6443)"),
            );
        }
    }
    out
}

/// The disk of the data dir (when it holds a member) and the certificates at hand.
async fn local_checks(args: &DoctorArgs, target: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    let member_here = matches!(NodeIdentity::load(&args.target.data), Ok(Some(_)));
    if member_here {
        let dir = args.target.data.clone();
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || measure_fsync(&dir)).await {
            Ok(Ok(samples)) => out.push(checks::fsync(&samples, &shown)),
            Ok(Err(e)) => out.push(
                Check::new(
                    "disk fsync",
                    Level::Fail,
                    format!("cannot write in {shown}: {e}"),
                )
                .advise("the member needs a writable data dir"),
            ),
            Err(e) => out.push(Check::new("disk fsync", Level::Skip, e.to_string())),
        }
        match disk_space(&args.target.data) {
            Ok((free, total)) => out.push(checks::disk_free(&shown, free, total)),
            Err(e) => out.push(Check::new("disk space", Level::Skip, e.to_string())),
        }
        out.extend(pki_dir_certificates(&args.target.data.join("pki")));
    } else {
        let why = format!(
            "{} holds no member: pass --data to check a member's disk",
            args.target.data.display()
        );
        out.push(Check::new("disk fsync", Level::Skip, why.clone()));
        out.push(Check::new("disk space", Level::Skip, why));
        out.extend(certificates("kubeconfig CA", &target.ca_pem));
        out.extend(certificates("kubeconfig user", &target.client.cert_pem));
    }
    out
}

/// Sequential 2300-byte writes, each followed by fdatasync, timed; the file is removed after.
fn measure_fsync(dir: &Path) -> std::io::Result<Vec<Duration>> {
    let path = dir.join(format!(".doctor-fsync-{}", std::process::id()));
    let measured = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let block = [0xa5u8; FSYNC_BLOCK];
        let started = Instant::now();
        let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
        while samples.len() < FSYNC_SAMPLES
            && (samples.len() < FSYNC_MIN_SAMPLES || started.elapsed() < FSYNC_BUDGET)
        {
            file.write_all(&block)?;
            let sync = Instant::now();
            file.sync_data()?;
            samples.push(sync.elapsed());
        }
        Ok(samples)
    })();
    let _ = std::fs::remove_file(&path);
    measured
}

/// Free (for unprivileged users) and total bytes of the filesystem holding `dir`.
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

/// Every certificate in DATA/pki/*.crt.
fn pki_dir_certificates(pki: &Path) -> Vec<Check> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(pki) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect(),
        Err(e) => {
            return vec![Check::new(
                "certificates",
                Level::Fail,
                format!("cannot read {}: {e}", pki.display()),
            )];
        }
    };
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&file) {
            Ok(pem) => out.extend(certificates(&name, &pem)),
            Err(e) => out.push(Check::new(
                format!("certificate {name}"),
                Level::Fail,
                format!("cannot read it: {e}"),
            )),
        }
    }
    out
}

/// One check per certificate in a PEM bundle.
fn certificates(name: &str, pem: &str) -> Vec<Check> {
    let now = now_ms() / 1000;
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let parsed = block.map_err(|e| e.to_string()).and_then(|block| {
            block
                .parse_x509()
                .map(|cert| {
                    let validity = cert.validity();
                    (
                        cert.subject().to_string(),
                        validity.not_before.timestamp(),
                        validity.not_after.timestamp(),
                    )
                })
                .map_err(|e| e.to_string())
        });
        out.push(match parsed {
            Ok((subject, not_before, not_after)) => {
                checks::certificate(name, &subject, not_before, not_after, now)
            }
            Err(e) => Check::new(
                format!("certificate {name}"),
                Level::Fail,
                format!("not a certificate: {e}"),
            ),
        });
    }
    out
}

fn print_table(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if !report.cluster_id.is_empty() {
        writeln!(out, "cluster {}", report.cluster_id)?;
    }
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(out, "{:<width$}  {:<6}  DETAIL", "CHECK", "STATUS")?;
    for c in &report.checks {
        writeln!(
            out,
            "{:<width$}  {:<6}  {}",
            c.name,
            c.status.label(),
            c.detail
        )?;
    }
    let todo: Vec<&Check> = report
        .checks
        .iter()
        .filter(|c| !c.advice.is_empty())
        .collect();
    if !todo.is_empty() {
        writeln!(out, "\nWhat to do:")?;
        for c in todo {
            writeln!(out, "  {} ({}): {}", c.name, c.status.label(), c.advice)?;
        }
    }
    let s = &report.summary;
    writeln!(
        out,
        "\n{} ok, {} warning(s), {} failed, {} skipped",
        s.ok, s.warn, s.fail, s.skip
    )
}
