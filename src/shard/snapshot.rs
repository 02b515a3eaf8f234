//! SNAPSHOT (protocol.md § 11.4): point-in-time snapshots of the node's stores, taken by every
//! shard at its next tick and answered by the shard that received the request once all of
//! them are done. Like COMPACT, the request is a node-wide generation each shard watches.
//!
//! ```text
//!  DATA/snapshots/NAME/shard-000/…   each shard's links and MANIFEST (storage::logstore::snapshot)
//!  DATA/snapshots/NAME/shard-001/…
//!  DATA/snapshots/NAME/SNAPSHOT      written last by the answering shard: the snapshot is whole
//!                                      dkv-snapshot 1
//!                                      node_id 1
//!                                      shards 2
//!                                      taken_at_ms 1764000000000
//!                                      files 12
//!                                      bytes 150000000
//! ```
//!
//! A snapshot holds every write acknowledged before the SNAPSHOT request arrived (each shard
//! seals its log at its tick after that); writes concurrent with it may or may not be in it.

use super::{After, ConnId, ShardCore};
use crate::protocol::message::{put_error, put_ok};
use crate::protocol::{op, Status};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Name of the file that marks a snapshot whole, in its directory.
pub const SNAPSHOT_FILE: &str = "SNAPSHOT";

/// First line of [`SNAPSHOT_FILE`].
pub const SNAPSHOT_HEADER: &str = "dkv-snapshot 1";

/// Longest snapshot name (letters, digits, `.`, `_`, `-`; not starting with `.`).
pub const SNAPSHOT_NAME_MAX: usize = 64;

/// A SNAPSHOT TAKE not answered after this long gets TIMEOUT (a shard stuck in a long step).
const SNAPSHOT_REPLY_WAIT_MS_MAX: u64 = 60_000;

/// The shard's part in snapshots.
#[derive(Debug, Default)]
pub(super) struct Snapshots {
    /// The newest generation this shard has taken its part of.
    seen: u64,
    /// The TAKE this shard received and answers, if any.
    pending: Option<PendingTake>,
}

#[derive(Debug)]
struct PendingTake {
    conn: ConnId,
    id: u32,
    generation: u64,
    name: String,
    dir: PathBuf,
    since_ms: u64,
}

/// One shard's result for a generation: files and bytes linked, or why it failed.
pub type ShardSnapshotResult = Result<(usize, u64), String>;

/// Whether `name` is a valid snapshot name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SNAPSHOT_NAME_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The directory of shard `shard` inside a snapshot (the data directory's layout).
pub fn shard_part(snapshot: &Path, shard: usize) -> PathBuf {
    snapshot.join(format!("shard-{shard:03}"))
}

impl ShardCore {
    /// A SNAPSHOT request: `TAKE name`, `LIST` or `DELETE name`.
    pub(super) fn snapshot_request(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        id: u32,
        command: &str,
        wbuf: &mut Vec<u8>,
    ) -> After {
        let words: Vec<&str> = command.split_whitespace().collect();
        let result = match (self.shared.snapshot_root.clone(), words.as_slice()) {
            (None, _) => Err((
                Status::BadRequest,
                "this node keeps no snapshots (it has no data directory)".to_string(),
            )),
            (Some(root), [verb, name]) if verb.eq_ignore_ascii_case("TAKE") => {
                return self.take(now_ms, conn, id, &root, name, wbuf);
            }
            (Some(root), [verb]) if verb.eq_ignore_ascii_case("LIST") => Ok(list(&root)),
            (Some(root), [verb, name]) if verb.eq_ignore_ascii_case("DELETE") => {
                delete(&root, name)
            }
            _ => Err((
                Status::BadRequest,
                format!("unknown SNAPSHOT command {command:?}: TAKE name | LIST | DELETE name"),
            )),
        };
        match result {
            Ok(text) => {
                self.count_reply(Status::Ok);
                put_ok(wbuf, op::SNAPSHOT, id, &[text.as_bytes()]);
            }
            Err((status, msg)) => {
                self.count_reply(status);
                put_error(wbuf, op::SNAPSHOT, id, status, &msg);
            }
        }
        After::Continue
    }

    fn take(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        id: u32,
        root: &Path,
        name: &str,
        wbuf: &mut Vec<u8>,
    ) -> After {
        let refuse = |core: &mut ShardCore, wbuf: &mut Vec<u8>, status, msg: String| {
            core.count_reply(status);
            put_error(wbuf, op::SNAPSHOT, id, status, &msg);
            After::Continue
        };
        if !valid_name(name) {
            return refuse(
                self,
                wbuf,
                Status::BadRequest,
                format!(
                    "bad snapshot name {name:?}: 1 to {SNAPSHOT_NAME_MAX} letters, digits, \
                     '.', '_' or '-', not starting with '.'"
                ),
            );
        }
        let dir = root.join(name);
        if dir.exists() {
            return refuse(
                self,
                wbuf,
                Status::BadRequest,
                format!("snapshot {name} exists (DELETE it first)"),
            );
        }
        let mut target = self
            .shared
            .snapshot_target
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let generation = self.shared.snapshot_requests.load(Ordering::Acquire);
        let done = self.snapshots_done();
        if self.snapshots.pending.is_some() || done < generation {
            drop(target);
            return refuse(
                self,
                wbuf,
                Status::Unavailable,
                "a snapshot is being taken on this node; retry when it is answered".into(),
            );
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            drop(target);
            return refuse(
                self,
                wbuf,
                Status::StorageError,
                format!("cannot create {}: {e}", dir.display()),
            );
        }
        let generation = generation + 1;
        *target = Some((generation, dir.clone()));
        self.shared
            .snapshot_requests
            .store(generation, Ordering::Release);
        drop(target);
        self.snapshots.pending = Some(PendingTake {
            conn,
            id,
            generation,
            name: name.to_string(),
            dir,
            since_ms: now_ms,
        });
        After::Deferred
    }

