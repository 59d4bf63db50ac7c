//! The agent's durable record: one redb database at `<state_dir>/agent.db` holding IPAM
//! allocations, security identities and endpoints, so an agent restart finds what it handed out.
//! Each concern owns its tables; this module opens the file and runs transactions.
//!
//! Every change is one redb transaction, committed whole or not at all (also when the agent is
//! killed mid-write). A new database is built beside the live name and renamed into place, so
//! `agent.db` is never a half-made file. An existing one is checked before use and never
//! replaced: a damaged database stops the agent rather than letting it start empty and hand out
//! addresses that running pods hold. After a failed write (a full or read-only file system) the
//! file is opened again on the next use, so the agent recovers once the disk does.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadTransaction, StorageBackend, WriteTransaction};

/// What to do about a damaged database, said in every error that reports one.
const DAMAGED_ADVICE: &str = "the agent leaves the file as it is and does not start on it, so no address a running pod holds \
     is handed out again; restore the file from a backup, or delete this node's pods, move the file away and start the agent \
     with an empty database";

/// What to do when the state directory cannot be written.
const WRITABLE_ADVICE: &str = "the state directory must be writable and have free space (stateDir in the agent's configuration)";

/// Errors of opening or using the agent database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The state directory that holds the database could not be created.
    #[error("cannot create agent state directory {path}: {source}; {WRITABLE_ADVICE}")]
    CreateStateDir {
        /// The directory the agent was told to keep its state in.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A new database could not be made (read-only or full file system, permissions). Nothing
    /// is left behind: the half-made file is removed.
    #[error("cannot create agent database {path}: {source}; {WRITABLE_ADVICE}")]
    Create {
        /// The database file that was to be made.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The database exists but is not a database the agent can trust: truncated, overwritten,
    /// failing its checksums, or not a regular file.
    #[error("agent database {path} is damaged ({reason}); {DAMAGED_ADVICE}")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
    /// Another agent holds the database (one agent per state directory).
    #[error("agent database {path} is in use by another agent; one agent runs per state directory")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database file exists but could not be opened for reading and writing.
    #[error("cannot open agent database {path}: {source}; {WRITABLE_ADVICE}")]
    Open {
        /// The database file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Beginning or committing a transaction failed: the file system is full or read-only, or
    /// an earlier such failure has not been recovered from yet. Nothing of the transaction was
    /// written; the database is opened again on the next use.
    #[error("cannot write agent database {path}: {source}; {WRITABLE_ADVICE}")]
    Write {
        /// The database file.
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// A table operation inside a transaction failed.
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

impl DbError {
    /// Whether the error comes from the state directory's file system (full, read-only), which
    /// may well pass: the runtime should try again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Write { .. })
    }
}

/// The agent's database. Cheap to share behind an `Arc`; redb serialises write transactions,
/// so concurrent writers from several tasks are safe.
pub struct AgentDb {
    /// `None` only while a reopen after a failed write has not succeeded yet.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// This `open` made the file: removing it again undoes the agent's start.
    created: bool,
    /// The outermost directory this `open` created for the file, if any.
    made_dir: Option<PathBuf>,
    /// A write failed at the storage level; redb refuses every later transaction until the
    /// file is opened again.
    reopen: AtomicBool,
}

// === impl AgentDb ===

impl AgentDb {
    /// File name of the database inside the state directory.
    pub const FILE_NAME: &'static str = "agent.db";
    /// Where a new database is built before it is renamed to [`Self::FILE_NAME`].
    const NEW_FILE_NAME: &'static str = "agent.db.new";

    /// Opens `<state_dir>/agent.db`, creating the directory and the database when missing. An
    /// existing file is checked first (header, length, every page's checksum) on a copy in
    /// memory; a damaged one is refused and left untouched.
    pub fn open(state_dir: &Path) -> Result<Self, DbError> {
        // The outermost directory this open creates, if any: undone with the database.
        let made_dir = state_dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf);
        fs::create_dir_all(state_dir).map_err(|source| {
            remove_made_dirs(state_dir, made_dir.as_deref());
            DbError::CreateStateDir { path: state_dir.to_path_buf(), source }
        })?;
        let path = state_dir.join(Self::FILE_NAME);
        // A leftover of a start cut short while creating: never the live database.
        let staged = state_dir.join(Self::NEW_FILE_NAME);
        if fs::symlink_metadata(&staged).is_ok() {
            fs::remove_file(&staged).map_err(|source| DbError::Create { path: staged.clone(), source })?;
            tracing::info!("removed {}, left by a start that was cut short", staged.display());
        }
        let created = match fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                return Err(DbError::Damaged { path, reason: "it is not a regular file".into() });
            }
            Ok(meta) => {
                let started = std::time::Instant::now();
                check(&path, meta.len())?;
                tracing::debug!(ms = started.elapsed().as_secs_f64() * 1000.0, bytes = meta.len(), "agent database checked");
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create(&staged, &path).map_err(|source| {
                    let _ = fs::remove_file(&staged);
                    remove_made_dirs(state_dir, made_dir.as_deref());
                    DbError::Create { path: path.clone(), source }
                })?;
                true
            }
            Err(source) => return Err(DbError::Open { path, source }),
        };
        let db = open_file(&path)?;
        let made_dir = if created { made_dir } else { None };
        Ok(Self { db: RwLock::new(Some(db)), path, created, made_dir, reopen: AtomicBool::new(false) })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this open made a new database (the state directory had none).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Closes the database and, when this open made it, removes the file and the directories
    /// made for it: a start that fails after opening leaves the file system as it found it. A
    /// database that existed before is only closed.
    pub fn close_undoing_creation(self) -> io::Result<()> {
        let (path, created, made_dir) = (self.path.clone(), self.created, self.made_dir.clone());
        drop(self);
        if created {
            fs::remove_file(&path)?;
            if let Some(state_dir) = path.parent() {
                remove_made_dirs(state_dir, made_dir.as_deref());
            }
        }
        Ok(())
    }

    /// Runs `f` in one write transaction: committed when `f` returns `Ok`, rolled back when it
    /// returns `Err`, so a multi-table change is all or nothing.
    pub fn write<T, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let db = self.live()?;
        let Some(database) = db.as_ref() else { return Err(self.write_failed(redb::Error::PreviousIo).into()) };
        let txn = database.begin_write().map_err(|e| self.write_failed(e.into()))?;
        match f(&txn) {
            Ok(value) => {
                txn.commit().map_err(|e| self.write_failed(e.into()))?;
                Ok(value)
            }
            Err(err) => {
                // The caller's error is the one that matters; an abort that fails leaves
                // nothing committed either, and redb reports storage failure on the next use.
                if txn.abort().is_err() {
                    self.reopen.store(true, Ordering::SeqCst);
                }
                Err(err)
            }
        }
    }

    /// Runs `f` on a consistent read snapshot.
    pub fn read<T, E>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let db = self.live()?;
        let Some(database) = db.as_ref() else { return Err(self.write_failed(redb::Error::PreviousIo).into()) };
        let txn = database.begin_read().map_err(|e| self.write_failed(e.into()))?;
        f(&txn)
    }

    /// The open database, opened again first when a write failed since the last use.
    fn live(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, DbError> {
        if self.reopen.load(Ordering::SeqCst) {
            let mut slot = self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.reopen.load(Ordering::SeqCst) {
                // The old handle holds the file lock: close it before opening again.
                *slot = None;
                let db = open_file(&self.path).map_err(|e| match e {
                    DbError::Open { source, .. } => self.write_failed(redb::Error::Io(source)),
                    other => other,
                })?;
                *slot = Some(db);
                self.reopen.store(false, Ordering::SeqCst);
                tracing::info!("agent database {} opened again after a failed write", self.path.display());
            }
        }
        Ok(self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Records a storage-level failure: redb refuses further transactions on this handle, so
    /// the next use opens the file again.
    fn write_failed(&self, source: redb::Error) -> DbError {
        if matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Corrupted(_)) {
            self.reopen.store(true, Ordering::SeqCst);
        }
        DbError::Write { path: self.path.clone(), source: Box::new(source) }
    }
}

impl std::fmt::Debug for AgentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDb").field("path", &self.path).finish()
    }
}

