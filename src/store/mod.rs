//! Durable state: an append-only log of CRC-framed, sequence-numbered records plus periodic
//! snapshots, in the data directory.
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
//! after the write (crash-safe against process death, not power loss).
//!
//! Recovery: newest snapshot, then every record with a larger sequence number, in order.
//! A torn tail (the last segment ends inside a record, or its last record fails the CRC and
//! nothing valid follows) is reported with the byte offset, truncated, and startup
//! continues with everything before it: those records were never acknowledged. Damage
//! anywhere else stops startup with the file and offset, unless `recover_truncate` is set,
//! which truncates there and drops later segments.
//!
//! Cost: one sequential write per record, one fsync per batch of concurrent records;
//! recovery reads the snapshot and the log tail once. (Slightly past the ~500-line guide:
//! the writer, snapshots and recovery share the file layout above, so they stay together.)

pub mod frame;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};

use tokio::sync::oneshot;

const SNAPSHOT_MAGIC: &[u8; 8] = b"LASERSNP";
/// Written into new snapshots; the payload's format is versioned with the file. Version 1
/// files (routers before decision groups and idempotency keys) are still read: recovery
/// reports the version in [`Recovered::snapshot_version`] and the payload's reader decodes
/// the older form.
pub const SNAPSHOT_VERSION: u32 = 2;
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
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state directory {path} is in use by another laser-router process")]
    Locked { path: String },
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
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Completes when the record is durable (or the write failed).
pub struct Durable {
    receiver: Option<oneshot::Receiver<Result<(), String>>>,
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
                .unwrap_or_else(|_| Err("writer thread exited".into()))
                .map_err(|reason| StoreError::WriterStopped { reason }),
        }
    }

    /// Wait on a plain thread.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        match self.receiver {
            None => Ok(()),
            Some(receiver) => receiver
                .blocking_recv()
                .unwrap_or_else(|_| Err("writer thread exited".into()))
                .map_err(|reason| StoreError::WriterStopped { reason }),
        }
    }
}

struct Append {
    seq: u64,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

struct Writer {
    sender: Sender<Append>,
    /// Next sequence number; held while sending so channel order is sequence order.
    next_seq: Mutex<u64>,
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

pub struct Store {
    dir: PathBuf,
    writer: Option<Writer>,
    _lock: Option<File>,
}

impl Store {
    /// A store that keeps nothing (durability off).
    pub fn in_memory() -> Self {
        Self {
            dir: PathBuf::new(),
            writer: None,
            _lock: None,
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
        let last_seq = recovered
            .records
            .last()
            .map(|(seq, _)| *seq)
            .or(recovered.snapshot.as_ref().map(|(seq, _)| *seq))
            .unwrap_or(0);
        let next_seq = last_seq + 1;
        let (sender, receiver) = mpsc::channel();
        let segment = open_segment(&dir, next_seq)?;
        let (writer_dir, fsync, segment_bytes) =
            (dir.clone(), options.fsync, options.segment_bytes);
        std::thread::Builder::new()
            .name("state-log".into())
            .spawn(move || run_writer(writer_dir, segment, receiver, fsync, segment_bytes))
            .map_err(io_error(&dir))?;
        Ok((
            Store {
                dir,
                writer: Some(Writer {
                    sender,
                    next_seq: Mutex::new(next_seq),
                }),
                _lock: Some(lock),
            },
            recovered,
        ))
    }

    pub fn is_durable(&self) -> bool {
        self.writer.is_some()
    }

    /// Directory of the state files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence number of the last record handed to [`Store::append`] (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.writer
            .as_ref()
            .map(|w| *w.next_seq.lock().expect("seq lock poisoned") - 1)
            .unwrap_or(0)
    }

    /// Queue `payload` as the next record. Records are written in the order of the calls.
    pub fn append(&self, payload: Vec<u8>) -> Result<Durable, StoreError> {
        let Some(writer) = &self.writer else {
            return Ok(Durable::done());
        };
        let (done, receiver) = oneshot::channel();
        let mut next_seq = writer.next_seq.lock().expect("seq lock poisoned");
        writer
            .sender
            .send(Append {
                seq: *next_seq,
                payload,
                done,
            })
            .map_err(|_| StoreError::WriterStopped {
                reason: "channel closed".into(),
            })?;
        *next_seq += 1;
        Ok(Durable {
            receiver: Some(receiver),
        })
    }

