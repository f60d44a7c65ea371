//! The local-file backend: log segment files written by [`FileSink`] (one sequential write
//! and one `fdatasync` per batch), snapshot files, and recovery from both (the layout and the
//! torn-tail rules are in the crate's documentation). Cost: as the crate's.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{
    OLDEST_SNAPSHOT_VERSION, RecordSink, Recovered, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SinkError,
    StoreError, StoreOptions, frame, io_error,
};

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

pub(crate) fn open_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), StoreError> {
    let path = dir.join(format!("wal-{first_seq:020}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok((path, file))
}

/// Log segment files: one sequential write and one `fdatasync` per batch; a failed write
/// is cut back to the last durable byte (so a partial record is never read as data).
pub(crate) struct FileSink {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    fsync: bool,
    segment_bytes: u64,
    durable_len: u64,
    /// A failed write may have left bytes past `durable_len`: cut them before the next one.
    torn: bool,
}

impl FileSink {
    pub(crate) fn new(dir: PathBuf, segment: (PathBuf, File), options: &StoreOptions) -> Self {
        let (path, file) = segment;
        let durable_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Self {
            dir,
            path,
            file,
            fsync: options.fsync,
            segment_bytes: options.segment_bytes,
            durable_len,
            torn: false,
        }
    }

    /// Write `bytes` at `durable_len` (first cutting off what a failed write left past it,
    /// when one did: no extra system call on the usual path), then fsync.
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.durable_len)?;
        }
        self.file.write_all(bytes)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl RecordSink for FileSink {
    fn write(&mut self, records: &[(u64, &[u8])]) -> Result<(), SinkError> {
        let mut bytes = Vec::new();
        let mut last_seq = 0;
        for &(seq, payload) in records {
            frame::write_record(&mut bytes, seq, payload).expect("writing to memory");
            last_seq = seq;
        }
        if let Err(error) = self.write_bytes(&bytes) {
            // Cut the partial write off now; the next try cuts again before writing.
            let _ = self.file.set_len(self.durable_len);
            self.torn = true;
            return Err(SinkError::Failed(format!(
                "{}: {error}",
                self.path.display()
            )));
        }
        self.durable_len += bytes.len() as u64;
        self.torn = false;
        if self.durable_len >= self.segment_bytes {
            match open_segment(&self.dir, last_seq + 1) {
                Ok((path, file)) => {
                    (self.path, self.file, self.durable_len) = (path, file, 0);
                }
                // Stay on the current segment; rotation is tried after the next write.
                Err(error) => tracing::warn!(%error, "cannot start a new log segment"),
            }
        }
        Ok(())
    }
}

pub(crate) type StateFiles = (Vec<(u64, PathBuf)>, Vec<(u64, PathBuf)>);

/// Snapshots and log segments in `dir`, each sorted by sequence number.
pub(crate) fn list_state_files(dir: &Path) -> Result<StateFiles, StoreError> {
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

pub(crate) fn recover(dir: &Path, recover_truncate: bool) -> Result<Recovered, StoreError> {
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