/// Builds a new, empty database at `staged`, makes it durable and renames it to `path`.
fn create(staged: &Path, path: &Path) -> io::Result<()> {
    {
        let db = Database::create(staged).map_err(|e| redb_io(e.into()))?;
        // One committed transaction makes the file a complete database on disk.
        let txn = db.begin_write().map_err(|e| redb_io(e.into()))?;
        txn.commit().map_err(|e| redb_io(e.into()))?;
    }
    fs::File::open(staged)?.sync_all()?;
    fs::rename(staged, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes `dir` and its parents up to `top` (the outermost one an open created); only empty
/// directories go, so nothing another process put there is lost.
fn remove_made_dirs(dir: &Path, top: Option<&Path>) {
    let Some(top) = top else { return };
    for made in dir.ancestors() {
        if fs::remove_dir(made).is_err() || made == top {
            break;
        }
    }
}

/// Opens an existing database file (never initialising an empty one).
fn open_file(path: &Path) -> Result<Database, DbError> {
    match Database::builder().open(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(DbError::InUse { path: path.to_path_buf() }),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))) if source.kind() != io::ErrorKind::InvalidData => {
            Err(DbError::Open { path: path.to_path_buf(), source })
        }
        Err(e) => Err(DbError::Damaged { path: path.to_path_buf(), reason: damage(&e) }),
    }
}

