//! `skiff backup verify FILE`, `skiff backup ls --dir DIR`, `skiff backup prune --dir DIR`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use skiff_storage::{SnapshotHeader, scan_snapshot};

use super::cron::format_utc;
use super::files;

/// Reads the whole file, checking structure and hash, and prints what it holds.
#[tracing::instrument(skip_all, fields(file = %path.display()))]
pub fn verify(path: &Path, token: Option<&str>) -> anyhow::Result<()> {
    let opened = super::envelope::open(path, token)
        .with_context(|| format!("opening {}", path.display()))?;
    let carries_keys = opened.at_rest_keys.is_some();
    let mut input = opened.snapshot;
    let mut by_prefix: BTreeMap<String, u64> = BTreeMap::new();
    let (header, stats) = scan_snapshot(&mut input, None, true, &mut |key| {
        *by_prefix.entry(resource_prefix(key)).or_default() += 1
    })
    .with_context(|| format!("{} is not a valid skiff backup", path.display()))?;
    println!("file:        {}", path.display());
    println!("status:      ok (structure and SHA-256 verified)");
    print_header(&header);
    println!(
        "size:        {} bytes ({} keys, {} history events)",
        stats.bytes, stats.kv_count, stats.history_count
    );
    println!(
        "at-rest keys: {}",
        if carries_keys {
            "carried (a restore reads its encrypted Secrets)"
        } else {
            "none (Secrets, if any, are stored as they are)"
        }
    );
    println!("keys by resource:");
    for (prefix, count) in &by_prefix {
        println!("  {prefix:<48} {count:>9}");
    }
    Ok(())
}

fn print_header(header: &SnapshotHeader) {
    println!("cluster id:  {}", header.cluster_id);
    println!(
        "revision:    {} (compacted {})",
        header.revision, header.compacted_revision
    );
    println!(
        "created:     {} ({} ms)",
        format_utc(header.created_unix_ms),
        header.created_unix_ms
    );
    let version = if header.skiff_version.is_empty() {
        "unknown"
    } else {
        &header.skiff_version
    };
    println!(
        "format:      {} (written by skiff {version})",
        header.format_version
    );
    let members: Vec<String> = header
        .membership
        .membership()
        .nodes()
        .map(|(id, info)| format!("{}({id})", info.name))
        .collect();
    println!("members:     {}", members.join(", "));
}

/// The first two path segments of a key ("/registry/pods/ns/x" -> "/registry/pods"); keys that
/// are not paths are counted together.
pub fn resource_prefix(key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    let Some(rest) = key.strip_prefix('/') else {
        return "(keys without a / path)".to_string();
    };
    let mut segments = rest.splitn(3, '/');
    match (segments.next(), segments.next()) {
        (Some(a), Some(b)) => format!("/{a}/{b}"),
        (Some(a), None) => format!("/{a}"),
        _ => "/".to_string(),
    }
}

/// `skiff backup ls`: one line per snapshot file, oldest first (headers only, not verified).
pub fn list(dir: &Path) -> anyhow::Result<()> {
    let snapshots = files::list(dir)?;
    println!(
        "{:<60} {:>12} {:>10} {:<20} {:<18}",
        "FILE", "SIZE", "REVISION", "CREATED", "CLUSTER"
    );
    for s in &snapshots {
        let name = s.path.file_name().unwrap_or_default().to_string_lossy();
        match &s.header {
            Ok(h) => println!(
                "{:<60} {:>12} {:>10} {:<20} {:<18}",
                name,
                s.size,
                h.revision,
                format_utc(h.created_unix_ms),
                h.cluster_id
            ),
            Err(e) => println!("{name:<60} {:>12} unreadable: {e}", s.size),
        }
    }
    Ok(())
}

/// `skiff backup prune`: keeps the newest `retention` snapshots.
pub fn prune(dir: &Path, retention: usize) -> anyhow::Result<()> {
    let removed = files::prune(dir, retention)?;
    for path in &removed {
        println!("removed {}", path.display());
    }
    println!(
        "{} snapshot(s) removed, at most {retention} kept",
        removed.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::resource_prefix;

    #[test]
    fn groups_keys_by_two_segments() {
        assert_eq!(resource_prefix(b"/registry/pods/ns/a"), "/registry/pods");
        assert_eq!(resource_prefix(b"/registry/nodes/n1"), "/registry/nodes");
        assert_eq!(resource_prefix(b"/registry/pods"), "/registry/pods");
        assert_eq!(resource_prefix(b"/top"), "/top");
        assert_eq!(resource_prefix(b"plain"), "(keys without a / path)");
    }
}
