//! The embedded store: a redb database file in `state.dir` (crash-safe:
//! every batch is one transaction, committed with fsync). A process killed
//! mid-write leaves the last committed state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, TableDefinition};

use crate::store::{Change, Namespace, Record, Store, StoreError, StoreFuture, StoreKind};

/// Key `"{namespace}/{key}"`; value: expiry (8 bytes, big endian ms) then the record.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The database file's name inside `state.dir`.
pub const FILE: &str = "state.redb";

/// The embedded store.
pub struct Embedded {
    db: Arc<Database>,
    path: PathBuf,
}

impl Embedded {
    /// Opens (or creates) `dir/state.redb`, creating `dir` if needed. A file
    /// that is not a database, a directory without permission, a full disk:
    /// an error that says which file and why.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create state.dir {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        // A small page cache: the store is written behind and read at start.
        let db = Database::builder()
            .set_cache_size(8 * 1024 * 1024)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                    "the state store {} is in use by another stsgate process",
                    path.display()
                )),
                e => StoreError(format!(
                    "cannot open the state store {}: {e}",
                    path.display()
                )),
            })?;
        // Make sure the table exists, so reads of a new store work.
        let txn = db.begin_write().map_err(|e| err(&path, e))?;
        txn.open_table(RECORDS).map_err(|e| err(&path, e))?;
        txn.commit().map_err(|e| err(&path, e))?;
        Ok(Embedded {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn apply_now(&self, changes: &[Change]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| err(&self.path, e))?;
            for change in changes {
                let (ns, key) = change.key();
                let full = full_key(ns, key);
                match change {
                    Change::Put(record) => {
                        let mut value = Vec::with_capacity(8 + record.value.len());
                        value.extend_from_slice(&record.expires_at_ms.to_be_bytes());
                        value.extend_from_slice(&record.value);
                        table
                            .insert(full.as_str(), value.as_slice())
                            .map_err(|e| err(&self.path, e))?;
                    }
                    Change::Remove { .. } => {
                        table
                            .remove(full.as_str())
                            .map_err(|e| err(&self.path, e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(&self.path, e))
    }

    fn load_now(&self, ns: Namespace) -> Result<Vec<Record>, StoreError> {
        let now = crate::block::now_ms();
        let txn = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let table = txn.open_table(RECORDS).map_err(|e| err(&self.path, e))?;
        let prefix = format!("{}/", ns.as_str());
        let mut out = Vec::new();
        for item in table
            .range(prefix.as_str()..)
            .map_err(|e| err(&self.path, e))?
        {
            let (k, v) = item.map_err(|e| err(&self.path, e))?;
            let Some(key) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            let v = v.value();
            if v.len() < 8 {
                continue;
            }
            let expires_at_ms = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
            if expires_at_ms <= now {
                continue;
            }
            out.push(Record {
                ns,
                key: key.to_string(),
                value: v[8..].to_vec(),
                expires_at_ms,
            });
        }
        Ok(out)
    }
}

fn full_key(ns: Namespace, key: &str) -> String {
    format!("{}/{key}", ns.as_str())
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("state store {}: {e}", path.display()))
}

impl Store for Embedded {
    fn kind(&self) -> StoreKind {
        StoreKind::Embedded
    }

    fn apply<'a>(&'a self, changes: &'a [Change]) -> StoreFuture<'a, ()> {
        // redb commits with fsync: keep it off the async threads.
        let changes = changes.to_vec();
        let this = Embedded {
            db: self.db.clone(),
            path: self.path.clone(),
        };
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.apply_now(&changes))
                .await
                .map_err(|e| StoreError(format!("state store writer: {e}")))?
        })
    }

    fn load(&self, ns: Namespace) -> StoreFuture<'_, Vec<Record>> {
        let this = Embedded {
            db: self.db.clone(),
            path: self.path.clone(),
        };
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_now(ns))
                .await
                .map_err(|e| StoreError(format!("state store reader: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, expires_at_ms: u64) -> Record {
        Record {
            ns: Namespace::Blocks,
            key: key.into(),
            value: format!("{{\"k\":\"{key}\"}}").into_bytes(),
            expires_at_ms,
        }
    }

    #[tokio::test]
    async fn put_load_remove_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let far = crate::block::now_ms() + 3_600_000;
        {
            let s = Embedded::open(dir.path()).unwrap();
            s.apply(&[
                Change::Put(rec("a", far)),
                Change::Put(rec("b", far)),
                Change::Put(rec("old", 1)),
            ])
            .await
            .unwrap();
            s.apply(&[Change::Remove {
                ns: Namespace::Blocks,
                key: "b".into(),
            }])
            .await
            .unwrap();
            assert!(
                Embedded::open(dir.path()).is_err(),
                "a second process cannot open it"
            );
        }
        let s = Embedded::open(dir.path()).unwrap();
        let got = s.load(Namespace::Blocks).await.unwrap();
        assert_eq!(got, vec![rec("a", far)], "expired records are not loaded");
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            b"this is not a database, just some bytes",
        )
        .unwrap();
        let e = Embedded::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("state.redb"), "{e}");
    }
}
