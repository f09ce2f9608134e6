//! The judgments of `skiff doctor`: pure functions from what was measured to a verdict and
//! what to do about it, so every threshold is unit-tested without a cluster. The measuring is
//! in `doctor.rs`.

use std::time::Duration;

use serde::Serialize;

use super::status::human_bytes;

/// Clock difference between members that etcd's peer prober already reports ("prober found
/// high clock drift", rafthttp/probing_status.go warns above 1 s).
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(1);
/// Beyond this, times one member writes (Lease renewals, event and token timestamps,
/// certificates' notBefore) are judged by another member's clock that is off by most of the
/// 40 s node grace period: nodes flip NotReady when leadership moves.
pub const CLOCK_SKEW_FAIL: Duration = Duration::from_secs(30);

/// etcd's hardware guidance: the 99th percentile of WAL fdatasync should stay below 10 ms
/// (etcd docs, "Hardware recommendations" and `etcd_disk_wal_fsync_duration_seconds`; the
/// widely used fio check writes 2300-byte blocks with fdatasync after each, as we do).
pub const FSYNC_P99_WARN: Duration = Duration::from_millis(10);
/// One heartbeat interval (100 ms, etcd's default and skiff's, raft/src/config.rs): a disk
/// whose p99 sync is longer stalls a write for a third of an election timeout (300-500 ms),
/// which is how etcd's "leader failed to send out heartbeat on time" starts on slow disks.
pub const FSYNC_P99_FAIL: Duration = Duration::from_millis(100);

/// Certificates closer than this to expiry get a warning (kubeadm's `certs
/// check-expiration` shows residual time; k3s rotates within 90 days, we warn at 30).
pub const CERT_WARN_DAYS: i64 = 30;

/// etcd's default backend quota (--quota-backend-bytes, 2 GiB): a store this large is far
/// beyond what a cluster of this kind usually holds, so history or objects are piling up.
pub const DB_SIZE_WARN: u64 = 2 << 30;
/// etcd's suggested maximum quota (8 GiB); RocksDB has no hard limit, but backups, snapshots
/// sent to lagging members and restores all scale with it.
pub const DB_SIZE_FAIL: u64 = 8 << 30;

/// kubelet's default hard eviction threshold (nodefs.available < 10%).
pub const DISK_FREE_WARN_PERCENT: f64 = 10.0;
/// RocksDB stops accepting writes when it cannot flush or compact; well before that the
/// member is one compaction away from refusing every write.
pub const DISK_FREE_FAIL_PERCENT: f64 = 2.0;

/// A leader whose quorum last answered longer ago than this (several election timeouts of
/// 300-500 ms) is cut off: openraft leaders keep their role without a quorum by default.
pub const QUORUM_ACK_STALE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    /// Could not be checked from here (e.g. the disk check without a data dir).
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Skip => "SKIP",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Level,
    pub detail: String,
    /// What to do; empty when nothing is needed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advice: String,
}

impl Check {
    pub fn new(name: impl Into<String>, status: Level, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            advice: String::new(),
        }
    }

    pub fn advise(mut self, advice: impl Into<String>) -> Self {
        self.advice = advice.into();
        self
    }
}

/// Voters and which of them answered.
pub struct Quorum<'a> {
    pub voters: usize,
    pub up: usize,
    pub down: Vec<&'a str>,
    pub learners: usize,
}

pub fn quorum(q: &Quorum<'_>) -> Check {
    let need = q.voters / 2 + 1;
    let learners = if q.learners > 0 {
        format!(" (+{} learner(s))", q.learners)
    } else {
        String::new()
    };
    let down = q.down.join(", ");
    if q.up < need {
        return Check::new(
            "quorum",
            Level::Fail,
            format!(
                "{} of {} voters answer{learners}; a quorum needs {need}: writes and consistent reads stop",
                q.up, q.voters
            ),
        )
        .advise(format!(
            "restart the stopped members ({down}) as before (`skiff server --data DIR --advertise IP`); if they are lost for good, \
             restore a backup into a new cluster (`skiff restore`)"
        ));
    }
    let tolerates = q.up - need;
    let detail = format!(
        "{} of {} voters answer{learners}; {tolerates} more can fail",
        q.up, q.voters
    );
    if q.up < q.voters {
        return Check::new("quorum", Level::Warn, detail).advise(format!(
            "restart {down} as before (`skiff server --data DIR --advertise IP`), or remove it for good with \
             `skiff server --remove NAME --data DIR` and join a new member"
        ));
    }
    if q.voters == 1 {
        return Check::new("quorum", Level::Warn, detail).advise(
            "a single voter has no fault tolerance: join two more members (`skiff server --join`)",
        );
    }
    if q.voters.is_multiple_of(2) {
        return Check::new("quorum", Level::Warn, detail).advise(format!(
            "{} voters tolerate no more failures than {}: add or remove one member",
            q.voters,
            q.voters - 1
        ));
    }
    Check::new("quorum", Level::Ok, detail)
}

