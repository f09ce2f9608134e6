//! The audit log: one JSON line per API request (who, what, on which object, the answer, how
//! long), in DATA/audit.log, rotated by size (audit.log.1 .. audit.log.N, oldest dropped) so it
//! never grows without bound.
//!
//! Requests hand their record to a bounded queue drained by one writer thread, so a slow disk
//! never delays a request; when the queue is full the record is dropped and counted, and the
//! count is written as a line of its own once the writer catches up.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde_json::{Value, json};

/// Rotate when the file passes this size.
const MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Rotated files kept.
const KEEP: usize = 5;
const QUEUE: usize = 16 * 1024;

/// One request, as audit.k8s.io Event's essentials.
pub struct Record<'a> {
    /// The request's id (X-Request-Id / Audit-Id), also on its log span.
    pub audit_id: &'a str,
    pub user: &'a str,
    pub groups: &'a [String],
    pub verb: &'a str,
    pub uri: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub code: u16,
    pub latency_ms: f64,
}

#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Value>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (creating) `path` and starts its writer thread.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = open_append(&path)?;
        let (queue, lines) = sync_channel::<Value>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_by_writer = dropped.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut writer = Writer {
                    size: file.metadata().map(|m| m.len()).unwrap_or(0),
                    out: BufWriter::new(file),
                    path,
                };
                while let Ok(line) = lines.recv() {
                    let lost = dropped_by_writer.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        writer.write(&json!({"kind": "AuditDropped", "dropped": lost}));
                    }
                    writer.write(&line);
                    // Flush when the queue is drained: batches under load, prompt when idle.
                    if lines.try_recv().map(|next| writer.write(&next)).is_err() {
                        let _ = writer.out.flush();
                    }
                }
            })?;
        Ok(AuditLog { queue, dropped })
    }

    pub fn record(&self, r: &Record<'_>) {
        let line = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "auditID": r.audit_id,
            "stage": "ResponseComplete",
            "requestReceivedTimestamp": jiff::Timestamp::now().to_string(),
            "user": {"username": r.user, "groups": r.groups},
            "verb": r.verb,
            "requestURI": r.uri,
            "objectRef": {
                "apiGroup": r.group,
                "resource": r.resource,
                "subresource": r.subresource,
                "namespace": r.namespace,
                "name": r.name,
            },
            "responseStatus": {"code": r.code},
            "latencyMs": r.latency_ms,
        });
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    size: u64,
}

impl Writer {
    fn write(&mut self, line: &Value) {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if self.size + bytes.len() as u64 > MAX_BYTES {
            self.rotate();
        }
        if self.out.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    /// audit.log -> audit.log.1 -> ... -> audit.log.KEEP (dropped).
    fn rotate(&mut self) {
        let _ = self.out.flush();
        let numbered = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(numbered(KEEP));
        for i in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(i), numbered(i + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(1));
        match open_append(&self.path) {
            Ok(file) => {
                self.out = BufWriter::new(file);
                self.size = 0;
            }
            Err(e) => tracing::warn!(error = %e, "cannot reopen the audit log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_json_lines_and_rotation_keeps_a_bounded_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(path.clone()).expect("open");
        log.record(&Record {
            audit_id: "0f3a",
            user: "bob",
            groups: &["dev".to_string()],
            verb: "create",
            uri: "/api/v1/namespaces/default/pods",
            group: "",
            resource: "pods",
            subresource: "",
            namespace: "default",
            name: "p",
            code: 201,
            latency_ms: 1.5,
        });
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let line: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
        assert_eq!(line["user"]["username"], "bob");
        assert_eq!(line["responseStatus"]["code"], 201);
        assert_eq!(line["auditID"], "0f3a");

        let mut writer = Writer {
            out: BufWriter::new(open_append(&path).expect("open")),
            path: path.clone(),
            size: 0,
        };
        for _ in 0..KEEP + 3 {
            writer.rotate();
        }
        let files = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(files, KEEP + 1, "audit.log plus {KEEP} rotated files");
    }
}