    /// Write a snapshot of the state after record `seq` atomically, then delete what it
    /// makes redundant. Blocking (file I/O and fsync): run it off the async runtime.
    pub fn write_snapshot(&self, seq: u64, payload: &[u8]) -> Result<u64, StoreError> {
        if self.writer.is_none() {
            return Ok(0);
        }
        let path = self.dir.join(format!("snapshot-{seq:020}.snap"));
        let temp = self.dir.join(format!("snapshot-{seq:020}.snap.tmp"));
        let mut bytes = Vec::with_capacity(payload.len() + 32);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        frame::write_blob(&mut bytes, seq, payload).map_err(io_error(&temp))?;
        {
            let mut file = File::create(&temp).map_err(io_error(&temp))?;
            file.write_all(&bytes).map_err(io_error(&temp))?;
            file.sync_all().map_err(io_error(&temp))?;
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

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn open_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, BufWriter<File>), StoreError> {
    let path = dir.join(format!("wal-{first_seq:020}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok((path, BufWriter::with_capacity(1 << 20, file)))
}

fn run_writer(
    dir: PathBuf,
    segment: (PathBuf, BufWriter<File>),
    receiver: Receiver<Append>,
    fsync: bool,
    segment_bytes: u64,
) {
    let (mut path, mut out) = segment;
    let mut written: u64 = 0;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batch.push(more);
        }
        let result = (|| -> std::io::Result<()> {
            for append in &batch {
                frame::write_record(&mut out, append.seq, &append.payload)?;
                written += (frame::HEADER_LEN + append.payload.len()) as u64;
            }
            out.flush()?;
            if fsync {
                out.get_ref().sync_data()?;
            }
            Ok(())
        })();
        let outcome = result.map_err(|e| format!("{}: {e}", path.display()));
        if let Err(reason) = &outcome {
            tracing::error!(%reason, "state log write failed");
        }
        let last_seq = batch.last().map(|a| a.seq).unwrap_or(0);
        for append in batch {
            let _ = append.done.send(outcome.clone());
        }
        if outcome.is_err() {
            // Never acknowledge anything after a failed write.
            break;
        }
        if written >= segment_bytes {
            match open_segment(&dir, last_seq + 1) {
                Ok((new_path, new_out)) => {
                    (path, out, written) = (new_path, new_out, 0);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a new log segment");
                    break;
                }
            }
        }
    }
}

type StateFiles = (Vec<(u64, PathBuf)>, Vec<(u64, PathBuf)>);

/// Snapshots and log segments in `dir`, each sorted by sequence number.
fn list_state_files(dir: &Path) -> Result<StateFiles, StoreError> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let number = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|digits| digits.parse::<u64>().ok())
        };
        if let Some(seq) = number("snapshot-", ".snap") {
            snapshots.push((seq, entry.path()));
        } else if let Some(seq) = number("wal-", ".log") {
            segments.push((seq, entry.path()));
        }
    }
    snapshots.sort();
    segments.sort();
    Ok((snapshots, segments))
}

/// Read a snapshot file: (seq, payload, version).
pub fn read_snapshot(path: &Path) -> Result<(u64, Vec<u8>, u32), StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason,
    };
    if bytes.len() < 12 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "not a laser-router snapshot".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&version) {
        return Err(corrupt(
            8,
            format!("unsupported snapshot version {version}"),
        ));
    }
    let (seq, payload) = frame::read_blob(&bytes[12..]).map_err(|e| corrupt(12, e.to_string()))?;
    Ok((seq, payload.to_vec(), version))
}

fn recover(dir: &Path, recover_truncate: bool) -> Result<Recovered, StoreError> {
    let mut notes = Vec::new();
    let (snapshots, segments) = list_state_files(dir)?;
    let (snapshot, snapshot_version) = match snapshots.last() {
        Some((_, path)) => {
            let (seq, payload, version) = read_snapshot(path)?;
            (Some((seq, payload)), version)
        }
        None => (None, SNAPSHOT_VERSION),
    };
    let snapshot_seq = snapshot.as_ref().map(|(seq, _)| *seq).unwrap_or(0);
    let mut records = Vec::new();
    let mut last_seq = snapshot_seq;
    let mut stop = false;
    for (index, (_, path)) in segments.iter().enumerate() {
        if stop {
            fs::remove_file(path).map_err(io_error(path))?;
            let note = format!("{}: removed (after a truncation point)", path.display());
            tracing::warn!("{note}");
            notes.push(note);
            continue;
        }
        let is_last = index + 1 == segments.len();
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_error(path))?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            match frame::read_record(&bytes[offset..]) {
                Ok((seq, payload, used)) => {
                    if seq <= last_seq && seq > snapshot_seq {
                        return Err(StoreError::Corrupt {
                            file: path.display().to_string(),
                            offset: offset as u64,
                            reason: format!("sequence number {seq} does not follow {last_seq}"),
                        });
                    }
                    if seq > snapshot_seq {
                        records.push((seq, payload.to_vec()));
                        last_seq = seq;
                    }
                    offset += used;
                }
                Err(error) => {
                    let torn_tail = is_last && !valid_record_follows(&bytes[offset..]);
                    if !torn_tail && !recover_truncate {
                        return Err(StoreError::Corrupt {
                            file: path.display().to_string(),
                            offset: offset as u64,
                            reason: error.to_string(),
                        });
                    }
                    let what = if torn_tail {
                        "torn tail"
                    } else {
                        "corruption (--recover-truncate)"
                    };
                    let note = format!(
                        "{}: {what} at byte {offset} ({error}); truncated, {} bytes dropped, starting with the {} records before it",
                        path.display(),
                        bytes.len() - offset,
                        records.len()
                    );
                    tracing::warn!("{note}");
                    notes.push(note);
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    file.set_len(offset as u64).map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                    stop = true;
                    break;
                }
            }
        }
    }
    Ok(Recovered {
        snapshot,
        snapshot_version,
        records,
        notes,
    })
}

/// Whether a valid record starts right after the (possibly damaged) record at the front of
/// `bytes`, as its declared length says: damage followed by good data is not a torn write.
fn valid_record_follows(bytes: &[u8]) -> bool {
    if bytes.len() < frame::HEADER_LEN {
        return false;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let next = frame::HEADER_LEN.saturating_add(len);
    len <= frame::MAX_PAYLOAD && next < bytes.len() && frame::read_record(&bytes[next..]).is_ok()
}

#[cfg(test)]
mod tests;
