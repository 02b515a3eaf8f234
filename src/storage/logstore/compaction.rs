//! Compaction jobs: planning one from the policy ([`crate::storage::policy`]), advancing it a
//! record at a time, committing outputs (the keydir moves to the copies) and installing the
//! result (manifest, input deletion). The steps are in the parent module's doc ("Compaction").

use super::names::{compact_name, hint_name, segment_name, MANIFEST_NAME};
use super::scan::{Scan, Scanner};
use super::{LogStore, Segment};
use crate::limits::{COMPACTION_INPUTS_MAX, COMPACTION_RETRY_MS, SCAN_CHUNK_SIZE};
use crate::storage::keydir::{expiry_s_of, Loc};
use crate::storage::policy::{self, Plan, SegmentFigures, Thresholds};
use crate::storage::record::{
    encode_manifest, encode_record, Hint, HintBuilder, RecordHeader, SegmentHeader, SegmentKind,
    FORMAT_VERSION, SEGMENT_HEADER_SIZE,
};
use crate::storage::vfs::Vfs;
use crate::storage::StoreError;
use crate::version::Version;
use std::io;
use std::path::Path;

/// Where one compaction job is.
pub(super) struct Compaction<F> {
    inputs: Vec<u32>,
    origin_lo: u32,
    origin_hi: u32,
    /// Tombstones / expired values below the horizon may be dropped (inputs are an origin
    /// prefix).
    may_drop: bool,
    /// Index into `inputs` of the one being copied.
    cursor: usize,
    scanner: Option<Scanner>,
    out: Option<Output<F>>,
    /// Bytes of committed outputs.
    output_bytes: u64,
    /// Number of committed outputs.
    outputs: u32,
    /// Bytes of input records scanned (bounds the work of one maintenance call).
    pub(super) scanned_bytes: u64,
    /// Keys whose tombstone (or expired value) was dropped: `version u64, key_len u16, key`.
    /// Forgotten by the keydir at the commit point, not before, so that an older write
    /// arriving meanwhile is still refused as stale.
    dropped: Vec<u8>,
}

pub(super) struct Output<F> {
    id: u32,
    file: F,
    header: SegmentHeader,
    len: u64,
    buf: Vec<u8>,
    hint: HintBuilder,
}

fn is_expired(h: &RecordHeader, now_ms: u64) -> bool {
    crate::storage::expired(h.expires_at_ms, now_ms)
}

