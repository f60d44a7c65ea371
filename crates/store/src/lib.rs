//! Durable state: an append-only log of CRC-framed, sequence-numbered records plus periodic
//! snapshots, in the data directory, or the same records and snapshots in PostgreSQL
//! ([`postgres`]: group-committed transactions, chunked snapshots, a writer lease with
//! fencing for replicas). Both backends share the writer thread below ([`RecordSink`] is
//! where they differ) and its failure handling; the local files' sink, snapshot reader and
//! recovery are in `file.rs`, PostgreSQL's in [`postgres`].
//!
//! Why a log and snapshots rather than SQLite: the router is an event-sourced state machine
//! (`Routers::apply`), so the log holds exactly what the server acknowledged, in order, and
//! recovery replays it through the same `apply` as the live path. The arms' state is a few
//! large matrices (one d×d factor per arm, 128 MiB at d = 4096) that a snapshot writes as
//! one sequential file; row-level updates would buy nothing. Operators inspect it with
//! `laser-router state inspect` (records, sequence numbers, routers); the files are plain
//! and their format is below.
//!
//! Layout of `<data_dir>/state/`:
//! - `LOCK`: held (`flock`) by the one process using the directory.
//! - `wal-<first seq>.log`: log segments, records framed as in [`frame`]; a new segment is
//!   started at startup and when the current one exceeds `segment_bytes`.
//! - `snapshot-<seq>.snap`: `LASERSNP`, a u32 version, then one blob (u64 length, CRC,
//!   seq; [`frame::write_blob`]) holding the whole state after applying every record up
//!   to `seq`, written to a temp file, fsynced, renamed, and the directory fsynced. Once a snapshot is
//!   durable, older snapshots and segments holding only records ≤ `seq` are deleted.
//!
//! Durability: [`Store::append`] hands the framed record to the writer thread and returns a
//! [`Durable`] ticket; the writer drains every queued record, writes them, and issues one
//! `fdatasync` for the batch (group commit) before completing the tickets. Callers reply to
//! clients only after their ticket completes. With `fsync = false` the tickets complete
//! after the write (crash-safe against process death, not power loss). A failed write
//! (disk full) keeps its records queued and refuses new ones until they are durable
//! ([`LogWriter`]).
//!
//! Recovery: newest snapshot, then every record with a larger sequence number, in order.
//! A torn tail (the last segment ends inside a record, or its last record fails the CRC and
//! nothing valid follows) is reported with the byte offset, truncated, and startup
//! continues with everything before it: those records were never acknowledged. Damage
//! anywhere else stops startup with the file and offset, unless `recover_truncate` is set,
//! which truncates there and drops later segments.
//!
//! Cost: one sequential write per record, one fsync per batch of concurrent records;
//! recovery reads the snapshot and the log tail once.

mod file;
pub mod frame;
pub mod host;
pub mod postgres;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use file::read_snapshot;
use file::{FileSink, list_state_files, open_segment, recover, sync_dir};

const SNAPSHOT_MAGIC: &[u8; 8] = b"LASERSNP";
/// Written into new snapshots; the payload's format is versioned with the file. Version 1
/// files (routers before decision groups and idempotency keys), version 2 files (reward
/// model specs before backends), version 3 files (pending decisions without their
/// scores), version 4 files (routers without their prior counts) and version 5 files
/// (router settings without context categories) are still read: recovery
/// reports the version in [`Recovered::snapshot_version`] and the payload's reader decodes
/// the older form.
pub const SNAPSHOT_VERSION: u32 = 6;
/// Oldest snapshot version read.
const OLDEST_SNAPSHOT_VERSION: u32 = 1;