    /// The lowest generation every shard has finished.
    fn snapshots_done(&self) -> u64 {
        (self.shared.counters.iter())
            .map(|c| c.snapshot_done.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// On every tick: take this shard's part of a newly asked snapshot, and answer the TAKE
    /// this shard received once every shard has done its part.
    pub(super) fn snapshot_tick(&mut self, now_ms: u64) {
        let generation = self.shared.snapshot_requests.load(Ordering::Acquire);
        if generation > self.snapshots.seen {
            self.snapshots.seen = generation;
            let target = self
                .shared
                .snapshot_target
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let result: ShardSnapshotResult = match target {
                Some((g, dir)) if g == generation => {
                    let into = shard_part(&dir, self.cfg.shard);
                    match self.store.snapshot(&into) {
                        Ok(files) => Ok((files.len(), files.iter().map(|f| f.size).sum())),
                        Err(e) => Err(format!("shard {}: {e}", self.cfg.shard)),
                    }
                }
                _ => Err(format!(
                    "shard {}: the snapshot target moved on",
                    self.cfg.shard
                )),
            };
            let c = self.counters();
            *c.snapshot_result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            c.snapshot_done.store(generation, Ordering::Release);
        }
        self.answer_take(now_ms);
    }

    fn answer_take(&mut self, now_ms: u64) {
        let Some(p) = &self.snapshots.pending else {
            return;
        };
        let complete = self.snapshots_done() >= p.generation;
        if !complete && now_ms < p.since_ms + SNAPSHOT_REPLY_WAIT_MS_MAX {
            return;
        }
        let p = self.snapshots.pending.take().expect("checked above");
        let outcome = if complete {
            let mut files = 0;
            let mut bytes = 0;
            let mut failed = Vec::new();
            for c in &self.shared.counters {
                match c
                    .snapshot_result
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                {
                    Some(Ok((f, b))) => {
                        files += f;
                        bytes += b;
                    }
                    Some(Err(e)) => failed.push(e),
                    None => failed.push("a shard reported nothing".into()),
                }
            }
            if failed.is_empty() {
                let text = format!(
                    "{SNAPSHOT_HEADER}\nnode_id {}\nshards {}\ntaken_at_ms {}\nfiles {files}\n\
                     bytes {bytes}\n",
                    self.shared.node_id, self.cfg.shards, p.since_ms
                );
                write_durably(&p.dir.join(SNAPSHOT_FILE), text.as_bytes())
                    .map(|()| {
                        format!(
                            "snapshot {} taken: {} shards, {files} files, {bytes} bytes, {} ms, in {}\n",
                            p.name,
                            self.cfg.shards,
                            now_ms.saturating_sub(p.since_ms),
                            p.dir.display()
                        )
                    })
                    .map_err(|e| (Status::StorageError, format!("writing {SNAPSHOT_FILE}: {e}")))
            } else {
                Err((Status::StorageError, failed.join("; ")))
            }
        } else {
            Err((
                Status::Timeout,
                format!("not every shard took its part within {SNAPSHOT_REPLY_WAIT_MS_MAX} ms"),
            ))
        };
        let dest = &mut self.outbox.replies[self.cfg.shard];
        dest.extend_from_slice(&p.conn.0.to_be_bytes());
        let status = match outcome {
            Ok(text) => {
                put_ok(dest, op::SNAPSHOT, p.id, &[text.as_bytes()]);
                Status::Ok
            }
            Err((status, msg)) => {
                // A partial snapshot is no snapshot: nothing half-made is left to restore.
                let _ = std::fs::remove_dir_all(&p.dir);
                put_error(dest, op::SNAPSHOT, p.id, status, &msg);
                status
            }
        };
        self.count_reply(status);
    }
}

/// Write a small file: tmp, sync, rename, sync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// LIST: one line per whole snapshot (`NAME taken_at_ms=T files=F bytes=B`), oldest first;
/// directories without their SNAPSHOT file are shown as `NAME incomplete`.
fn list(root: &Path) -> String {
    let Ok(rd) = std::fs::read_dir(root) else {
        return String::new();
    };
    let mut rows: Vec<(u64, String)> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) {
            continue;
        }
        let text = std::fs::read_to_string(e.path().join(SNAPSHOT_FILE)).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<u64>().ok())
        };
        match (text.starts_with(SNAPSHOT_HEADER), field("taken_at_ms")) {
            (true, Some(t)) => rows.push((
                t,
                format!(
                    "{name} taken_at_ms={t} files={} bytes={}",
                    field("files").unwrap_or(0),
                    field("bytes").unwrap_or(0)
                ),
            )),
            _ => rows.push((u64::MAX, format!("{name} incomplete"))),
        }
    }
    rows.sort();
    let mut out = String::new();
    for (_, row) in rows {
        let _ = writeln!(out, "{row}");
    }
    out
}

/// DELETE: remove a snapshot's directory.
fn delete(root: &Path, name: &str) -> Result<String, (Status, String)> {
    if !valid_name(name) {
        return Err((Status::BadRequest, format!("bad snapshot name {name:?}")));
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err((Status::NotFound, format!("no snapshot {name}")));
    }
    std::fs::remove_dir_all(&dir)
        .map(|()| format!("snapshot {name} deleted\n"))
        .map_err(|e| {
            (
                Status::StorageError,
                format!("deleting {}: {e}", dir.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "nightly",
            "2026-11-30",
            "a.b_c-d",
            &"x".repeat(SNAPSHOT_NAME_MAX),
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            &"x".repeat(SNAPSHOT_NAME_MAX + 1),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