/// One answering member's view of leadership.
pub struct LeaderView<'a> {
    pub name: &'a str,
    pub term: u64,
    /// The leader's name as this member knows it (None: it knows of none).
    pub leader: Option<&'a str>,
    /// Set when this member is the leader itself.
    pub quorum_ack: Option<Duration>,
    pub is_leader: bool,
}

pub fn leader(views: &[LeaderView<'_>]) -> Check {
    let restore = "restore the quorum first (see the quorum check); a leader is elected by itself";
    if views.is_empty() {
        return Check::new("leader", Level::Fail, "no member answers").advise(restore);
    }
    let leaders: Vec<&LeaderView> = views.iter().filter(|v| v.is_leader).collect();
    let live: Vec<&&LeaderView> = leaders
        .iter()
        .filter(|v| v.quorum_ack.is_some_and(|ack| ack <= QUORUM_ACK_STALE))
        .collect();
    let Some(live) = live.first() else {
        if let Some(stranded) = leaders.first() {
            let ack = stranded
                .quorum_ack
                .map_or("never".into(), |a| format!("{:.1} s ago", a.as_secs_f64()));
            return Check::new(
                "leader",
                Level::Fail,
                format!(
                    "{} holds the leader role (term {}) but its quorum last acknowledged it {ack}",
                    stranded.name, stranded.term
                ),
            )
            .advise(restore);
        }
        let known: Vec<&str> = views.iter().filter_map(|v| v.leader).collect();
        let detail = if known.is_empty() {
            "no member knows a leader: an election cannot complete".to_string()
        } else {
            format!(
                "members name {} as leader, but it does not answer",
                known.join(", ")
            )
        };
        return Check::new("leader", Level::Fail, detail).advise(restore);
    };
    let disagreeing: Vec<&str> = views
        .iter()
        .filter(|v| v.leader != Some(live.name))
        .map(|v| v.name)
        .collect();
    if !disagreeing.is_empty() {
        return Check::new(
            "leader",
            Level::Warn,
            format!(
                "{} leads term {}, but {} do(es) not follow it yet",
                live.name,
                live.term,
                disagreeing.join(", ")
            ),
        )
        .advise("an election just happened or a member is partitioned: run doctor again; if it stays, check the network between members (raft port 2380)");
    }
    Check::new(
        "leader",
        Level::Ok,
        format!("{} leads term {}", live.name, live.term),
    )
}

/// A member's clock minus this host's, and how uncertain that is (half the round trip).
pub struct ClockSample<'a> {
    pub name: &'a str,
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

pub fn clock_skew(samples: &[ClockSample<'_>]) -> Check {
    let offsets = samples
        .iter()
        .map(|s| format!("{} {:+} ms", s.name, s.offset_ms))
        .collect::<Vec<_>>()
        .join(", ");
    let (Some(min), Some(max)) = (
        samples.iter().min_by_key(|s| s.offset_ms),
        samples.iter().max_by_key(|s| s.offset_ms),
    ) else {
        return Check::new("clock skew", Level::Skip, "no member answered");
    };
    let skew = (max.offset_ms - min.offset_ms).max(0);
    let uncertainty = max.uncertainty_ms + min.uncertainty_ms;
    let detail = format!("{skew} ms between members (±{uncertainty} ms); vs this host: {offsets}");
    // Only a difference larger than what the round trips could explain counts.
    let certain = Duration::from_millis((skew - uncertainty).max(0) as u64);
    let advice = format!(
        "run NTP (chrony or systemd-timesyncd) on every member; {} and {} differ most",
        min.name, max.name
    );
    if certain > CLOCK_SKEW_FAIL {
        Check::new("clock skew", Level::Fail, detail).advise(advice)
    } else if certain > CLOCK_SKEW_WARN {
        Check::new("clock skew", Level::Warn, detail).advise(advice)
    } else {
        Check::new("clock skew", Level::Ok, detail)
    }
}

/// The p-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn fsync(samples: &[Duration], dir: &str) -> Check {
    let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
    let detail = format!(
        "p50 {:.2} ms, p99 {:.2} ms over {} fdatasyncs in {dir}",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        samples.len()
    );
    let advice = "put the data dir on a local SSD (not network storage, not a disk shared with busy \
                  containers); slow syncs delay every write and can cost elections";
    if p99 > FSYNC_P99_FAIL {
        Check::new("disk fsync", Level::Fail, detail).advise(advice)
    } else if p99 > FSYNC_P99_WARN {
        Check::new("disk fsync", Level::Warn, detail).advise(advice)
    } else {
        Check::new("disk fsync", Level::Ok, detail)
    }
}

/// A certificate's validity, in seconds since the Unix epoch.
pub fn certificate(name: &str, subject: &str, not_before: i64, not_after: i64, now: i64) -> Check {
    let days_left = (not_after - now).div_euclid(86_400);
    let name = format!("certificate {name}");
    let rotate = "issue new certificates from the cluster CA (see the operations guide on \
                  certificate rotation)";
    if now < not_before {
        return Check::new(
            name,
            Level::Fail,
            format!(
                "{subject} is not valid for another {} s: this host's clock is behind",
                not_before - now
            ),
        )
        .advise("fix this host's clock (NTP)");
    }
    if now >= not_after {
        return Check::new(
            name,
            Level::Fail,
            format!("{subject} expired {} day(s) ago", -days_left),
        )
        .advise(rotate);
    }
    let detail = format!("{subject} expires in {days_left} day(s)");
    if days_left < CERT_WARN_DAYS {
        Check::new(name, Level::Warn, detail).advise(rotate)
    } else {
        Check::new(name, Level::Ok, detail)
    }
}

pub fn db_size(sizes: &[(&str, u64)]) -> Check {
    let Some(&(largest, bytes)) = sizes.iter().max_by_key(|(_, b)| *b) else {
        return Check::new("db size", Level::Skip, "no member answered");
    };
    let detail = sizes
        .iter()
        .map(|(name, b)| format!("{name} {}", human_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let advice = format!(
        "{largest} holds {}: look for piling objects (Events, old ReplicaSets) and lower \
         --history-retention-secs; take a backup first",
        human_bytes(bytes)
    );
    if bytes > DB_SIZE_FAIL {
        Check::new("db size", Level::Fail, detail).advise(advice)
    } else if bytes > DB_SIZE_WARN {
        Check::new("db size", Level::Warn, detail).advise(advice)
    } else {
        Check::new("db size", Level::Ok, detail)
    }
}

pub fn disk_free(dir: &str, free: u64, total: u64) -> Check {
    let percent = if total == 0 {
        100.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let detail = format!(
        "{} free of {} ({percent:.1}%) under {dir}",
        human_bytes(free),
        human_bytes(total)
    );
    let advice = "free space on the data dir's filesystem or move the data dir to a larger one";
    if percent < DISK_FREE_FAIL_PERCENT {
        Check::new("disk space", Level::Fail, detail).advise(advice)
    } else if percent < DISK_FREE_WARN_PERCENT {
        Check::new("disk space", Level::Warn, detail).advise(advice)
    } else {
        Check::new("disk space", Level::Ok, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(voters: usize, up: usize) -> Level {
        quorum(&Quorum {
            voters,
            up,
            down: vec!["node3"],
            learners: 0,
        })
        .status
    }

    #[test]
    fn quorum_levels_follow_the_failures_left() {
        assert_eq!(q(3, 3), Level::Ok);
        assert_eq!(q(3, 2), Level::Warn, "one down: no failure left");
        assert_eq!(q(3, 1), Level::Fail, "two down: no quorum");
        assert_eq!(q(5, 4), Level::Warn);
        assert_eq!(q(5, 3), Level::Warn);
        assert_eq!(q(5, 2), Level::Fail);
        assert_eq!(q(1, 1), Level::Warn, "a single voter tolerates nothing");
        assert_eq!(q(4, 4), Level::Warn, "an even count");
        let detail = quorum(&Quorum {
            voters: 5,
            up: 5,
            down: vec![],
            learners: 1,
        })
        .detail;
        assert!(detail.contains("2 more can fail"), "{detail}");
    }

    fn view<'a>(name: &'a str, leader: Option<&'a str>, ack_ms: Option<u64>) -> LeaderView<'a> {
        LeaderView {
            name,
            term: 4,
            leader,
            quorum_ack: ack_ms.map(Duration::from_millis),
            is_leader: leader == Some(name),
        }
    }

    #[test]
    fn a_leader_needs_a_fresh_quorum_ack() {
        let healthy = [view("a", Some("a"), Some(40)), view("b", Some("a"), None)];
        assert_eq!(leader(&healthy).status, Level::Ok);
        let stranded = [view("a", Some("a"), Some(9_000))];
        let check = leader(&stranded);
        assert_eq!(check.status, Level::Fail);
        assert!(check.detail.contains("9.0 s ago"), "{}", check.detail);
        assert_eq!(leader(&[view("b", None, None)]).status, Level::Fail);
        let lagging = [view("a", Some("a"), Some(40)), view("b", None, None)];
        assert_eq!(leader(&lagging).status, Level::Warn);
        assert_eq!(leader(&[]).status, Level::Fail);
    }

    fn sample(name: &str, offset_ms: i64) -> ClockSample<'_> {
        ClockSample {
            name,
            offset_ms,
            uncertainty_ms: 5,
        }
    }

    #[test]
    fn clock_skew_counts_only_what_round_trips_cannot_explain() {
        let close = [sample("a", 0), sample("b", 900), sample("c", 1005)];
        assert_eq!(clock_skew(&close).status, Level::Ok, "1005 ms ± 10 ms");
        let off = [sample("a", -800), sample("b", 1_000)];
        let check = clock_skew(&off);
        assert_eq!(check.status, Level::Warn);
        assert!(check.detail.starts_with("1800 ms"), "{}", check.detail);
        assert!(check.advice.contains("a and b"), "{}", check.advice);
        let far = [sample("a", 0), sample("b", 45_000)];
        assert_eq!(clock_skew(&far).status, Level::Fail);
        assert_eq!(clock_skew(&[]).status, Level::Skip);
    }

    #[test]
    fn fsync_thresholds_are_etcds() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(fsync(&ms(&[1; 100]), "d").status, Level::Ok);
        let mut slow = vec![1; 98];
        slow.extend([30, 30]);
        assert_eq!(fsync(&ms(&slow), "d").status, Level::Warn, "p99 30 ms");
        let mut one_outlier = vec![1; 199];
        one_outlier.push(500);
        assert_eq!(
            fsync(&ms(&one_outlier), "d").status,
            Level::Ok,
            "one sync in 200 is above the 99th percentile"
        );
        assert_eq!(fsync(&ms(&[150; 10]), "d").status, Level::Fail);
        assert_eq!(percentile(&ms(&[5, 1, 3]), 50.0), Duration::from_millis(3));
    }

    #[test]
    fn certificates_warn_within_thirty_days() {
        let now = 1_000_000_000;
        let day = 86_400;
        assert_eq!(
            certificate("ca.crt", "CN=x", 0, now + 365 * day, now).status,
            Level::Ok
        );
        let soon = certificate("ca.crt", "CN=x", 0, now + 10 * day + 5, now);
        assert_eq!(soon.status, Level::Warn);
        assert!(soon.detail.contains("10 day(s)"), "{}", soon.detail);
        assert_eq!(
            certificate("a", "CN=x", 0, now - day, now).status,
            Level::Fail
        );
        assert_eq!(
            certificate("a", "CN=x", now + 60, now + day, now).status,
            Level::Fail
        );
    }

    #[test]
    fn size_and_space_levels() {
        assert_eq!(db_size(&[("a", 10 << 20)]).status, Level::Ok);
        assert_eq!(db_size(&[("a", 1), ("b", 3 << 30)]).status, Level::Warn);
        assert_eq!(db_size(&[("a", 9 << 30)]).status, Level::Fail);
        assert_eq!(disk_free("d", 50, 100).status, Level::Ok);
        assert_eq!(disk_free("d", 5, 100).status, Level::Warn);
        assert_eq!(disk_free("d", 1, 100).status, Level::Fail);
    }
}