/// How the store keeps state.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `false`: no log, no snapshots; state lives in memory only.
    pub durable: bool,
    /// fsync each batch of records before acknowledging it.
    pub fsync: bool,
    /// Start a new log segment beyond this size.
    pub segment_bytes: u64,
    /// Truncate at mid-log damage instead of refusing to start.
    pub recover_truncate: bool,
    /// Keep the records and snapshots in this PostgreSQL database instead of the data
    /// directory ([`postgres`]).
    pub postgres_url: Option<String>,
    /// PostgreSQL: the stream this store reads and writes (`""`: the whole state; a
    /// router's stream holds only that router, [`postgres::router_stream`]).
    pub postgres_stream: String,
    /// The PostgreSQL writer lease's length: a replica that does not renew it for this long
    /// can be replaced by another.
    pub lease: Duration,
    /// PostgreSQL: the address this server registers with the leases it holds, where other
    /// replicas forward requests for the routers it owns.
    pub advertise: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state directory {path} is in use by another laser-router process")]
    Locked { path: String },
    /// PostgreSQL: another replica holds the stream's writer lease.
    #[error(
        "{stream} is owned by another replica ({owner}, at {address:?}): its requests go there; stop it (or let its lease lapse) to write it here"
    )]
    Held {
        stream: String,
        owner: String,
        address: String,
    },
    /// PostgreSQL: another replica took this stream's lease over (this one was paused or cut
    /// off past its lease): nothing more is written here.
    #[error(
        "this replica no longer owns {stream} (another replica took its lease over); the change was not made: retry, and it goes to the new owner"
    )]
    Fenced { stream: String },
    /// PostgreSQL: another replica appended to a shared stream (the catalog of models)
    /// since this one last read it.
    #[error(
        "another replica changed {stream} at the same time; nothing was changed: retry in a second"
    )]
    Concurrent { stream: String },
    #[error(
        "{file} is corrupt at byte {offset}: {reason}; refusing to start with possibly wrong state (start with --recover-truncate to drop everything from there on)"
    )]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("the state log writer stopped: {reason}")]
    WriterStopped { reason: String },
    /// A write or fsync failed (disk full, I/O error): the records it held stay queued in
    /// memory and are written again until the disk takes them.
    #[error(
        "the state log could not be made durable ({reason}); the server keeps the change and writes it again until the disk accepts it: retry"
    )]
    NotDurable { reason: String },
    /// The log is failing: new changes are refused before anything is applied.
    #[error(
        "the state log cannot be written ({reason}); nothing was changed: retry once the disk accepts writes again"
    )]
    Unwritable { reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Completes when the record is durable (or the write failed).
pub struct Durable {
    receiver: Option<oneshot::Receiver<Result<(), WriteFailure>>>,
}

impl Durable {
    /// A ticket for nothing new to make durable: complete at once.
    pub fn done() -> Self {
        Self { receiver: None }
    }

    /// Wait without blocking a runtime thread.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.receiver {
            None => Ok(()),
            Some(receiver) => receiver
                .await
                .unwrap_or_else(|_| Err(WriteFailure::Stopped("writer thread exited".into())))
                .map_err(WriteFailure::into_error),
        }
    }

    /// Wait on a plain thread.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        match self.receiver {
            None => Ok(()),
            Some(receiver) => receiver
                .blocking_recv()
                .unwrap_or_else(|_| Err(WriteFailure::Stopped("writer thread exited".into())))
                .map_err(WriteFailure::into_error),
        }
    }
}

/// Why a ticket did not complete.
#[derive(Clone, Debug)]
enum WriteFailure {
    /// The write failed; the record is kept and written again.
    NotDurable(String),
    /// The writer is gone.
    Stopped(String),
    /// Another replica owns the stream now: the record is dropped, never written.
    Fenced(String),
}

impl WriteFailure {
    fn into_error(self) -> StoreError {
        match self {
            WriteFailure::NotDurable(reason) => StoreError::NotDurable { reason },
            WriteFailure::Stopped(reason) => StoreError::WriterStopped { reason },
            WriteFailure::Fenced(stream) => StoreError::Fenced { stream },
        }
    }
}

struct Append {
    seq: u64,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), WriteFailure>>,
    /// A barrier ([`Store::barrier`]): no record of its own, done when the records queued
    /// before it are.
    barrier: bool,
}

/// Whether the log can be written: the reason while it cannot (set by the writer when a
/// write fails, cleared when the records it kept are durable).
#[derive(Default)]
struct LogHealth {
    failing: Mutex<Option<String>>,
    /// Another replica took the stream over (PostgreSQL): set once, for good.
    fenced: Mutex<Option<String>>,
    /// Until when this server surely still holds the stream's lease (PostgreSQL: the start
    /// of its last successful renewal plus the lease's length, on the monotonic clock);
    /// `None` for stores without a lease.
    lease_held_until: Mutex<Option<Instant>>,
}

impl LogHealth {
    fn failing(&self) -> Option<String> {
        self.failing.lock().expect("health lock poisoned").clone()
    }

