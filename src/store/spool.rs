//! Accepted inbound messages. A body up to [`INLINE_LIMIT`] lives in the `bodies` tree
//! (covered by the group commit); a larger one streams to `spool/<id>.tmp`, is fsynced and
//! renamed to `spool/<id>.eml` before the record naming it is written. So a 40 MB message
//! costs a fixed buffer in memory, never its size.

use super::{codec, OutboxEntry, Store, StoreError};
use crate::model::time::now_ms;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Bodies up to this size are stored inside the database.
pub const INLINE_LIMIT: usize = 64 * 1024;

/// A body no record names is collected only past this age, far beyond the moment between
/// a body's write and its record's (an hour, like abandoned `.tmp` files).
pub const ORPHAN_AGE_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum BodyLocation {
    /// In the `bodies` tree under the message id.
    Inline,
    /// A file name under the spool directory.
    File(String),
}

/// Authentication verdicts in the words of RFC 8601 (`pass`, `fail`, `none`, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthSummary {
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    pub arc: String,
}

/// The envelope and bookkeeping of one accepted message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpoolRecord {
    pub id: String,
    pub received_ms: u64,
    pub peer: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The `Authentication-Results` header line (with CRLF) prepended to the raw message.
    pub auth_header: String,
    pub auth: AuthSummary,
    pub body: BodyLocation,
    pub size: u64,
    /// The record may be removed once this time has passed and no event refers to it.
    pub keep_until_ms: u64,
    /// Outbox event ids built from this message.
    pub events: Vec<String>,
    /// Mail for the bounce domain, kept for DSN/ARF processing.
    pub bounce: bool,
}

/// Collects a message body as it arrives: memory first, a spool file past the limit.
///
/// A guard as well: a writer dropped without [`BodyWriter::finish`] (client gone, timeout,
/// session closed, any early return) deletes its partial spool file, so no path of the
/// session can leave one behind.
pub struct BodyWriter {
    id: String,
    buf: Vec<u8>,
    file: Option<(std::fs::File, PathBuf)>,
    len: u64,
    dir: PathBuf,
}

impl BodyWriter {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends bytes, spilling to a file once the in-memory part passes the limit. File
    /// writes are buffered by the kernel; they are forced to disk in [`BodyWriter::finish`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.len += bytes.len() as u64;
        if let Some((file, path)) = &mut self.file {
            return file.write_all(bytes).map_err(|source| StoreError::File {
                path: path.clone(),
                source,
            });
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > INLINE_LIMIT {
            let path = self.dir.join(format!("{}.tmp", self.id));
            let file = std::fs::File::create(&path).map_err(|source| StoreError::File {
                path: path.clone(),
                source,
            })?;
            // Owned by the writer from here on, so a failed first write is removed too.
            let file = &mut self.file.insert((file, path.clone())).0;
            file.write_all(&self.buf)
                .map_err(|source| StoreError::File { path, source })?;
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Ends the body. Nothing is forced to disk here: an inline body is written with its
    /// record, and a spool file (renamed into place now) is fsynced, together with the
    /// directory, by the group commit that also flushes the record, so a burst of large
    /// messages shares its fsyncs too.
    pub fn finish(mut self) -> Result<FinishedBody, StoreError> {
        let id = std::mem::take(&mut self.id);
        match self.file.take() {
            None => Ok(FinishedBody {
                id,
                location: BodyLocation::Inline,
                inline: Some(std::mem::take(&mut self.buf)),
                file: None,
                size: self.len,
                spooled: None,
            }),
            Some((file, tmp)) => {
                let name = format!("{id}.eml");
                let target = self.dir.join(&name);
                if let Err(source) = std::fs::rename(&tmp, &target) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(StoreError::File {
                        path: target,
                        source,
                    });
                }
                Ok(FinishedBody {
                    id,
                    location: BodyLocation::File(name),
                    inline: None,
                    file: Some(Arc::new(file)),
                    size: self.len,
                    spooled: Some(target),
                })
            }
        }
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if let Some((file, path)) = self.file.take() {
            drop(file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial body");
            }
        }
    }
}

/// A body that is on disk (file) or ready to be written with its record (inline).
///
/// Its spool file is deleted when it is dropped unless [`FinishedBody::keep`] was called
/// (by the accept path, once the record naming it is durable): a message that failed to
/// be stored leaves no orphan `.eml`.
pub struct FinishedBody {
    pub id: String,
    pub location: BodyLocation,
    inline: Option<Vec<u8>>,
    /// The spool file, still to be fsynced by the commit.
    file: Option<Arc<std::fs::File>>,
    pub size: u64,
    /// The `.eml` path while nothing durable refers to it yet.
    spooled: Option<PathBuf>,
}

impl FinishedBody {
    /// The body bytes when they are still in memory (small messages).
    pub fn inline_bytes(&self) -> Option<&[u8]> {
        self.inline.as_deref()
    }

