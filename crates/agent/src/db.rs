//! The agent's durable record: one redb database at `<state_dir>/agent.db` holding IPAM
//! allocations, security identities and endpoints, so an agent restart finds what it handed out.
//! Each concern owns its tables; this module only opens the file and runs transactions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, WriteTransaction};

/// Errors of opening or using the agent database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The state directory that holds the database could not be created.
    #[error("cannot create agent state directory {path}")]
    CreateStateDir {
        /// The directory the agent was told to keep its state in.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The database file could not be opened or created (locked by another agent, corrupt,
    /// permissions, unsupported file format).
    #[error("cannot open agent database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// A transaction, table or storage operation on the open database failed.
    #[error("agent database operation failed")]
    Storage(#[source] Box<redb::Error>),
}

/// Maps any of redb's operation errors (`TransactionError`, `TableError`, `StorageError`,
/// `CommitError`) into [`DbError::Storage`] with `.db()?`, so callers whose own error enum wraps
/// `DbError` do not need one `From` impl per redb error type.
pub trait RedbResultExt<T> {
    /// Converts the redb error, keeping it as the source.
    fn db(self) -> Result<T, DbError>;
}

impl<T, E: Into<redb::Error>> RedbResultExt<T> for Result<T, E> {
    fn db(self) -> Result<T, DbError> {
        self.map_err(|e| DbError::Storage(Box::new(e.into())))
    }
}

/// The agent's database. Cheap to share behind an `Arc`; redb serialises write transactions,
/// so concurrent writers from several tasks are safe.
pub struct AgentDb {
    db: Database,
    path: PathBuf,
}

// === impl AgentDb ===

impl AgentDb {
    /// File name of the database inside the state directory.
    pub const FILE_NAME: &'static str = "agent.db";

    /// Opens `<state_dir>/agent.db`, creating the directory and the file when missing.
    pub fn open(state_dir: &Path) -> Result<Self, DbError> {
        fs::create_dir_all(state_dir).map_err(|source| DbError::CreateStateDir { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join(Self::FILE_NAME);
        let db = Database::create(&path).map_err(|source| DbError::Open { path: path.clone(), source: Box::new(source) })?;
        Ok(Self { db, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction: committed when `f` returns `Ok`, rolled back when it
    /// returns `Err`, so a multi-table change is all or nothing.
    pub fn write<T, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let txn = self.db.begin_write().db()?;
        match f(&txn) {
            Ok(value) => {
                txn.commit().db()?;
                Ok(value)
            }
            Err(err) => {
                // The caller's error is the one that matters; an abort that fails leaves
                // nothing committed either, and redb reports storage failure on the next use.
                let _ = txn.abort();
                Err(err)
            }
        }
    }

    /// Runs `f` on a consistent read snapshot.
    pub fn read<T, E>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let txn = self.db.begin_read().db()?;
        f(&txn)
    }
}

impl std::fmt::Debug for AgentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDb").field("path", &self.path).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<&str, u64> = TableDefinition::new("test_db");

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Db(#[from] DbError),
        #[error("rolled back on purpose")]
        Rollback,
    }

    #[test]
    fn creates_state_dir_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested").join("state");
        let db = AgentDb::open(&state).unwrap();
        assert_eq!(db.path(), state.join("agent.db"), "database lives at <state_dir>/agent.db");
        assert!(db.path().is_file(), "database file is created");
    }

    #[test]
    fn open_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be makes the open fail.
        std::fs::create_dir(dir.path().join("agent.db")).unwrap();
        let err = AgentDb::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("agent.db"), "error names the database path: {msg}");
    }

    #[test]
    fn second_open_in_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = AgentDb::open(dir.path()).unwrap();
        let err = AgentDb::open(dir.path()).unwrap_err();
        assert!(matches!(err, DbError::Open { .. }), "a held database is not opened twice: {err:?}");
    }

    #[test]
    fn write_commits_on_ok_and_rolls_back_on_err() {
        let dir = tempfile::tempdir().unwrap();
        let db = AgentDb::open(dir.path()).unwrap();
        db.write(|txn| -> Result<(), TestError> {
            txn.open_table(T).db()?.insert("kept", 1).db()?;
            Ok(())
        })
        .unwrap();
        let err = db
            .write(|txn| -> Result<(), TestError> {
                txn.open_table(T).db()?.insert("dropped", 2).db()?;
                Err(TestError::Rollback)
            })
            .unwrap_err();
        assert!(matches!(err, TestError::Rollback), "the closure's error is returned");
        let (kept, dropped) = db
            .read(|txn| -> Result<_, TestError> {
                let t = txn.open_table(T).db()?;
                Ok((t.get("kept").db()?.is_some(), t.get("dropped").db()?.is_some()))
            })
            .unwrap();
        assert!(kept, "write of an Ok closure is committed");
        assert!(!dropped, "write of an Err closure is rolled back");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = AgentDb::open(dir.path()).unwrap();
            db.write(|txn| -> Result<(), DbError> {
                txn.open_table(T).db()?.insert("k", 7).db()?;
                Ok(())
            })
            .unwrap();
        }
        let db = AgentDb::open(dir.path()).unwrap();
        let v = db.read(|txn| -> Result<_, DbError> { Ok(txn.open_table(T).db()?.get("k").db()?.map(|g| g.value())) }).unwrap();
        assert_eq!(v, Some(7), "committed value is read back after reopen");
    }
}