    fn set(&self, failing: Option<String>) {
        *self.failing.lock().expect("health lock poisoned") = failing;
    }

    fn fenced(&self) -> Option<String> {
        self.fenced.lock().expect("health lock poisoned").clone()
    }

    fn set_fenced(&self, stream: &str) {
        *self.fenced.lock().expect("health lock poisoned") = Some(stream.to_string());
    }

    fn lease_held_until(&self) -> Option<Instant> {
        *self.lease_held_until.lock().expect("health lock poisoned")
    }

    fn set_lease_held_until(&self, until: Option<Instant>) {
        *self.lease_held_until.lock().expect("health lock poisoned") = until;
    }
}

struct Writer {
    sender: Option<Sender<Append>>,
    /// Next sequence number; held while sending so channel order is sequence order.
    next_seq: Mutex<u64>,
    health: Arc<LogHealth>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    /// Close the queue and wait for the writer to finish what it holds and close its sink
    /// (PostgreSQL: hand the lease back, so another replica takes over at once).
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Start the writer thread on `sink`; the first record appended gets `next_seq`.
    fn start(sink: impl RecordSink, next_seq: u64, shown: &Path) -> Result<Self, StoreError> {
        let (sender, receiver) = mpsc::channel();
        let health = Arc::new(LogHealth::default());
        health.set_lease_held_until(sink.lease_held_until());
        let log = LogWriter {
            health: health.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("state-log".into())
            .spawn(move || log.run(sink, receiver))
            .map_err(io_error(shown))?;
        Ok(Self {
            sender: Some(sender),
            next_seq: Mutex::new(next_seq),
            health,
            thread: Some(thread),
        })
    }
}

/// What recovery found: the snapshot to start from and the records after it.
pub struct Recovered {
    /// (sequence number, payload) of the newest snapshot.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// The version the snapshot was written with ([`SNAPSHOT_VERSION`] for new ones).
    pub snapshot_version: u32,
    /// Log records after the snapshot, in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Human-readable notes (torn tails, truncations) already logged.
    pub notes: Vec<String>,
}

impl Recovered {
    /// The sequence number of the next record: one past the last recovered.
    fn next_seq(&self) -> u64 {
        self.records
            .last()
            .map(|(seq, _)| *seq)
            .or(self.snapshot.as_ref().map(|(seq, _)| *seq))
            .unwrap_or(0)
            + 1
    }
}

pub struct Store {
    dir: PathBuf,
    writer: Option<Writer>,
    _lock: Option<File>,
    postgres: Option<PgStore>,
}

/// A store's stream in PostgreSQL.
enum PgStore {
    /// A stream this server holds the lease of (a router's): records through the writer,
    /// snapshots to this database under this lease.
    Leased { url: String, lease: postgres::Lease },
    /// A stream every replica appends to, one record per transaction (the catalog of
    /// models): no writer thread, no snapshots.
    Shared(Box<postgres::SharedStream>),
}

impl Store {
    /// A store that keeps nothing (durability off).
    pub fn in_memory() -> Self {
        Self {
            dir: PathBuf::new(),
            writer: None,
            _lock: None,
            postgres: None,
        }
    }