    /// The spool file now belongs to its record (or, if the record's fate is unknown, to
    /// garbage collection): dropping this no longer deletes it.
    pub fn keep(&mut self) {
        self.spooled = None;
    }
}

impl Drop for FinishedBody {
    fn drop(&mut self) {
        if let Some(path) = self.spooled.take() {
            tracing::info!(id = %self.id, "removing the body of a message that was not stored");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an unstored body");
            }
        }
    }
}

/// A stored body: owned bytes or a read-only map of the spool file.
pub enum Body {
    Bytes(sled::IVec),
    /// A spool file read whole (up to [`READ_WHOLE`]).
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Bytes(b) => b,
            Body::Read(v) => v,
            Body::Mapped(m) => m,
        }
    }
}

/// Spool files up to this size are read into memory; larger ones are mapped. Reading a
/// file that is in the page cache is one copy, while a map costs page faults and, at its
/// unmap, a TLB shootdown on every core (measured: munmap was 5% of the daemon's CPU at
/// 100 KB messages).
pub const READ_WHOLE: u64 = 1024 * 1024;

/// The body in the spool file at `path`: read whole when small, else mapped.
pub fn file_body(path: &std::path::Path) -> Result<Body, StoreError> {
    let fail = |source| StoreError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(Body::Bytes(sled::IVec::default()));
    }
    if len <= READ_WHOLE {
        use std::io::Read;
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(fail)?;
        return Ok(Body::Read(bytes));
    }
    // SAFETY: spool files are written once, renamed into place, and only deleted (never
    // modified) afterwards; deletion keeps an existing map valid on Unix.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(fail)?;
    Ok(Body::Mapped(map))
}

impl Store {
    /// A writer for a new message's body, named by a fresh time-ordered id.
    pub fn body_writer(&self) -> BodyWriter {
        BodyWriter {
            id: uuid::Uuid::now_v7().to_string(),
            buf: Vec::new(),
            file: None,
            len: 0,
            dir: self.inner.spool_dir.clone(),
        }
    }

    /// Writes the inline body, the tid index, the record and, last, its events, then waits
    /// for the group commit: when this returns, the message is durable.
    ///
    /// No sled transaction or batch (each seals sled's IO buffer, several times the cost
    /// of the rest of the accept path): the order alone keeps a crash before the commit
    /// harmless. Events go last, so an
    /// event never refers to a record that was not written; a record without events is
    /// an unacknowledged message that garbage collection removes.
    pub async fn accept_message(
        &self,
        record: &SpoolRecord,
        body: &FinishedBody,
        events: &[OutboxEntry],
        tids: &[(String, String)],
    ) -> Result<(), StoreError> {
        let key = record.id.as_bytes();
        let i = &self.inner;
        if let Some(bytes) = body.inline_bytes() {
            i.bodies.insert(key, bytes)?;
        }
        // Plain inserts: sled's batches and transactions seal its IO buffer on every call,
        // which costs more than the whole rest of the accept path.
        for (tid, spool_id) in tids {
            i.inbound_tids.insert(tid.as_bytes(), spool_id.as_bytes())?;
        }
        i.spool.insert(key, codec::encode(record))?;
        for e in events {
            i.outbox.insert(e.id.as_bytes(), codec::encode(e))?;
        }
        self.commit_with(body.file.clone().into_iter().collect())
            .await
    }

