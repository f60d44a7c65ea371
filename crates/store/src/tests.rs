use std::fs;

use super::*;

fn options() -> StoreOptions {
    StoreOptions {
        durable: true,
        fsync: true,
        segment_bytes: 1 << 20,
        recover_truncate: false,
        postgres_url: None,
        postgres_stream: String::new(),
        lease: Duration::from_secs(10),
        advertise: None,
    }
}

fn write(dir: &Path, payloads: &[&[u8]]) {
    let (store, _) = Store::open(dir, &options()).unwrap();
    for payload in payloads {
        store
            .append(payload.to_vec())
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
}

fn segment(dir: &Path) -> PathBuf {
    let (_, segments) = list_state_files(&dir.join("state")).unwrap();
    segments
        .into_iter()
        .map(|(_, path)| path)
        .find(|path| fs::metadata(path).unwrap().len() > 0)
        .expect("a non-empty segment")
}

fn payloads(recovered: &Recovered) -> Vec<Vec<u8>> {
    recovered.records.iter().map(|(_, p)| p.clone()).collect()
}

#[test]
fn records_survive_reopening_in_order_with_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[b"one", b"two", b"three"]);
    let (store, recovered) = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(
        payloads(&recovered),
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    let seqs: Vec<u64> = recovered.records.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(store.last_seq(), 3);
    store
        .append(b"four".to_vec())
        .unwrap()
        .wait_blocking()
        .unwrap();
    drop(store);
    let (_, recovered) = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(recovered.records.last().unwrap(), &(4, b"four".to_vec()));
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = Store::open(dir.path(), &options()).unwrap();
    assert!(matches!(
        Store::open(dir.path(), &options()),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn a_torn_tail_is_truncated_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[b"first", b"second", b"third record"]);
    let path = segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 4).unwrap();
    drop(file);
    let (_, recovered) = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(
        payloads(&recovered),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
    assert_eq!(recovered.notes.len(), 1);
    let offset = (2 * frame::HEADER_LEN + 5 + 6).to_string();
    assert!(
        recovered.notes[0].contains(&format!("torn tail at byte {offset}")),
        "{:?}",
        recovered.notes
    );
    // The tail was cut off for good: the next open is clean.
    let (_, again) = Store::open(dir.path(), &options()).unwrap();
    assert!(again.notes.is_empty());
    assert_eq!(again.records.len(), 2);
}

#[test]
fn a_corrupt_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[b"first", b"second"]);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (_, recovered) = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(payloads(&recovered), vec![b"first".to_vec()]);
}

#[test]
fn corruption_in_the_middle_stops_startup_unless_told_to_truncate() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[b"first", b"second", b"third"]);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[frame::HEADER_LEN + 5 + frame::HEADER_LEN] ^= 0xff; // first byte of "second"
    fs::write(&path, &bytes).unwrap();
    let error = Store::open(dir.path(), &options())
        .err()
        .expect("must refuse");
    let message = error.to_string();
    let offset = (frame::HEADER_LEN + 5).to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("at byte {offset}")), "{message}");
    assert!(message.contains("--recover-truncate"), "{message}");
    // Nothing was changed by the refusal.
    assert_eq!(fs::read(&path).unwrap(), bytes);

    let truncate = StoreOptions {
        recover_truncate: true,
        ..options()
    };
    let (_, recovered) = Store::open(dir.path(), &truncate).unwrap();
    assert_eq!(payloads(&recovered), vec![b"first".to_vec()]);
    assert!(recovered.notes[0].contains("--recover-truncate"));
}

#[test]
fn snapshots_bound_replay_and_truncate_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let small = StoreOptions {
        segment_bytes: 64,
        ..options()
    };
    let (store, _) = Store::open(dir.path(), &small).unwrap();
    for i in 0..10u8 {
        store.append(vec![i; 40]).unwrap().wait_blocking().unwrap();
    }
    let state_dir = dir.path().join("state");
    let (_, before) = list_state_files(&state_dir).unwrap();
    assert!(before.len() >= 5, "{before:?}");
    store.write_snapshot(7, b"state after 7").unwrap();
    store.write_snapshot(8, b"state after 8").unwrap();
    let (snapshots, after) = list_state_files(&state_dir).unwrap();
    assert_eq!(snapshots.len(), 1, "older snapshots are deleted");
    assert!(after.len() < before.len(), "covered segments are deleted");
    drop(store);
    let (_, recovered) = Store::open(dir.path(), &small).unwrap();
    assert_eq!(recovered.snapshot, Some((8, b"state after 8".to_vec())));
    let seqs: Vec<u64> = recovered.records.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![9, 10]);
}

#[test]
fn concurrent_appends_share_fsyncs_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &options()).unwrap();
    let store = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let payload = format!("{t}-{i}").into_bytes();
                    store.append(payload).unwrap().wait_blocking().unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    drop(store);
    let (_, recovered) = Store::open(dir.path(), &options()).unwrap();
    assert_eq!(recovered.records.len(), 200);
    let seqs: Vec<u64> = recovered.records.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    for t in 0..4 {
        let mine: Vec<String> = recovered
            .records
            .iter()
            .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
            .filter(|p| p.starts_with(&format!("{t}-")))
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("{t}-{i}")).collect();
        assert_eq!(mine, expected, "per-writer order is kept");
    }
}

/// A sink that fails while `down` is set, and otherwise records which sequence numbers it
/// made durable.
struct FlakySink {
    down: Arc<std::sync::atomic::AtomicBool>,
    written: Arc<Mutex<Vec<u64>>>,
}

impl RecordSink for FlakySink {
    fn write(&mut self, records: &[(u64, &[u8])]) -> Result<(), SinkError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SinkError::Failed("the disk is full".into()));
        }
        let mut written = self.written.lock().unwrap();
        written.extend(records.iter().map(|(seq, _)| *seq));
        Ok(())
    }
}

#[test]
fn a_barrier_completes_only_once_the_records_before_it_are_durable() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let written = Arc::new(Mutex::new(Vec::new()));
    let sink = FlakySink {
        down: down.clone(),
        written: written.clone(),
    };
    let store = Store {
        dir: PathBuf::from("flaky"),
        writer: Some(Writer::start(sink, 1, Path::new("flaky")).unwrap()),
        _lock: None,
        postgres: None,
    };
    // A change whose write failed: not acknowledged, kept to be written again.
    let first = store.append(b"feedback".to_vec()).unwrap();
    assert!(matches!(
        first.wait_blocking(),
        Err(StoreError::NotDurable { .. })
    ));
    // An answer that repeats it (a replayed Feedback) must not be acknowledged either.
    assert!(matches!(
        store.barrier().wait_blocking(),
        Err(StoreError::NotDurable { .. })
    ));
    assert!(written.lock().unwrap().is_empty());
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    store.barrier().wait_blocking().unwrap();
    assert_eq!(
        *written.lock().unwrap(),
        vec![1],
        "the kept record, and no record of the barrier"
    );
    // With nothing held, a barrier completes without writing anything.
    store.barrier().wait_blocking().unwrap();
    assert_eq!(written.lock().unwrap().len(), 1);
}