    /// Open `<data_dir>/state`, recover what it holds, and start the writer.
    pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<(Store, Recovered), StoreError> {
        if !options.durable {
            let recovered = Recovered {
                snapshot: None,
                snapshot_version: SNAPSHOT_VERSION,
                records: Vec::new(),
                notes: Vec::new(),
            };
            return Ok((Self::in_memory(), recovered));
        }
        if let Some(url) = &options.postgres_url {
            return Self::open_postgres(url, options);
        }
        let dir = data_dir.join("state");
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: dir.display().to_string(),
            });
        }
        let recovered = recover(&dir, options.recover_truncate)?;
        let next_seq = recovered.next_seq();
        let segment = open_segment(&dir, next_seq)?;
        let sink = FileSink::new(dir.clone(), segment, options);
        let writer = Writer::start(sink, next_seq, &dir)?;
        Ok((
            Store {
                dir,
                writer: Some(writer),
                _lock: Some(lock),
                postgres: None,
            },
            recovered,
        ))
    }

    /// Open the stream `options.postgres_stream` kept in PostgreSQL at `url`: the schema,
    /// the stream's writer lease ([`StoreError::Held`] while another replica holds it),
    /// recovery.
    fn open_postgres(url: &str, options: &StoreOptions) -> Result<(Store, Recovered), StoreError> {
        let (sink, recovered) = postgres::PgSink::open(url, options)?;
        let lease = sink.lease().clone();
        let next_seq = recovered.next_seq();
        let shown = PathBuf::from(postgres::redacted(url));
        let writer = Writer::start(sink, next_seq, &shown)?;
        Ok((
            Store {
                dir: shown,
                writer: Some(writer),
                _lock: None,
                postgres: Some(PgStore::Leased {
                    url: url.to_string(),
                    lease,
                }),
            },
            recovered,
        ))
    }

    /// Open `stream` at `url` as a stream every replica appends to (no lease; see
    /// [`postgres::SharedStream`]), and recover what it holds.
    pub fn open_shared(url: &str, stream: &str) -> Result<(Store, Recovered), StoreError> {
        let (shared, recovered) = postgres::SharedStream::open(url, stream)?;
        Ok((
            Store {
                dir: PathBuf::from(postgres::redacted(url)),
                writer: None,
                _lock: None,
                postgres: Some(PgStore::Shared(Box::new(shared))),
            },
            recovered,
        ))
    }

    /// The shared stream, when this store is one.
    fn shared(&self) -> Option<&postgres::SharedStream> {
        match &self.postgres {
            Some(PgStore::Shared(shared)) => Some(shared),
            _ => None,
        }
    }

    pub fn is_durable(&self) -> bool {
        self.writer.is_some() || self.shared().is_some()
    }

    /// Delete this store's stream from the database, while it still holds its lease (a
    /// PostgreSQL stream whose state holds nothing; the caller drops the store next).
    /// Returns whether it was deleted. Blocking.
    pub fn discard_stream(&self) -> Result<bool, StoreError> {
        match &self.postgres {
            Some(PgStore::Leased { url, lease }) => postgres::discard_stream(url, lease),
            _ => Ok(false),
        }
    }

    /// Whether another replica took this store's stream over (PostgreSQL): it writes
    /// nothing more, and its state in memory is stale.
    pub fn fenced(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.health.fenced().is_some())
    }

    /// How long ago this store's lease may have lapsed (PostgreSQL): its last successful
    /// renewal began more than a lease ago, so another replica may own the stream now
    /// without this one having noticed (it was paused, or cut off from the database).
    /// `None` while the lease surely holds, and for stores without a lease.
    pub fn lease_overdue(&self) -> Option<Duration> {
        let until = self.writer.as_ref()?.health.lease_held_until()?;
        Instant::now().checked_duration_since(until)
    }

    /// Who holds `stream`'s lease in this shared store's database, when another replica
    /// (not at `address`) holds it unexpired (`None` too for other stores).
    pub fn lease_holder(
        &self,
        stream: &str,
        address: &str,
    ) -> Result<Option<postgres::Holder>, StoreError> {
        match self.shared() {
            Some(shared) => shared.holder(stream, address),
            None => Ok(None),
        }
    }

    /// Records appended to a shared stream by other replicas since this store last read or
    /// wrote it, in order (none for other stores). The caller applies them before anything
    /// else is appended.
    pub fn read_new(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        match self.shared() {
            Some(shared) => shared.read_new(),
            None => Ok(Vec::new()),
        }
    }

    /// Directory of the state files (the database's URL, password hidden, on PostgreSQL).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence number of the last record handed to [`Store::append`] (0 when none).
    pub fn last_seq(&self) -> u64 {
        if let Some(shared) = self.shared() {
            return shared.last_seq();
        }
        self.writer
            .as_ref()
            .map(|w| *w.next_seq.lock().expect("seq lock poisoned") - 1)
            .unwrap_or(0)
    }

    /// `None` while the log can be written (or there is none); the reason while it cannot:
    /// changes are refused then ([`StoreError::Unwritable`]) and health says NOT_SERVING.
    pub fn unwritable(&self) -> Option<String> {
        self.writer.as_ref().and_then(|w| w.health.failing())
    }

    /// Queue `payload` as the next record. Records are written in the order of the calls.
    /// Refused while the log is failing ([`Store::unwritable`]): nothing is queued then.
    /// On a shared stream the record is committed before this returns (blocking).
    pub fn append(&self, payload: Vec<u8>) -> Result<Durable, StoreError> {
        if let Some(shared) = self.shared() {
            shared.append(&payload)?;
            return Ok(Durable::done());
        }
        let Some(writer) = &self.writer else {
            return Ok(Durable::done());
        };
        if let Some(stream) = writer.health.fenced() {
            return Err(StoreError::Fenced { stream });
        }
        if let Some(reason) = writer.health.failing() {
            return Err(StoreError::Unwritable { reason });
        }
        let (done, receiver) = oneshot::channel();
        let mut next_seq = writer.next_seq.lock().expect("seq lock poisoned");
        writer
            .sender
            .as_ref()
            .expect("the queue closes only when the store is dropped")
            .send(Append {
                seq: *next_seq,
                payload,
                done,
                barrier: false,
            })
            .map_err(|_| StoreError::WriterStopped {
                reason: "channel closed".into(),
            })?;
        *next_seq += 1;
        Ok(Durable {
            receiver: Some(receiver),
        })
    }

    /// A ticket that completes once every record appended before it is durable, and fails
    /// as they do (not durable yet, fenced): what an answer that repeats an earlier one
    /// (a Feedback replayed under its idempotency key) waits for, so it never acknowledges
    /// a change that is not durable. Appends nothing.
    pub fn barrier(&self) -> Durable {
        // Shared streams (no writer) append synchronously: nothing is ever left queued.
        let Some(writer) = &self.writer else {
            return Durable::done();
        };
        let (done, receiver) = oneshot::channel();
        let next_seq = writer.next_seq.lock().expect("seq lock poisoned");
        let sent = writer
            .sender
            .as_ref()
            .expect("the queue closes only when the store is dropped")
            .send(Append {
                seq: *next_seq,
                payload: Vec::new(),
                done,
                barrier: true,
            });
        if let Err(mpsc::SendError(append)) = sent {
            let _ = append
                .done
                .send(Err(WriteFailure::Stopped("channel closed".into())));
        }
        Durable {
            receiver: Some(receiver),
        }
    }

    /// Write a snapshot of the state after record `seq` atomically, then delete what it
    /// makes redundant. Blocking (file I/O and fsync): run it off the async runtime.
    pub fn write_snapshot(&self, seq: u64, payload: &[u8]) -> Result<u64, StoreError> {
        match &self.postgres {
            Some(PgStore::Leased { url, lease }) => {
                return postgres::write_snapshot(url, lease, seq, payload);
            }
            Some(PgStore::Shared(_)) => return Ok(0),
            None if self.writer.is_none() => return Ok(0),
            None => {}
        }
        let path = self.dir.join(format!("snapshot-{seq:020}.snap"));
        let temp = self.dir.join(format!("snapshot-{seq:020}.snap.tmp"));
        let mut bytes = Vec::with_capacity(payload.len() + 32);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        frame::write_blob(&mut bytes, seq, payload).map_err(io_error(&temp))?;
        let written = File::create(&temp)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()));
        if let Err(error) = written {
            // A partial snapshot (disk full) must not keep holding the space.
            let _ = fs::remove_file(&temp);
            return Err(io_error(&temp)(error));
        }
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        // Older snapshots, and segments whose records are all covered, are now redundant.
        let (snapshots, segments) = list_state_files(&self.dir)?;
        for (snapshot_seq, old) in snapshots {
            if snapshot_seq < seq {
                fs::remove_file(&old).map_err(io_error(&old))?;
            }
        }
        for window in segments.windows(2) {
            let (_, segment) = &window[0];
            let (next_first, _) = window[1];
            if next_first <= seq + 1 {
                fs::remove_file(segment).map_err(io_error(segment))?;
            }
        }
        Ok(bytes.len() as u64)
    }
}