/// What redb's refusal of a file says about it.
fn damage(e: &redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            "its header is not a database header".into()
        }
        other => other.to_string(),
    }
}

/// Checks an existing database on a copy in memory, so the file is not written whatever the
/// check finds: it must be a redb database (an empty file is not: a new database is only ever
/// made under another name), whose every page passes its checksum, and which needs no rollback
/// to a previous commit (that would forget a change the agent acted on). A database left by an
/// agent that was killed passes: redb's commits are atomic.
fn check(path: &Path, len: u64) -> Result<(), DbError> {
    let damaged = |reason: String| DbError::Damaged { path: path.to_path_buf(), reason };
    if len == 0 {
        return Err(damaged("the file is empty".into()));
    }
    let bytes = fs::read(path).map_err(|source| DbError::Open { path: path.to_path_buf(), source })?;
    let memory = InMemoryBackend::new();
    memory.set_len(bytes.len() as u64).and_then(|()| memory.write(0, &bytes)).map_err(|e| damaged(format!("copying it: {e}")))?;
    // redb asserts on some malformed files rather than returning an error; a panic here is a
    // verdict on the file, not a bug of the agent. The hook is silenced meanwhile so the log
    // carries the error below and not a backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut db = Database::builder().create_with_backend(memory)?;
        db.check_integrity()
    }));
    std::panic::set_hook(hook);
    match verdict {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(damaged("its last commit fails its checksums; only an earlier state could be recovered".into())),
        Ok(Err(e)) => Err(damaged(damage(&e))),
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            Err(damaged(format!("its structure does not hold: {}", what.unwrap_or_else(|| "unreadable".into()))))
        }
    }
}

