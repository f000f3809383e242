//! Files every node must hold alike, kept in step through the database (SPEC 13): the DKIM
//! keys and rotation states under `data_dir/dkim/`. The files stay where the signing code
//! and `postern domain rotate-dkim` (daemon running or stopped) read and write them; each
//! node copies its new or changed files in and the others' out.
//!
//! - A key (`*.pem`) never changes once made: the first node's wins. A node that made its
//!   own for the same selector at the same moment takes the stored one instead.
//! - A rotation state (`*.json`) changes: the newest write wins, by modification time.

use super::{from_ms, ms, Pg};
use crate::store::StoreError;
use std::path::Path;
use std::time::{Duration, SystemTime};

const ALL: &str = "SELECT name, content, updated_ms FROM files WHERE dir = $1";
const ADD_KEY: &str = "INSERT INTO files (dir, name, content, updated_ms)
    VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const PUT_STATE: &str = "INSERT INTO files (dir, name, content, updated_ms)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (dir, name) DO UPDATE SET content = excluded.content,
        updated_ms = excluded.updated_ms
    WHERE files.updated_ms < excluded.updated_ms";

/// A file this node holds: its content and modification time (ms).
pub(super) struct Local {
    pub(super) content: Vec<u8>,
    pub(super) modified_ms: u64,
}

pub(super) fn local_files(dir: &Path) -> Result<Vec<(String, Local)>, StoreError> {
    let err = |source| StoreError::File {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err(e)),
    };
    for entry in entries {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".pem") || name.ends_with(".json")) {
            continue;
        }
        let meta = entry.metadata().map_err(err)?;
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let content = std::fs::read(entry.path()).map_err(err)?;
        out.push((
            name,
            Local {
                content,
                modified_ms,
            },
        ));
    }
    Ok(out)
}

/// Writes `content` as `dir/name` (owner-only, atomically), modified at `modified_ms`.
fn write_file(dir: &Path, name: &str, content: &[u8], modified_ms: u64) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.sync"));
    let err = |source| StoreError::File {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    crate::model::tokens::write_private(&tmp, content).map_err(err)?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(modified_ms);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(at))
        .map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

impl Pg {
    /// Brings `dir` (known to the cluster as `label`) in step with the database. Returns
    /// the names of the files it changed here.
    pub(in crate::store) async fn sync_files(
        &self,
        label: &str,
        dir: &Path,
    ) -> Result<Vec<String>, StoreError> {
        let local = local_files(dir)?;
        for (name, file) in &local {
            let sql = if name.ends_with(".pem") {
                ADD_KEY
            } else {
                PUT_STATE
            };
            let at = ms(file.modified_ms);
            self.run(|c| async move {
                c.execute(sql, &[&label, &name.as_str(), &file.content, &at])
                    .await
            })
            .await?;
        }
        let stored: Vec<(String, Vec<u8>, i64)> = self
            .run(|c| async move {
                let rows = c.query(ALL, &[&label]).await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            })
            .await?;
        let mut changed = Vec::new();
        for (name, content, updated) in stored {
            let here = local.iter().find(|(n, _)| *n == name).map(|(_, f)| f);
            if here.is_some_and(|f| f.content == content) {
                continue;
            }
            std::fs::create_dir_all(dir).map_err(|source| StoreError::File {
                path: dir.to_path_buf(),
                source,
            })?;
            write_file(dir, &name, &content, from_ms(updated))?;
            changed.push(name);
        }
        Ok(changed)
    }
}