impl<V: Vfs> LogStore<V> {
    pub(super) fn figures(&self, now_ms: u64) -> Vec<SegmentFigures> {
        self.segments
            .iter()
            .map(|(id, s)| SegmentFigures {
                id: *id,
                sealed: s.sealed,
                damaged: s.damaged,
                body_bytes: s.len - SEGMENT_HEADER_SIZE as u64,
                live_bytes: s.live_bytes,
                reclaimable_bytes: s.reclaimable_bytes(now_ms),
                origin_lo: s.header.origin_lo,
                origin_hi: s.header.origin_hi,
            })
            .collect()
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            dead_percent: self.config.compaction_dead_percent,
            dead_bytes_min: self.config.compaction_dead_bytes_min,
        }
    }

    /// What the policy says to do next (no side effects).
    pub(super) fn decide(&self, now_ms: u64) -> Option<Plan> {
        if now_ms < self.compaction_retry_at_ms {
            return None;
        }
        let decided = policy::plan(
            &self.figures(now_ms),
            self.thresholds(),
            self.space(),
            self.force_below,
            self.force_seal,
        );
        if decided.is_none() && self.force_below.is_none() {
            return self.plan_purge().map(|inputs| Plan::Compact {
                inputs,
                mode: policy::Mode::Normal,
            });
        }
        decided
    }

    /// Pick the inputs of a compaction job, if one is due, sealing the active segment first
    /// when the policy says so.
    pub(super) fn plan(&mut self, now_ms: u64) -> Result<Option<Compaction<V::File>>, StoreError> {
        let mut decided = self.decide(now_ms);
        if decided == Some(Plan::SealActive) {
            let active = &self.segments[&self.active];
            log::info!(
                "storage: sealing active segment {} ({} bytes, {} reclaimable) so that compaction can reclaim it",
                self.active,
                active.len,
                active.reclaimable_bytes(now_ms)
            );
            self.force_seal = false;
            self.roll()?;
            decided = self.decide(now_ms);
        }
        if self.force_below.is_some() {
            self.force_seal = false;
        }
        let mut inputs = match decided {
            Some(Plan::Compact { inputs, mode }) => {
                if mode != policy::Mode::Normal {
                    log::info!("storage: {mode:?} compaction of segments {inputs:?}");
                }
                inputs
            }
            Some(Plan::SealActive) | None => {
                // A forced pass with nothing (left) to do is over.
                self.force_below = None;
                return Ok(None);
            }
        };
        inputs.sort_unstable();
        let origin_lo = inputs
            .iter()
            .map(|id| self.segments[id].header.origin_lo)
            .min()
            .expect("non-empty");
        let origin_hi = inputs
            .iter()
            .map(|id| self.segments[id].header.origin_hi)
            .max()
            .expect("non-empty");
        let may_drop = self
            .segments
            .iter()
            .filter(|(id, _)| !inputs.contains(id))
            .all(|(_, s)| s.header.origin_lo > origin_hi);
        Ok(Some(Compaction {
            inputs,
            origin_lo,
            origin_hi,
            may_drop,
            cursor: 0,
            scanner: None,
            out: None,
            output_bytes: 0,
            outputs: 0,
            scanned_bytes: 0,
            dropped: Vec::new(),
        }))
    }

    /// Once the tombstone horizon allows it: the oldest origin prefix, if it holds enough
    /// tombstones (and dead bytes) to be worth rewriting.
    fn plan_purge(&self) -> Option<Vec<u32>> {
        if self.horizon == Version::ZERO {
            return None;
        }
        let prefix = self.oldest_prefix()?;
        let purge: u64 = prefix
            .iter()
            .map(|id| &self.segments[id])
            .filter(|s| s.tomb_version_min < self.horizon.0)
            .map(|s| s.tomb_bytes)
            .sum();
        let dead: u64 = prefix.iter().map(|id| self.segments[id].dead_bytes()).sum();
        (purge > 0 && purge + dead >= self.config.compaction_dead_bytes_min).then_some(prefix)
    }

    /// The largest set of sealed, undamaged segments, at most [`COMPACTION_INPUTS_MAX`],
    /// holding every write up to some origin: every other segment's `origin_lo` is above
    /// the set's highest `origin_hi`.
    fn oldest_prefix(&self) -> Option<Vec<u32>> {
        let mut segs: Vec<(u32, u32, u32, bool)> = self
            .segments
            .iter()
            .map(|(id, s)| {
                let h = &s.header;
                (h.origin_lo, *id, h.origin_hi, s.sealed && !s.damaged)
            })
            .collect();
        segs.sort_unstable();
        let mut best = None;
        let mut cur = Vec::new();
        let mut hi = 0;
        for (i, &(_, id, origin_hi, ok)) in segs.iter().enumerate() {
            if !ok || cur.len() == COMPACTION_INPUTS_MAX {
                break;
            }
            cur.push(id);
            hi = hi.max(origin_hi);
            if segs.get(i + 1).is_none_or(|next| next.0 > hi) {
                best = Some(cur.clone());
            }
        }
        best
    }

    /// One unit of compaction work. `Ok(true)` when the job is finished.
    pub(super) fn compact_step(
        &mut self,
        job: &mut Compaction<V::File>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if job.cursor == job.inputs.len() {
            self.finish_compaction(job)?;
            return Ok(true);
        }
        let input = job.inputs[job.cursor];
        let seg = &self.segments[&input];
        let sc = job.scanner.get_or_insert_with(|| {
            Scanner::new(SEGMENT_HEADER_SIZE as u64, seg.len, seg.header.format)
        });
        let item = sc.next(&self.vfs, &seg.file)?;
        match item {
            Scan::End => {
                job.scanner = None;
                job.cursor += 1;
            }
            Scan::Bad(at, err) => {
                self.counters.corrupt_records += 1;
                log::error!(
                    "storage: compaction found corrupt data in segment {input} at {at}: {err}; \
                     segment kept and excluded from compaction"
                );
                self.segments.get_mut(&input).expect("input exists").damaged = true;
                return Err(StoreError::Corrupt(format!(
                    "segment {input} offset {at}: {err}"
                )));
            }
            Scan::Record(h, at) => {
                job.scanned_bytes += h.record_len() as u64;
                let sc = job.scanner.as_ref().expect("set above");
                let key = sc.key();
                let current = self
                    .keydir
                    .get(key)
                    .is_some_and(|l| l.segment == input && l.offset as u64 == at);
                if !current {
                    return Ok(false);
                }
                let expired = !h.tombstone && is_expired(&h, now_ms);
                if (h.tombstone || expired) && job.may_drop && h.version < self.horizon.0 {
                    job.dropped.extend_from_slice(&h.version.to_le_bytes());
                    job.dropped
                        .extend_from_slice(&(key.len() as u16).to_le_bytes());
                    job.dropped.extend_from_slice(key);
                    return Ok(false);
                }
                // An expired value above the horizon becomes a tombstone that keeps its
                // version; an expired causal record is copied whole: its state's version vector
                // is what keeps a late copy of a superseded sibling from coming back
                // (cluster/siblings.rs), and a plain tombstone would lose it.
                let (header, value) = if expired && !h.causal {
                    let t = RecordHeader {
                        version: h.version,
                        expires_at_ms: 0,
                        tombstone: true,
                        causal: false,
                        key_len: h.key_len,
                        value_len: 0,
                    };
                    (t, None)
                } else {
                    (h, if h.tombstone { None } else { Some(sc.value()) })
                };
                let key = key.to_vec();
                let value = value.map(|v| v.to_vec());
                self.copy_record(job, &header, &key, value.as_deref())?;
            }
        }
        Ok(false)
    }

    fn copy_record(
        &mut self,
        job: &mut Compaction<V::File>,
        h: &RecordHeader,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let len = h.record_len() as u64;
        let full = job.out.as_ref().is_some_and(|o| {
            o.len + len > self.config.segment_size_max && o.len > SEGMENT_HEADER_SIZE as u64
        });
        if full {
            self.commit_output(job)?;
        }
        if job.out.is_none() {
            // Outputs are of this build's format, whatever their inputs' (a format-1 record
            // is copied into a format-2 segment as it is: its flags mean the same there).
            let id = self.new_segment_id()?;
            let header = SegmentHeader {
                format: FORMAT_VERSION,
                kind: SegmentKind::Compacted,
                id,
                origin_lo: job.origin_lo,
                origin_hi: job.origin_hi,
            };
            let mut file = self
                .vfs
                .create(&self.path(&compact_name(id)))
                .map_err(|e| self.io_refusal(e, false))?;
            self.next_id += 1;
            let hb = header.encode();
            self.vfs
                .append(&mut file, &hb)
                .map_err(|e| self.io_refusal(e, false))?;
            job.out = Some(Output {
                id,
                file,
                header,
                len: SEGMENT_HEADER_SIZE as u64,
                buf: Vec::new(),
                hint: HintBuilder::new(id, FORMAT_VERSION),
            });
        }
        let out = job.out.as_mut().expect("opened above");
        let at = out.len;
        encode_record(
            &mut out.buf,
            h.version,
            h.expires_at_ms,
            key,
            value,
            h.causal,
        );
        out.hint.add(h, at as u32, key);
        out.len += len;
        if out.buf.len() >= SCAN_CHUNK_SIZE {
            let r = self.vfs.append(&mut out.file, &out.buf);
            out.buf.clear();
            r.map_err(|e| self.io_refusal(e, false))?;
        }
        Ok(())
    }

    /// Make the current output durable and visible, and point the keydir at its records.
    fn commit_output(&mut self, job: &mut Compaction<V::File>) -> Result<(), StoreError> {
        let Some(mut out) = job.out.take() else {
            return Ok(());
        };
        if !out.buf.is_empty() {
            let r = self.vfs.append(&mut out.file, &out.buf);
            out.buf.clear();
            if let Err(e) = r {
                let _ = self.vfs.remove(&self.path(&compact_name(out.id)));
                return Err(self.io_refusal(e, false));
            }
        }
        if let Err(e) = self.vfs.sync(&mut out.file) {
            return Err(self.io_refusal(e, true));
        }
        let hint = out.hint.finish(out.len);
        if let Err(e) = self.write_file_atomic(&hint_name(out.id), &hint) {
            log::warn!("storage: could not write hint for segment {}: {e}", out.id);
        }
        let from = self.path(&compact_name(out.id));
        let to = self.path(&segment_name(out.id));
        if let Err(e) = self.vfs.rename(&from, &to) {
            return Err(self.io_refusal(e, false));
        }
        if let Err(e) = self.vfs.sync_dir(&self.dir) {
            return Err(self.io_refusal(e, true));
        }
        self.segments.insert(
            out.id,
            Segment {
                file: out.file,
                map: None,
                map_len: 0,
                header: out.header,
                len: out.len,
                live_bytes: 0,
                tomb_bytes: 0,
                tomb_version_min: u64::MAX,
                ttl_bytes: 0,
                ttl_expiry_max_s: 0,
                sealed: true,
                damaged: false,
            },
        );
        self.map_segment(out.id, out.len);
        job.output_bytes += out.len;
        job.outputs += 1;
        self.note_appended(out.len + hint.len() as u64);
        let hint = Hint::decode(&hint).expect("a hint this store just built is valid");
        for e in hint.iter() {
            let e = e.expect("a hint this store just built is valid");
            let Some(held) = self.keydir.get(e.key) else {
                continue;
            };
            if held.version != e.header.version || !job.inputs.contains(&held.segment) {
                continue; // rewritten since it was copied: the copy is dead
            }
            let loc = Loc {
                version: e.header.version,
                segment: out.id,
                offset: e.offset,
                value_len: if e.header.tombstone {
                    None
                } else {
                    Some(e.header.value_len)
                },
                expires_at_s: expiry_s_of(e.header.expires_at_ms),
                causal: e.header.causal,
            };
            self.keydir
                .insert(e.key, loc)
                .expect("key present: no arena growth");
            self.account(&held, e.key.len(), false);
            self.account(&loc, e.key.len(), true);
            if e.header.tombstone {
                self.note_tombstone(out.id, e.header.version);
            }
        }
        Ok(())
    }

    fn finish_compaction(&mut self, job: &mut Compaction<V::File>) -> Result<(), StoreError> {
        self.commit_output(job)?;
        // Input records not copied were superseded by newer ones, maybe in the active segment
        // and not yet synced: make those durable before the old ones go, or a crash would
        // lose both.
        self.flush_pending()?;
        let active = self.segments.get_mut(&self.active).expect("active exists");
        if let Err(e) = self.vfs.sync(&mut active.file) {
            return Err(self.io_refusal(e, true));
        }
        // The manifest, written to a temporary file: failing here leaves nothing behind.
        let tmp = self.path(&format!("{MANIFEST_NAME}.tmp"));
        let written = (|| {
            let mut f = self.vfs.create(&tmp)?;
            self.vfs.append(&mut f, &encode_manifest(&job.inputs))?;
            Ok(f)
        })();
        let synced = match written {
            Ok(mut f) => self.vfs.sync(&mut f).map_err(|e| (e, true)),
            Err(e) => Err((e, false)),
        };
        if let Err((e, sticky)) = synced {
            let _ = self.vfs.remove(&tmp); // best effort: recovery removes *.tmp
            return Err(self.io_refusal(e, sticky));
        }
        // The commit point is the rename. From here a failure is sticky: the store is left
        // with a manifest it could not act on, and only recovery (at the next start) may
        // finish the deletions it names; a later compaction must not overwrite it.
        let input_bytes = self.delete_inputs(job, &tmp).map_err(|e| {
            let why = format!(
                "compaction could not finish deleting its inputs ({e}); restart to complete it"
            );
            log::error!("storage: {why}");
            self.refused = Some(why.clone());
            StoreError::WritesRefused(why)
        })?;
        self.counters.compactions += 1;
        self.counters.bytes_reclaimed += input_bytes.saturating_sub(job.output_bytes);
        self.counters.segments_reclaimed +=
            (job.inputs.len() as u64).saturating_sub(job.outputs as u64);
        // The inputs are gone: the free space is worth measuring again.
        self.measure_space();
        if cfg!(debug_assertions) {
            for (_, loc) in self.keydir.iter() {
                assert!(
                    self.segments.contains_key(&loc.segment),
                    "keydir points at deleted segment {}",
                    loc.segment
                );
            }
        }
        Ok(())
    }

    /// After the manifest is durable: forget the dropped keys, delete the inputs and their
    /// hints, then the manifest. Returns the bytes of the inputs.
    fn delete_inputs(&mut self, job: &Compaction<V::File>, manifest_tmp: &Path) -> io::Result<u64> {
        self.vfs.rename(manifest_tmp, &self.path(MANIFEST_NAME))?;
        self.vfs.sync_dir(&self.dir)?;
        let mut rest = &job.dropped[..];
        while rest.len() >= 10 {
            let version = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let klen = u16::from_le_bytes([rest[8], rest[9]]) as usize;
            let key = &rest[10..10 + klen];
            rest = &rest[10 + klen..];
            if let Some(held) = self.keydir.get(key) {
                if held.version == version && job.inputs.contains(&held.segment) {
                    self.keydir.remove(key);
                    self.account(&held, key.len(), false);
                }
            }
        }
        let mut input_bytes = 0;
        for &id in &job.inputs {
            let seg = self.segments.remove(&id).expect("input exists");
            assert_eq!(
                seg.live_bytes, 0,
                "input segment {id} still live after compaction"
            );
            input_bytes += seg.len;
            drop(seg);
            match self.vfs.remove(&self.path(&hint_name(id))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.vfs.remove(&self.path(&segment_name(id)))?;
        }
        self.vfs.sync_dir(&self.dir)?;
        self.vfs.remove(&self.path(MANIFEST_NAME))?;
        self.vfs.sync_dir(&self.dir)?;
        Ok(input_bytes)
    }

    /// Abandon a job after an error: its uncommitted output is removed; committed outputs
    /// stay (they duplicate records still in the inputs, which is harmless).
    pub(super) fn abort_compaction(&mut self, job: Compaction<V::File>) {
        if let Some(out) = job.out {
            drop(out.file);
            let _ = self.vfs.remove(&self.path(&compact_name(out.id))); // recovery removes it too
        }
        self.compaction_retry_at_ms = self.last_now_ms + COMPACTION_RETRY_MS;
    }
}