/// How long the writer waits before writing again the records a failed write kept.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Where the writer makes records durable: log segment files, or PostgreSQL.
trait RecordSink: Send + 'static {
    /// Make `records` durable, in order: all of them, or (on error) none that a later read
    /// would take as data.
    fn write(&mut self, records: &[(u64, &[u8])]) -> Result<(), SinkError>;

    /// How long the writer may sit idle before [`RecordSink::idle`] (a lease to renew).
    fn idle_interval(&self) -> Option<Duration> {
        None
    }

    /// Called when nothing was written for [`RecordSink::idle_interval`].
    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Until when the sink surely holds its lease, as of its last successful write or idle
    /// call (`None`: it has no lease).
    fn lease_held_until(&self) -> Option<Instant> {
        None
    }

    /// The store is closing (every acknowledged record is durable already).
    fn close(&mut self) {}
}

/// Why a sink did not write.
#[derive(Debug)]
enum SinkError {
    /// The write failed (disk full, the database gone): try again later.
    Failed(String),
    /// Another process owns the state now: this one must never write again.
    Fenced(String),
}

/// The writer thread: group commit, and what happens when a write fails.
///
/// A failed write (disk full, I/O error, the database gone) does not stop it: nothing
/// partial is left behind (the sink's promise), the batch's tickets fail
/// ([`StoreError::NotDurable`]), its records stay queued in memory in order (the routers
/// applied them already; they were never acknowledged), and the log's health reports the
/// failure, so new changes are refused before they are applied. Every [`RETRY_INTERVAL`]
/// the kept records are written again, with anything queued meanwhile; once they are
/// durable the log is healthy again. A fenced sink (another replica took the stream's lease
/// over) writes nothing more: what it holds and everything appended later fails with
/// [`StoreError::Fenced`] (never acknowledged), and the store says so ([`Store::fenced`]),
/// so its owner drops it.
struct LogWriter {
    health: Arc<LogHealth>,
}