    /// Undoes, as far as it can, what a failed [`Store::accept_message`] wrote (the client
    /// is told 451 and will send the message again: keeping these would deliver it twice).
    /// True when every entry is gone, so the body file may be deleted too; otherwise the
    /// file is left to garbage collection, which removes it once nothing refers to it.
    pub fn forget_message(
        &self,
        record: &SpoolRecord,
        events: &[OutboxEntry],
        tids: &[(String, String)],
    ) -> bool {
        let i = &self.inner;
        let mut clean = true;
        let mut gone = |r: Result<Option<sled::IVec>, sled::Error>| clean &= r.is_ok();
        for e in events {
            gone(i.outbox.remove(e.id.as_bytes()));
        }
        gone(i.spool.remove(record.id.as_bytes()));
        for (tid, _) in tids {
            gone(i.inbound_tids.remove(tid.as_bytes()));
        }
        gone(i.bodies.remove(record.id.as_bytes()));
        clean
    }

    pub fn spool_record(&self, id: &str) -> Result<Option<SpoolRecord>, StoreError> {
        match self.inner.spool.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => match codec::decode(&v) {
                Ok(r) => Ok(Some(r)),
                Err(reason) => {
                    self.quarantine("spool", id.as_bytes(), &v, &reason);
                    Err(StoreError::Corrupt {
                        tree: "spool",
                        key: id.into(),
                        reason,
                    })
                }
            },
        }
    }

    /// The raw message as received (without the Authentication-Results line).
    pub fn load_body(&self, record: &SpoolRecord) -> Result<Body, StoreError> {
        match &record.body {
            BodyLocation::Inline => Ok(Body::Bytes(
                self.inner
                    .bodies
                    .get(record.id.as_bytes())?
                    .unwrap_or_default(),
            )),
            BodyLocation::File(name) => file_body(&self.inner.spool_dir.join(name)),
        }
    }

    /// The spool id behind an MO tid (for signed attachment links).
    pub fn spool_id_for_tid(&self, tid: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .inner
            .inbound_tids
            .get(tid.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Removes a message whose events are all done and whose retention has passed.
    /// Returns whether it was removed.
    pub fn release_spool_if_done(&self, id: &str) -> Result<bool, StoreError> {
        self.release_spool_at(id, now_ms())
    }

    /// [`Store::release_spool_if_done`] as seen at `now_ms` (the garbage collector passes
    /// its clock, so retention is tested without waiting days). A live event (outbox) or a
    /// dead letter pins the record and its body.
    pub fn release_spool_at(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let Some(record) = self.spool_record(id)? else {
            return Ok(false);
        };
        if record.keep_until_ms > now_ms || record.bounce {
            return Ok(false);
        }
        for ev in &record.events {
            if self.inner.outbox.contains_key(ev.as_bytes())?
                || self.inner.dead.contains_key(ev.as_bytes())?
            {
                return Ok(false);
            }
        }
        self.inner.spool.remove(id.as_bytes())?;
        self.inner.bodies.remove(id.as_bytes())?;
        if let BodyLocation::File(name) = &record.body {
            let _ = std::fs::remove_file(self.inner.spool_dir.join(name));
        }
        Ok(true)
    }

    /// Removes every expired message no event still needs, stale tid links, and leftover
    /// temporary files of sessions that died mid-transfer. Returns how many were removed.
    pub fn collect_garbage(&self) -> Result<usize, StoreError> {
        self.collect_garbage_at(now_ms())
    }

    /// [`Store::collect_garbage`] as seen at `now_ms`; it also collects bodies (spool
    /// files and inline bodies) that no record names, once older than [`ORPHAN_AGE_MS`].
    pub fn collect_garbage_at(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let ids: Vec<String> = self
            .inner
            .spool
            .iter()
            .keys()
            .filter_map(|k| k.ok().map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect();
        for id in ids {
            match self.release_spool_at(&id, now_ms) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(StoreError::Corrupt { .. }) => {
                    let _ = self.inner.spool.remove(id.as_bytes());
                }
                Err(e) => return Err(e),
            }
        }
        for item in self.inner.inbound_tids.iter() {
            let (tid, spool_id) = item?;
            if !self.inner.spool.contains_key(&spool_id)? {
                self.inner.inbound_tids.remove(tid)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.inner.spool_dir) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // `.tmp`: a body of a session that died; `render-*`: an MO body being sent.
                let leftover = name
                    .strip_suffix(".tmp")
                    .or_else(|| name.strip_prefix("render-"));
                if let Some(id) = leftover {
                    // A .tmp file older than the longest DATA phase belongs to a dead session.
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| t.elapsed().map(|e| e.as_secs() > 3600).unwrap_or(false))
                        .unwrap_or(false);
                    if old {
                        tracing::info!(id, "removing abandoned temporary file");
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        removed += self.collect_orphan_bodies(now_ms)?;
        Ok(removed)
    }

    /// Bodies no record names: a `.eml` whose store failed after its rename, an inline
    /// body whose record was never written. The accept path writes the body first and its
    /// record right after (a `.eml` is renamed into place moments before), so a body is an
    /// orphan only once it is older than [`ORPHAN_AGE_MS`]: an accept in flight is never
    /// raced. A spool file's age is its modification time (its last write); an inline
    /// body's is the time in its UUIDv7 id (taken when its DATA began, so never younger).
    fn collect_orphan_bodies(&self, now_ms: u64) -> Result<usize, StoreError> {
        let old = |at_ms: u64| now_ms.saturating_sub(at_ms) > ORPHAN_AGE_MS;
        let mut removed = 0;
        if let Ok(dir) = std::fs::read_dir(&self.inner.spool_dir) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".eml") else {
                    continue;
                };
                let modified_ms = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64);
                // Unknown age: keep it (it costs space, deleting it might cost a message).
                if !modified_ms.is_some_and(old) || self.names_body(id, &name)? {
                    continue;
                }
                tracing::info!(file = %name, "removing a spool file no record names");
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(file = %name, error = %e, "cannot remove"),
                }
            }
        }
        for key in self.inner.bodies.iter().keys() {
            let key = key?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let born_ms = uuid::Uuid::parse_str(&id)
                .ok()
                .and_then(|u| u.get_timestamp())
                .map(|t| {
                    let (s, n) = t.to_unix();
                    s * 1000 + u64::from(n) / 1_000_000
                });
            if !born_ms.is_some_and(old)
                || self.inner.spool.contains_key(&key)?
                || self.spool_quarantined(&key)?
            {
                continue;
            }
            tracing::info!(id = %id, "removing an inline body no record names");
            self.inner.bodies.remove(&key)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Whether the record `id` (the owner of `<id>.eml`: spool files are named after their
    /// record) names the file `name`, or was quarantined (then its body is kept with it,
    /// for a build that can read the record again).
    fn names_body(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        match self.spool_record(id) {
            Ok(Some(r)) => Ok(r.body == BodyLocation::File(name.to_string())),
            Ok(None) => self.spool_quarantined(id.as_bytes()),
            Err(StoreError::Corrupt { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn spool_quarantined(&self, id: &[u8]) -> Result<bool, StoreError> {
        self.inner.quarantine.holds("spool", id)
    }

    pub fn spool_len(&self) -> usize {
        self.inner.spool.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_files(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.spool_dir())
            .expect("spool dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_dropped_writer_leaves_no_partial_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut w = store.body_writer();
        w.write(&vec![b'x'; INLINE_LIMIT + 1]).expect("write");
        assert_eq!(spool_files(&store), [format!("{}.tmp", w.id())]);
        drop(w);
        assert!(spool_files(&store).is_empty());
    }

    #[tokio::test]
    async fn an_unstored_body_is_deleted_a_kept_one_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let write = || {
            let mut w = store.body_writer();
            w.write(&vec![b'x'; INLINE_LIMIT + 1]).expect("write");
            w.finish().expect("finish")
        };
        let lost = write();
        assert_eq!(spool_files(&store), [format!("{}.eml", lost.id)]);
        drop(lost);
        assert!(spool_files(&store).is_empty(), "no orphan .eml");
        let mut stored = write();
        stored.keep();
        let name = format!("{}.eml", stored.id);
        drop(stored);
        assert_eq!(spool_files(&store), [name]);
    }

    #[tokio::test]
    async fn forget_message_removes_what_accept_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut w = store.body_writer();
        w.write(b"Subject: x\r\n\r\nhi\r\n").expect("write");
        let body = w.finish().expect("finish");
        let record = SpoolRecord {
            id: body.id.clone(),
            received_ms: 0,
            peer: "192.0.2.1".into(),
            helo: "x".into(),
            mail_from: "a@example.org".into(),
            rcpts: vec!["s@example.test".into()],
            auth_header: String::new(),
            auth: AuthSummary::default(),
            body: body.location.clone(),
            size: body.size,
            keep_until_ms: 0,
            events: vec![],
            bounce: false,
        };
        let tids = vec![("tid-1".to_string(), body.id.clone())];
        store
            .accept_message(&record, &body, &[], &tids)
            .await
            .expect("accept");
        assert!(store.spool_record(&body.id).expect("read").is_some());
        assert!(store.forget_message(&record, &[], &tids));
        assert!(store.spool_record(&body.id).expect("read").is_none());
        assert!(store.spool_id_for_tid("tid-1").expect("read").is_none());
    }
}

#[cfg(test)]
mod gc_tests {
    use super::*;

    fn record(id: &str, body: BodyLocation) -> SpoolRecord {
        SpoolRecord {
            id: id.into(),
            received_ms: 0,
            peer: String::new(),
            helo: String::new(),
            mail_from: String::new(),
            rcpts: vec![],
            auth_header: String::new(),
            auth: AuthSummary::default(),
            body,
            size: 3,
            keep_until_ms: 0,
            events: vec![],
            bounce: false,
        }
    }

    #[tokio::test]
    async fn inline_bodies_no_record_names_go_once_past_the_safe_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A body whose record was never written (store failed between the two inserts),
        // one whose record exists, and one of an accept that may still be in flight.
        let orphan = uuid::Uuid::now_v7().to_string();
        let owned = uuid::Uuid::now_v7().to_string();
        let young = uuid::Uuid::now_v7().to_string();
        for id in [&orphan, &owned, &young] {
            store.inner.bodies.insert(id.as_bytes(), b"abc").unwrap();
        }
        let mut rec = record(&owned, BodyLocation::Inline);
        rec.events = vec!["pinned".into()];
        store
            .inner
            .outbox
            .insert("pinned", b"x".as_slice())
            .unwrap();
        store
            .inner
            .spool
            .insert(owned.as_bytes(), codec::encode(&rec))
            .unwrap();

        let now = now_ms();
        assert_eq!(store.collect_garbage_at(now).unwrap(), 0, "all young");
        let later = now + ORPHAN_AGE_MS + 1000;
        // `young` stands for a body written just now: give it a fresh id at `later`.
        store.inner.bodies.remove(young.as_bytes()).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, later / 1000, 0);
        let young = uuid::Uuid::new_v7(ts).to_string();
        store.inner.bodies.insert(young.as_bytes(), b"abc").unwrap();
        assert_eq!(store.collect_garbage_at(later).unwrap(), 1);
        assert!(!store.inner.bodies.contains_key(orphan.as_bytes()).unwrap());
        assert!(store.inner.bodies.contains_key(owned.as_bytes()).unwrap());
        assert!(store.inner.bodies.contains_key(young.as_bytes()).unwrap());
    }

    #[tokio::test]
    async fn a_quarantined_records_body_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = uuid::Uuid::now_v7().to_string();
        let name = format!("{id}.eml");
        std::fs::write(store.spool_dir().join(&name), b"body").unwrap();
        store
            .inner
            .spool
            .insert(id.as_bytes(), b"\xffnot a record".as_slice())
            .unwrap();
        let later = now_ms() + ORPHAN_AGE_MS + 1000;
        store.collect_garbage_at(later).unwrap();
        assert_eq!(store.quarantined(), 1);
        assert!(
            store.spool_dir().join(&name).exists(),
            "kept with its record"
        );
        // A file whose record is gone and was never quarantined is an orphan.
        let other = format!("{}.eml", uuid::Uuid::now_v7());
        std::fs::write(store.spool_dir().join(&other), b"body").unwrap();
        assert_eq!(store.collect_garbage_at(later).unwrap(), 1);
        assert!(!store.spool_dir().join(&other).exists());
    }
}
