//! Record framing shared by the log and the snapshot files.
//!
//! A log record is `[len: u32 LE][crc32: u32 LE][seq: u64 LE][payload: len bytes]`; the CRC
//! covers the sequence number and the payload, so a record whose bytes were torn, zeroed or
//! flipped is detected, and a record from another position cannot pass for this one.

use std::io::{self, Write};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;
/// Largest payload accepted (a Score of 1024 queries at d = 16384 in f64 is 128 MiB).
pub const MAX_PAYLOAD: usize = 256 << 20;

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Write one framed record.
pub fn write_record(out: &mut impl Write, seq: u64, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("record too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&checksum(seq, payload).to_le_bytes())?;
    out.write_all(&seq.to_le_bytes())?;
    out.write_all(payload)
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than the header or the declared length needs.
    Truncated { needed: usize, available: usize },
    /// The declared length is beyond [`MAX_PAYLOAD`].
    BadLength { len: usize },
    /// The checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(f, "record truncated ({available} of {needed} bytes)")
            }
            FrameError::BadLength { len } => write!(f, "record length {len} is implausible"),
            FrameError::BadChecksum => write!(f, "record checksum mismatch"),
        }
    }
}

/// A record parsed from the front of `bytes`: (seq, payload, bytes consumed).
pub fn read_record(bytes: &[u8]) -> Result<(u64, &[u8], usize), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            available: bytes.len(),
        });
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(FrameError::BadLength { len });
    }
    let total = HEADER_LEN + len;
    if bytes.len() < total {
        return Err(FrameError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    let payload = &bytes[HEADER_LEN..total];
    if checksum(seq, payload) != crc {
        return Err(FrameError::BadChecksum);
    }
    Ok((seq, payload, total))
}

/// Write one large blob (snapshots, exports): `[len: u64 LE][crc32: u32 LE][seq: u64 LE]
/// [payload]`. No size limit beyond the disk's.
pub fn write_blob(out: &mut impl Write, seq: u64, payload: &[u8]) -> io::Result<()> {
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(&checksum(seq, payload).to_le_bytes())?;
    out.write_all(&seq.to_le_bytes())?;
    out.write_all(payload)
}

/// Parse a blob written by [`write_blob`] that fills `bytes`: (seq, payload).
pub fn read_blob(bytes: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    const BLOB_HEADER: usize = 20;
    if bytes.len() < BLOB_HEADER {
        return Err(FrameError::Truncated {
            needed: BLOB_HEADER,
            available: bytes.len(),
        });
    }
    let len = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let available = bytes.len() - BLOB_HEADER;
    if len != available {
        return Err(FrameError::Truncated {
            needed: len.saturating_add(BLOB_HEADER),
            available: bytes.len(),
        });
    }
    let payload = &bytes[BLOB_HEADER..];
    if checksum(seq, payload) != crc {
        return Err(FrameError::BadChecksum);
    }
    Ok((seq, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let mut bytes = Vec::new();
        write_record(&mut bytes, 7, b"hello").unwrap();
        write_record(&mut bytes, 8, b"").unwrap();
        let (seq, payload, used) = read_record(&bytes).unwrap();
        assert_eq!((seq, payload, used), (7, &b"hello"[..], HEADER_LEN + 5));
        let (seq, payload, _) = read_record(&bytes[used..]).unwrap();
        assert_eq!((seq, payload), (8, &b""[..]));

        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert_eq!(read_record(&flipped), Err(FrameError::BadChecksum));
        let mut renumbered = bytes.clone();
        renumbered[8] = 9;
        assert_eq!(read_record(&renumbered), Err(FrameError::BadChecksum));
        assert!(matches!(
            read_record(&bytes[..10]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            read_record(&bytes[..HEADER_LEN + 2]),
            Err(FrameError::Truncated { .. })
        ));
    }
}