/// redb's errors as I/O errors, keeping the kind (a full disk stays `StorageFull`).
fn redb_io(e: redb::Error) -> io::Error {
    match e {
        redb::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
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

    fn put(db: &AgentDb, key: &str, value: u64) {
        db.write(|txn| -> Result<(), DbError> {
            txn.open_table(T).db()?.insert(key, value).db()?;
            Ok(())
        })
        .unwrap();
    }

    fn get(db: &AgentDb, key: &str) -> Option<u64> {
        db.read(|txn| -> Result<_, DbError> { Ok(txn.open_table(T).db()?.get(key).db()?.map(|g| g.value())) }).unwrap()
    }

    /// A closed database of `rows` rows whose values carry a findable marker.
    fn filled(dir: &Path, rows: u64) -> PathBuf {
        let db = AgentDb::open(dir).unwrap();
        for i in 0..rows {
            db.write(|txn| -> Result<(), DbError> {
                let key = format!("record-{i:04}-{}", "marker".repeat(20));
                txn.open_table(T).db()?.insert(key.as_str(), i).db()?;
                Ok(())
            })
            .unwrap();
        }
        db.path().to_path_buf()
    }

    #[test]
    fn creates_state_dir_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested").join("state");
        let db = AgentDb::open(&state).unwrap();
        assert_eq!(db.path(), state.join("agent.db"), "database lives at <state_dir>/agent.db");
        assert!(db.path().is_file(), "database file is created");
        assert!(db.created(), "the open reports that it made the database");
        assert!(!state.join("agent.db.new").exists(), "the staging file was renamed into place");
        drop(db);
        assert!(!AgentDb::open(&state).unwrap().created(), "a second open finds the database");
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
        assert!(matches!(err, DbError::InUse { .. }), "a held database is not opened twice: {err:?}");
        assert!(err.to_string().contains("another agent"), "the error says why: {err}");
    }

    #[test]
    fn write_commits_on_ok_and_rolls_back_on_err() {
        let dir = tempfile::tempdir().unwrap();
        let db = AgentDb::open(dir.path()).unwrap();
        put(&db, "kept", 1);
        let err = db
            .write(|txn| -> Result<(), TestError> {
                txn.open_table(T).db()?.insert("dropped", 2).db()?;
                Err(TestError::Rollback)
            })
            .unwrap_err();
        assert!(matches!(err, TestError::Rollback), "the closure's error is returned");
        assert_eq!(get(&db, "kept"), Some(1), "write of an Ok closure is committed");
        assert_eq!(get(&db, "dropped"), None, "write of an Err closure is rolled back");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        put(&AgentDb::open(dir.path()).unwrap(), "k", 7);
        assert_eq!(get(&AgentDb::open(dir.path()).unwrap(), "k"), Some(7), "committed value is read back after reopen");
    }

    #[test]
    fn a_leftover_staging_file_is_removed_and_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.db.new"), b"half a database").unwrap();
        let db = AgentDb::open(dir.path()).unwrap();
        assert!(db.created(), "without agent.db a new database is made");
        assert!(!dir.path().join("agent.db.new").exists(), "the leftover is gone");
    }

    /// Every kind of damage is refused, named, and leaves the file byte for byte as it was.
    #[test]
    fn a_damaged_database_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(filled(dir.path(), 200)).unwrap();
        // Every copy of one record's key, live or in a page an older commit used.
        let copies: Vec<usize> = good.windows(12).enumerate().filter(|(_, w)| *w == b"record-0100-").map(|(i, _)| i).collect();
        assert!(!copies.is_empty(), "a record's bytes are in the file");
        let mut flipped = good.clone();
        for at in copies {
            flipped[at..at + 12].copy_from_slice(b"RECORD-0100-");
        }
        let mut header = good.clone();
        header[..16].fill(0);
        let mut garbage = good.clone();
        for (i, b) in garbage.iter_mut().enumerate().skip(4096) {
            *b = (i * 7) as u8;
        }
        let cases: [(&str, Vec<u8>); 5] = [
            ("a record's bytes changed", flipped),
            ("truncated to half", good[..good.len() / 2].to_vec()),
            ("truncated to nothing", Vec::new()),
            ("header overwritten", header),
            ("pages overwritten", garbage),
        ];
        for (what, bytes) in cases {
            let case = tempfile::tempdir().unwrap();
            let path = case.path().join("agent.db");
            std::fs::write(&path, &bytes).unwrap();
            let err = AgentDb::open(case.path()).unwrap_err();
            assert!(matches!(err, DbError::Damaged { .. }), "{what}: refused as damaged, got {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(path.to_str().unwrap()), "{what}: the error names the file: {msg}");
            assert!(msg.contains("backup"), "{what}: the error says what to do: {msg}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: the file is kept as it was");
            let names: Vec<_> = std::fs::read_dir(case.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, vec![std::ffi::OsString::from("agent.db")], "{what}: nothing else is made");
        }
    }

    #[test]
    fn a_database_left_by_a_killed_writer_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 50);
        // A copy taken while the database is open is the file as a kill -9 leaves it: not
        // closed cleanly, every commit whole.
        let db = AgentDb::open(dir.path()).unwrap();
        put(&db, "last", 9);
        let crashed = tempfile::tempdir().unwrap();
        std::fs::copy(&path, crashed.path().join("agent.db")).unwrap();
        drop(db);
        let reopened = AgentDb::open(crashed.path()).unwrap();
        assert_eq!(get(&reopened, "last"), Some(9), "the last commit before the kill is there");
        assert!(!reopened.created(), "the database was opened, not made anew");
    }

    #[test]
    fn undoing_a_start_removes_only_a_database_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var").join("state");
        AgentDb::open(&state).unwrap().close_undoing_creation().unwrap();
        assert!(!dir.path().join("var").exists(), "the database and the directories made for it are removed");
        AgentDb::open(dir.path()).unwrap().close_undoing_creation().unwrap();
        assert!(!dir.path().join("agent.db").exists(), "a database made by the failed start is removed");
        assert!(dir.path().is_dir(), "a state directory that existed stays");
        put(&AgentDb::open(dir.path()).unwrap(), "k", 1);
        AgentDb::open(dir.path()).unwrap().close_undoing_creation().unwrap();
        assert_eq!(get(&AgentDb::open(dir.path()).unwrap(), "k"), Some(1), "an existing database is only closed");
    }
}