impl LogWriter {
    fn run(self, mut sink: impl RecordSink, receiver: Receiver<Append>) {
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        loop {
            let mut batch = Vec::new();
            let next = match (kept.is_empty(), sink.idle_interval()) {
                (false, _) => receiver.recv_timeout(RETRY_INTERVAL),
                (true, Some(interval)) => receiver.recv_timeout(interval),
                (true, None) => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) if kept.is_empty() => {
                    match sink.idle() {
                        Ok(()) => self.health.set_lease_held_until(sink.lease_held_until()),
                        Err(SinkError::Fenced(stream)) => {
                            return self.fenced(&stream, kept, Vec::new(), receiver);
                        }
                        Err(SinkError::Failed(reason)) => {
                            tracing::warn!(%reason, "state store idle check failed")
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    sink.close();
                    return;
                }
            }
            while let Ok(more) = receiver.try_recv() {
                batch.push(more);
            }
            let records: Vec<(u64, &[u8])> = kept
                .iter()
                .map(|(seq, payload)| (*seq, payload.as_slice()))
                .chain(
                    batch
                        .iter()
                        .filter(|a| !a.barrier)
                        .map(|a| (a.seq, a.payload.as_slice())),
                )
                .collect();
            let written = if records.is_empty() {
                Ok(()) // barriers alone, with nothing held: what came before is durable
            } else {
                sink.write(&records)
            };
            if let Err(error) = written {
                let reason = match error {
                    SinkError::Fenced(stream) => {
                        return self.fenced(&stream, kept, batch, receiver);
                    }
                    SinkError::Failed(reason) => reason,
                };
                if self.health.failing().is_none() {
                    tracing::error!(%reason, "state log write failed; refusing changes until the kept records are durable");
                }
                self.health.set(Some(reason.clone()));
                for append in batch {
                    let _ = append
                        .done
                        .send(Err(WriteFailure::NotDurable(reason.clone())));
                    if !append.barrier {
                        kept.push((append.seq, append.payload));
                    }
                }
                continue;
            }
            if !kept.is_empty() {
                tracing::info!(
                    records = kept.len(),
                    "state log writable again: the kept records are durable"
                );
                kept.clear();
            }
            self.health.set(None);
            self.health.set_lease_held_until(sink.lease_held_until());
            for append in batch {
                let _ = append.done.send(Ok(()));
            }
        }
    }
}

impl LogWriter {
    /// Another replica owns the stream: fail what is held and everything appended from now
    /// on, writing nothing more.
    fn fenced(
        self,
        stream: &str,
        kept: Vec<(u64, Vec<u8>)>,
        batch: Vec<Append>,
        receiver: Receiver<Append>,
    ) {
        tracing::error!(
            %stream,
            dropped = kept.len() + batch.len(),
            "another replica took this stream's writer lease over: stepping down from it"
        );
        self.health.set_fenced(stream);
        for append in batch.into_iter().chain(receiver) {
            let _ = append
                .done
                .send(Err(WriteFailure::Fenced(stream.to_string())));
        }
    }
}

#[cfg(test)]
mod tests;
