//! Container logs in the CRI format every runtime writes
//! (`<RFC3339Nano> <stdout|stderr> <F|P> <content>`), and reading them back for `kubectl logs`
//! with its options: tail, since, timestamps, limit, follow.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// One CRI log record for `content` (without its newline; `complete` = it ended one).
pub fn cri_line(at: SystemTime, stream: &str, complete: bool, content: &[u8]) -> Vec<u8> {
    let stamp = jiff::Timestamp::try_from(at)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string();
    let mut out = Vec::with_capacity(stamp.len() + content.len() + 12);
    out.extend_from_slice(stamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if complete { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// A parsed CRI record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub complete: bool,
    pub content: &'a [u8],
}

/// Parses one line of a CRI log (without its trailing newline).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        timestamp,
        complete: tag.first() != Some(&b'P'),
        content,
    })
}

/// What `kubectl logs` asked for.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// None: every line.
    pub tail_lines: Option<usize>,
    pub since: Option<SystemTime>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// Where container `name` of a pod logs, attempt by attempt: `<pod_logs>/<name>/<attempt>.log`.
pub fn log_path(pod_logs: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_logs.join(container).join(format!("{attempt}.log"))
}

/// Renders one record as kubectl shows it.
fn render(record: &Record<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(record.timestamp.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(record.content);
    if record.complete {
        out.push(b'\n');
    }
}

fn after_since(record: &Record<'_>, since: Option<SystemTime>) -> bool {
    let Some(since) = since else { return true };
    match record.timestamp.parse::<jiff::Timestamp>() {
        Ok(t) => SystemTime::from(t) >= since,
        Err(_) => true,
    }
}

/// Streams the log at `path` into `tx` (rendered), following it while `running()` says the
/// container still runs. Ends when the receiver goes away.
pub async fn stream(
    path: PathBuf,
    options: LogOptions,
    tx: mpsc::Sender<Vec<u8>>,
    running: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<()> {
    let file = tokio::fs::File::open(&path).await?;
    let mut reader = BufReader::new(file);
    // The tail: read every line once, keep the last N (logs rotate, so files stay bounded).
    let mut lines: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let Some(record) = parse(&line) else { continue };
        if !after_since(&record, options.since) {
            continue;
        }
        let mut rendered = Vec::new();
        render(&record, options.timestamps, &mut rendered);
        lines.push_back(rendered);
        if let Some(n) = options.tail_lines
            && lines.len() > n
        {
            lines.pop_front();
        }
    }
    let mut budget = options.limit_bytes.unwrap_or(usize::MAX);
    for chunk in lines {
        if !send_limited(&tx, chunk, &mut budget).await {
            return Ok(());
        }
    }
    if !options.follow {
        return Ok(());
    }
    let mut position = reader.stream_position().await?;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).await?;
        if read == 0 || line.last() != Some(&b'\n') {
            // Nothing new (or half a line): wait, re-reading from the same place.
            if !running() {
                return Ok(());
            }
            if tx.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            reader.seek(std::io::SeekFrom::Start(position)).await?;
            continue;
        }
        position += read as u64;
        line.pop();
        if let Some(record) = parse(&line) {
            let mut rendered = Vec::new();
            render(&record, options.timestamps, &mut rendered);
            if !send_limited(&tx, rendered, &mut budget).await {
                return Ok(());
            }
        }
    }
}

async fn send_limited(tx: &mpsc::Sender<Vec<u8>>, mut chunk: Vec<u8>, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    if chunk.len() > *budget {
        chunk.truncate(*budget);
    }
    *budget -= chunk.len();
    tx.send(chunk).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let line = cri_line(SystemTime::UNIX_EPOCH, "stdout", true, b"hello world");
        assert_eq!(
            line,
            b"1970-01-01T00:00:00.000000000Z stdout F hello world\n".to_vec()
        );
        let record = parse(&line[..line.len() - 1]).expect("parses");
        assert_eq!(record.content, b"hello world");
        assert!(record.complete);
        let partial = cri_line(SystemTime::UNIX_EPOCH, "stderr", false, b"par");
        assert!(
            !parse(&partial[..partial.len() - 1])
                .expect("parses")
                .complete
        );
    }

    #[tokio::test]
    async fn tail_and_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut content = Vec::new();
        for i in 0..5 {
            content.extend(cri_line(
                SystemTime::UNIX_EPOCH,
                "stdout",
                true,
                format!("line {i}").as_bytes(),
            ));
        }
        std::fs::write(&path, content).expect("write");
        let (tx, mut rx) = mpsc::channel(16);
        let options = LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        stream(path.clone(), options, tx, || false)
            .await
            .expect("stream");
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend(chunk);
        }
        assert_eq!(String::from_utf8_lossy(&got), "line 3\nline 4\n");
        let (tx, mut rx) = mpsc::channel(16);
        let options = LogOptions {
            tail_lines: Some(1),
            timestamps: true,
            ..LogOptions::default()
        };
        stream(path, options, tx, || false).await.expect("stream");
        let chunk = rx.recv().await.expect("one line");
        assert_eq!(
            String::from_utf8_lossy(&chunk),
            "1970-01-01T00:00:00.000000000Z line 4\n"
        );
    }
}
