//! The PostgreSQL state backend (`[store] backend = "postgres"`): the same event-sourced
//! records and snapshots as the local log, in tables the server creates and migrates. Every
//! table is keyed by a **stream** (schema version 2): the store reads and writes one stream
//! (`''`: the whole state; version 1 databases are migrated into it), with its own sequence
//! numbers, snapshots and lease, so several writers can share one database, one per stream.
//!
//! - `laser_records (stream, seq, payload bytea)`: one row per record. The writer
//!   thread commits each batch of queued records atomically (group commit): one statement
//!   that renews the lease and inserts the records only if it held (one round trip), or a
//!   transaction for batches over a thousand records. Records are inserted with `ON CONFLICT
//!   (stream, seq) DO NOTHING`, so writing again a batch whose commit answer was lost (the connection
//!   dropped) cannot apply a record twice.
//! - `laser_snapshots (stream, seq, version, bytes, chunks)` and `laser_snapshot_chunks
//!   (stream, snapshot_seq, index, data)`: a snapshot in chunks of [`SNAPSHOT_CHUNK_BYTES`] (a d = 4096
//!   router's factors are hundreds of MB: no single giant bytea), written in one transaction
//!   that also deletes older snapshots and the records the new one covers.
//! - `laser_schema (version)`: the schema's version; creation and migration run under a
//!   transaction-level advisory lock, so concurrent servers do not race.
//!
//! - `laser_lease (stream, owner, epoch, expires_at, address)`: a row per stream, its writer
//!   lease. One writer per stream: a server takes the lease when it is free or expired (bumping `epoch`), renews
//!   it with every batch and when idle, and every batch's transaction first checks that it
//!   still holds the lease at its epoch. A replica that lost it (paused past the lease,
//!   partitioned) finds so at its next write or renewal: the transaction rolls back, nothing
//!   lands, and its store is fenced ([`super::Store::fenced`]): it writes nothing more. A
//!   server that finds the lease held gets [`StoreError::Held`], naming the holder and its
//!   registered address; once the holder stops renewing, another server takes the stream over
//!   (loading its newest snapshot and the records after it). Times are the database's.
//! - [`SharedStream`]: a stream every replica appends to without a lease (the catalog of
//!   models), one serialized transaction per record.
//!
//! Failures: a failed commit (PostgreSQL down, restarting) is a failed write to the log
//! writer: the records stay queued, changes are refused with UNAVAILABLE, health says
//! NOT_SERVING, and every retry reconnects; once the kept records commit, service resumes.
//!
//! Cost: one round trip per statement, one commit per batch of concurrent records (a few
//! hundred microseconds on a local server); recovery reads the newest snapshot and the
//! records after it once. The client is tokio-postgres on a small current-thread runtime
//! owned by the writer thread (and one per snapshot or recovery), never the server's runtime.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

use super::{RecordSink, Recovered, SNAPSHOT_VERSION, SinkError, StoreError, StoreOptions};

/// Key of the transaction advisory lock held while the schema is created or migrated.
const SCHEMA_LOCK: i64 = 0x4c41_5345_525f_5343; // "LASER_SC"
/// The schema this server writes.
const SCHEMA_VERSION: i32 = 2;
/// Largest piece of a snapshot in one row.
pub const SNAPSHOT_CHUNK_BYTES: usize = 8 << 20;
/// One batch of up to [`RECORDS_PER_STATEMENT`] records, atomically: the lease renewed at this
/// server's epoch, the records inserted only if it was; answers (lease held, rows inserted).
/// Prepared once per connection.
const BATCH_SQL: &str = "WITH lease AS (
         UPDATE laser_lease SET expires_at = now() + make_interval(secs => $3)
         WHERE stream = $6 AND owner = $1 AND epoch = $2 RETURNING 1),
     inserted AS (
         INSERT INTO laser_records (stream, seq, payload)
         SELECT $6, * FROM unnest($4::bigint[], $5::bytea[])
         WHERE EXISTS (SELECT 1 FROM lease)
         ON CONFLICT (stream, seq) DO NOTHING RETURNING 1)
     SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM inserted)";
/// Records per INSERT statement within a batch.
const RECORDS_PER_STATEMENT: usize = 1000;

/// `url` with any password replaced, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the PostgreSQL client runtime: {e}"))
}

/// A connection whose driver runs on `runtime` (progressing while the runtime runs).
async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_postgres::connect(url, NoTls),
    )
    .await
    .map_err(|_| format!("{}: no answer within 10 s", redacted(url)))?
    .map_err(|e| format!("{}: {e}", redacted(url)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// The database at `url` cannot be used now, for `reason`.
fn unavailable(url: &str, reason: String) -> StoreError {
    StoreError::Io {
        path: redacted(url),
        reason,
    }
}

fn db_error(url: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| match e.as_db_error() {
        Some(db) => format!("{}: {}: {}", redacted(url), db.code().code(), db.message()),
        None => format!("{}: {e}", redacted(url)),
    }
}

/// Create or migrate the schema.
async fn migrate(client: &mut Client, url: &str) -> Result<(), String> {
    let error = db_error(url);
    let transaction = client.transaction().await.map_err(&error)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(&error)?;
    transaction
        .batch_execute("CREATE TABLE IF NOT EXISTS laser_schema (version integer NOT NULL)")
        .await
        .map_err(&error)?;
    let version: i32 = transaction
        .query_opt("SELECT version FROM laser_schema", &[])
        .await
        .map_err(&error)?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(format!(
            "{}: the state schema is version {version}, newer than this server's {SCHEMA_VERSION}",
            redacted(url)
        ));
    }
    if version < 1 {
        transaction
            .batch_execute(
                "CREATE TABLE laser_records (seq bigint PRIMARY KEY, payload bytea NOT NULL);
                 CREATE TABLE laser_snapshots (seq bigint PRIMARY KEY, version integer NOT NULL,
                     bytes bigint NOT NULL, chunks integer NOT NULL);
                 CREATE TABLE laser_lease (id integer PRIMARY KEY CHECK (id = 1),
                     owner text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL,
                     address text NOT NULL);
                 INSERT INTO laser_lease VALUES (1, '', 0, 'epoch', '');
                 CREATE TABLE laser_snapshot_chunks (
                     snapshot_seq bigint NOT NULL REFERENCES laser_snapshots (seq) ON DELETE CASCADE,
                     index integer NOT NULL, data bytea NOT NULL,
                     PRIMARY KEY (snapshot_seq, index));
                 DELETE FROM laser_schema;
                 INSERT INTO laser_schema (version) VALUES (1);",
            )
            .await
            .map_err(&error)?;
        tracing::info!(database = %redacted(url), "state schema created (version 1)");
    }
    if version < 2 {
        // Version 2: every table keyed by stream ('' holds what version 1 held), one lease
        // row per stream.
        transaction
            .batch_execute(
                "ALTER TABLE laser_snapshot_chunks
                     DROP CONSTRAINT laser_snapshot_chunks_snapshot_seq_fkey,
                     DROP CONSTRAINT laser_snapshot_chunks_pkey,
                     ADD COLUMN stream text NOT NULL DEFAULT '';
                 ALTER TABLE laser_snapshots DROP CONSTRAINT laser_snapshots_pkey,
                     ADD COLUMN stream text NOT NULL DEFAULT '',
                     ADD PRIMARY KEY (stream, seq);
                 ALTER TABLE laser_snapshot_chunks ADD PRIMARY KEY (stream, snapshot_seq, index),
                     ADD FOREIGN KEY (stream, snapshot_seq)
                         REFERENCES laser_snapshots (stream, seq) ON DELETE CASCADE;
                 ALTER TABLE laser_records DROP CONSTRAINT laser_records_pkey,
                     ADD COLUMN stream text NOT NULL DEFAULT '',
                     ADD PRIMARY KEY (stream, seq);
                 ALTER TABLE laser_lease DROP COLUMN id,
                     ADD COLUMN stream text NOT NULL DEFAULT '' PRIMARY KEY;
                 DELETE FROM laser_schema;
                 INSERT INTO laser_schema (version) VALUES (2);",
            )
            .await
            .map_err(&error)?;
        tracing::info!(database = %redacted(url), "state schema migrated to version 2 (streams)");
    }
    transaction.commit().await.map_err(&error)
}

/// This server's hold on the state: who, since which takeover, for how long at a time.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The stream it covers (`''`: the whole state).
    pub stream: String,
    pub owner: String,
    pub epoch: i64,
    pub length: Duration,
}

impl Lease {
    fn seconds(&self) -> f64 {
        self.length.as_secs_f64()
    }
}

/// The name of this process among the replicas (host, pid and a random part), the same
/// for every lease it holds.
pub fn owner_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{}-{}-{}",
            crate::host::host_name(),
            std::process::id(),
            &random[..8]
        )
    })
}

/// The stream that holds router `name`'s records and snapshots.
pub fn router_stream(name: &str) -> String {
    format!("router/{name}")
}

/// Who holds a stream's lease, when this server could not take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    /// Its registered address (empty: none registered).
    pub address: String,
}

/// Take `stream`'s lease (creating its row) when it is free or expired, or held by an
/// earlier process at this server's `address` (a replica restarted in place takes its
/// routers back at once: an address names one replica); otherwise say who holds it. One
/// attempt.
pub(crate) async fn try_take_lease(
    client: &Client,
    stream: &str,
    length: Duration,
    address: &str,
) -> Result<Result<Lease, Holder>, tokio_postgres::Error> {
    let owner = owner_name();
    client
        .execute(
            "INSERT INTO laser_lease (stream, owner, epoch, expires_at, address)
             VALUES ($1, '', 0, 'epoch', '') ON CONFLICT (stream) DO NOTHING",
            &[&stream],
        )
        .await?;
    let taken = client
        .query_opt(
            "UPDATE laser_lease SET owner = $1, epoch = epoch + 1,
                 expires_at = now() + make_interval(secs => $2), address = $3
             WHERE stream = $4 AND (owner = '' OR expires_at < now() OR (address = $3 AND $3 <> ''))
             RETURNING epoch",
            &[&owner, &length.as_secs_f64(), &address, &stream],
        )
        .await?;
    if let Some(row) = taken {
        let epoch: i64 = row.get(0);
        tracing::info!(%owner, %stream, epoch, "took the writer lease");
        return Ok(Ok(Lease {
            stream: stream.to_string(),
            owner: owner.to_string(),
            epoch,
            length,
        }));
    }
    let row = client
        .query_one(
            "SELECT owner, address FROM laser_lease WHERE stream = $1",
            &[&stream],
        )
        .await?;
    Ok(Err(Holder {
        owner: row.get(0),
        address: row.get(1),
    }))
}

/// Take the lease of `options.postgres_stream` when it is free or expired; otherwise
/// [`StoreError::Held`], naming the holder.
async fn take_lease(
    client: &Client,
    url: &str,
    options: &StoreOptions,
) -> Result<Lease, StoreError> {
    let stream = &options.postgres_stream;
    let address = options.advertise.clone().unwrap_or_default();
    match try_take_lease(client, stream, options.lease, &address)
        .await
        .map_err(|e| unavailable(url, db_error(url)(e)))?
    {
        Ok(lease) => Ok(lease),
        Err(holder) => Err(StoreError::Held {
            stream: shown_stream(stream),
            owner: holder.owner,
            address: holder.address,
        }),
    }
}

/// A stream's name in messages.
pub fn shown_stream(stream: &str) -> String {
    match stream.strip_prefix("router/") {
        Some(router) => format!("router {router:?}"),
        None if stream.is_empty() => "the state's catalog".to_string(),
        None => format!("stream {stream:?}"),
    }
}

/// Renew `lease` inside a transaction (or alone): fenced when another took it meanwhile.
async fn renew(
    client: &impl tokio_postgres::GenericClient,
    url: &str,
    lease: &Lease,
) -> Result<(), SinkError> {
    let renewed = client
        .execute(
            "UPDATE laser_lease SET expires_at = now() + make_interval(secs => $3)
             WHERE stream = $4 AND owner = $1 AND epoch = $2",
            &[&lease.owner, &lease.epoch, &lease.seconds(), &lease.stream],
        )
        .await
        .map_err(|e| SinkError::Failed(db_error(url)(e)))?;
    if renewed == 1 {
        Ok(())
    } else {
        Err(fenced(lease))
    }
}

/// Records as the two arrays one INSERT unnests.
fn columns<'a>(records: &[(u64, &'a [u8])]) -> (Vec<i64>, Vec<&'a [u8]>) {
    records
        .iter()
        .map(|(seq, payload)| (*seq as i64, *payload))
        .unzip()
}

/// The lease is another server's now.
fn fenced(lease: &Lease) -> SinkError {
    SinkError::Fenced(shown_stream(&lease.stream))
}

/// The writer's side: records committed in batches, each under the lease.
pub(super) struct PgSink {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// [`BATCH_SQL`] prepared on `client` (none yet, or the connection is new).
    statement: Option<Statement>,
    lease: Lease,
    /// The start of the last successful renewal (take, write or idle check) plus the
    /// lease's length: until then no other replica can have taken the stream over.
    held_until: Instant,
}

impl PgSink {
    /// Connect, create or migrate the schema, take the writer lease ([`StoreError::Held`]
    /// while another server holds it), and read what the database holds. Blocking.
    pub(super) fn open(url: &str, options: &StoreOptions) -> Result<(Self, Recovered), StoreError> {
        let failed = |reason| unavailable(url, reason);
        let runtime = runtime().map_err(failed)?;
        let started = Instant::now();
        let (client, lease, recovered) = runtime.block_on(async {
            let mut client = connect(url).await.map_err(failed)?;
            migrate(&mut client, url).await.map_err(failed)?;
            let lease = take_lease(&client, url, options).await?;
            let recovered = recover(&client, url, &lease.stream).await.map_err(failed)?;
            Ok::<_, StoreError>((client, lease, recovered))
        })?;
        Ok((
            Self {
                url: url.to_string(),
                runtime,
                client: Some(client),
                statement: None,
                held_until: started + lease.length,
                lease,
            },
            recovered,
        ))
    }

    pub(super) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// A live connection: the kept one, or a new one.
    async fn client(client: Option<Client>, url: &str) -> Result<Client, SinkError> {
        match client {
            Some(client) if !client.is_closed() => Ok(client),
            _ => {
                let client = connect(url).await.map_err(SinkError::Failed)?;
                tracing::info!(database = %redacted(url), "state database connection restored");
                Ok(client)
            }
        }
    }

    /// One transaction: the lease checked (and renewed) at this server's epoch, then the
    /// records; nothing lands without the lease.
    async fn insert(
        client: &mut Client,
        statement: &mut Option<Statement>,
        url: &str,
        lease: &Lease,
        records: &[(u64, &[u8])],
    ) -> Result<(), SinkError> {
        let failed = |e| SinkError::Failed(db_error(url)(e));
        if records.len() <= RECORDS_PER_STATEMENT {
            // The usual batch: one statement, atomic on its own (one round trip): the lease
            // renewed at this server's epoch, and the records inserted only if it was.
            let (seqs, payloads) = columns(records);
            if statement.is_none() {
                *statement = Some(client.prepare(BATCH_SQL).await.map_err(failed)?);
            }
            let prepared = statement.as_ref().expect("prepared above");
            let row = client
                .query_one(
                    prepared,
                    &[
                        &lease.owner,
                        &lease.epoch,
                        &lease.seconds(),
                        &seqs,
                        &payloads,
                        &lease.stream,
                    ],
                )
                .await
                .map_err(failed)?;
            let held: i64 = row.get(0);
            if held != 1 {
                return Err(fenced(lease));
            }
            return Ok(());
        }
        // A large batch: several statements in one transaction, the lease first.
        let transaction = client.transaction().await.map_err(failed)?;
        renew(&transaction, url, lease).await?;
        for chunk in records.chunks(RECORDS_PER_STATEMENT) {
            let (seqs, payloads) = columns(chunk);
            transaction
                .execute(
                    "INSERT INTO laser_records (stream, seq, payload)
                     SELECT $3, * FROM unnest($1::bigint[], $2::bytea[])
                     ON CONFLICT (stream, seq) DO NOTHING",
                    &[&seqs, &payloads, &lease.stream],
                )
                .await
                .map_err(failed)?;
        }
        transaction.commit().await.map_err(failed)
    }
}

impl PgSink {
    /// Run `op` on the kept connection (or a new one, when it is gone), blocking; the
    /// connection and its prepared statement are kept only when `op` succeeds: after a
    /// failure the session may be gone or poisoned, so the next call starts afresh.
    fn on_connection(
        &mut self,
        op: impl AsyncFnOnce(&mut Client, &mut Option<Statement>, &str, &Lease) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let (url, lease) = (self.url.clone(), self.lease.clone());
        let started = Instant::now();
        let client = self.client.take();
        // A statement prepared on a connection that is gone is of no use on the next one.
        let mut statement = match &client {
            Some(client) if !client.is_closed() => self.statement.take(),
            _ => None,
        };
        let (client, done) = self.runtime.block_on(async {
            let mut client = match Self::client(client, &url).await {
                Ok(client) => client,
                Err(error) => return (None, Err(error)),
            };
            let done = op(&mut client, &mut statement, &url, &lease).await;
            (Some(client), done)
        });
        if done.is_ok() {
            self.client = client;
            self.statement = statement;
            // Every successful op renewed the lease at this server's epoch (the database's
            // `now()` then is no earlier than `started`).
            self.held_until = started + self.lease.length;
        }
        done
    }
}

impl RecordSink for PgSink {
    fn write(&mut self, records: &[(u64, &[u8])]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        self.on_connection(async |client, statement, url, lease| {
            Self::insert(client, statement, url, lease, records).await
        })
    }

    fn idle_interval(&self) -> Option<Duration> {
        Some((self.lease.length / 3).max(Duration::from_millis(50)))
    }

    /// Hand the lease back (another replica takes over at once); best effort.
    fn close(&mut self) {
        let lease = self.lease.clone();
        let client = self.client.take();
        // Only on a live session: a database that is down now is not waited for at shutdown.
        let Some(client) = client.filter(|client| !client.is_closed()) else {
            return;
        };
        let released = self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                client.execute(
                    "UPDATE laser_lease SET owner = '', expires_at = now()
                     WHERE stream = $3 AND owner = $1 AND epoch = $2",
                    &[&lease.owner, &lease.epoch, &lease.stream],
                ),
            )
            .await
            .map_err(|_| ())?
            .map_err(|_| ())
        });
        match released {
            Ok(1) => tracing::info!(epoch = lease.epoch, "state's writer lease handed back"),
            _ => tracing::debug!("the writer lease was not handed back (expires by itself)"),
        }
    }

    /// Renew the lease while nothing is written.
    fn idle(&mut self) -> Result<(), SinkError> {
        self.on_connection(async |client, _, url, lease| renew(&*client, url, lease).await)
    }

    fn lease_held_until(&self) -> Option<Instant> {
        Some(self.held_until)
    }
}

/// A stream that every replica appends to (the catalog of models: rare changes), without a
/// lease: each append is one transaction that locks the stream's lease row (so appends are
/// serialized), checks that nobody appended since this replica last read the stream
/// ([`StoreError::Concurrent`] otherwise: the caller reads what is new first), and inserts
/// the next record. Replicas read what the others appended with [`SharedStream::read_new`].
pub(crate) struct SharedStream {
    url: String,
    stream: String,
    inner: std::sync::Mutex<SharedInner>,
}

struct SharedInner {
    /// `Some` until dropped (see the `Drop` below).
    runtime: Option<tokio::runtime::Runtime>,
    /// The kept connection (`None`: make one at the next use).
    client: Option<Client>,
    /// The last record read or written.
    last_seq: u64,
}

impl Drop for SharedInner {
    /// The store may be dropped on the async runtime (at shutdown), where a runtime cannot
    /// be dropped: let it go in the background.
    fn drop(&mut self) {
        self.client.take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SharedStream {
    /// Connect, create or migrate the schema, and read what `stream` holds. Blocking.
    pub(super) fn open(url: &str, stream: &str) -> Result<(Self, Recovered), StoreError> {
        let failed = |reason| unavailable(url, reason);
        let runtime = runtime().map_err(failed)?;
        let (client, recovered) = runtime
            .block_on(async {
                let mut client = connect(url).await?;
                migrate(&mut client, url).await?;
                let recovered = recover(&client, url, stream).await?;
                Ok::<_, String>((client, recovered))
            })
            .map_err(failed)?;
        let last_seq = recovered.next_seq() - 1;
        Ok((
            Self {
                url: url.to_string(),
                stream: stream.to_string(),
                inner: std::sync::Mutex::new(SharedInner {
                    runtime: Some(runtime),
                    client: Some(client),
                    last_seq,
                }),
            },
            recovered,
        ))
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.inner
            .lock()
            .expect("shared stream lock poisoned")
            .last_seq
    }

    /// Run `op` on the kept connection (or a new one); the connection is kept only when
    /// `op` succeeds. Blocking.
    fn with_client<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client, &str, &str, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.inner.lock().expect("shared stream lock poisoned");
        let client = inner.client.take();
        let last_seq = inner.last_seq;
        let (url, stream) = (&self.url, &self.stream);
        let runtime = inner.runtime.as_ref().expect("taken only when dropped");
        let (client, done) = runtime.block_on(async {
            let mut client = match client {
                Some(client) if !client.is_closed() => client,
                _ => match connect(url).await {
                    Ok(client) => client,
                    Err(reason) => return (None, Err(unavailable(url, reason))),
                },
            };
            let done = op(&mut client, url, stream, last_seq).await;
            (Some(client), done)
        });
        if done.is_ok() {
            inner.client = client;
        }
        done
    }

    /// Append `payload` as the next record, committed before this returns.
    pub(super) fn append(&self, payload: &[u8]) -> Result<(), StoreError> {
        let seq = self.with_client(async |client, url, stream, last_seq| {
            let error = |e| StoreError::Unwritable {
                reason: db_error(url)(e),
            };
            let transaction = client.transaction().await.map_err(error)?;
            transaction
                .execute(
                    "INSERT INTO laser_lease (stream, owner, epoch, expires_at, address)
                     VALUES ($1, '', 0, 'epoch', '') ON CONFLICT (stream) DO NOTHING",
                    &[&stream],
                )
                .await
                .map_err(error)?;
            transaction
                .execute(
                    "SELECT 1 FROM laser_lease WHERE stream = $1 FOR UPDATE",
                    &[&stream],
                )
                .await
                .map_err(error)?;
            let newest: i64 = transaction
                .query_one(
                    "SELECT greatest(
                         (SELECT coalesce(max(seq), 0) FROM laser_records WHERE stream = $1),
                         (SELECT coalesce(max(seq), 0) FROM laser_snapshots WHERE stream = $1))",
                    &[&stream],
                )
                .await
                .map_err(error)?
                .get(0);
            if newest as u64 != last_seq {
                return Err(StoreError::Concurrent {
                    stream: shown_stream(stream),
                });
            }
            let seq = last_seq + 1;
            transaction
                .execute(
                    "INSERT INTO laser_records (stream, seq, payload) VALUES ($1, $2, $3)",
                    &[&stream, &(seq as i64), &payload],
                )
                .await
                .map_err(error)?;
            transaction.commit().await.map_err(error)?;
            Ok(seq)
        })?;
        self.inner
            .lock()
            .expect("shared stream lock poisoned")
            .last_seq = seq;
        Ok(())
    }

    /// Who holds `stream`'s lease, when another process holds it unexpired (read on this
    /// stream's connection).
    /// (A holder at `address`, this server's, is an earlier process of this replica: not
    /// another.)
    pub(super) fn holder(&self, stream: &str, address: &str) -> Result<Option<Holder>, StoreError> {
        self.with_client(async |client, url, _, _| {
            let row = client
                .query_opt(
                    "SELECT owner, address FROM laser_lease
                     WHERE stream = $1 AND owner NOT IN ('', $2) AND expires_at > now()
                       AND address <> $3",
                    &[&stream, &owner_name(), &address],
                )
                .await
                .map_err(|e| unavailable(url, db_error(url)(e)))?;
            Ok(row.map(|row| Holder {
                owner: row.get(0),
                address: row.get(1),
            }))
        })
    }

    /// The records other replicas appended since this one last read or wrote, in order;
    /// they count as read once returned.
    pub(super) fn read_new(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let records = self.with_client(async |client, url, stream, last_seq| {
            let rows = client
                .query(
                    "SELECT seq, payload FROM laser_records WHERE stream = $1 AND seq > $2
                     ORDER BY seq",
                    &[&stream, &(last_seq as i64)],
                )
                .await
                .map_err(|e| unavailable(url, db_error(url)(e)))?;
            Ok(rows
                .iter()
                .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?;
        if let Some((seq, _)) = records.last() {
            self.inner
                .lock()
                .expect("shared stream lock poisoned")
                .last_seq = *seq;
        }
        Ok(records)
    }
}

/// On a connection of its own, run `work` in one transaction that first locks `lease`'s row
/// at its epoch (no takeover can happen until it commits); `None` (nothing done) when the
/// lease is another's now. Blocking.
fn under_lease<T>(
    url: &str,
    lease: &Lease,
    work: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, String>,
) -> Result<Option<T>, StoreError> {
    let failed = |reason| unavailable(url, reason);
    let runtime = runtime().map_err(failed)?;
    runtime
        .block_on(async {
            let error = db_error(url);
            let mut client = connect(url).await?;
            let transaction = client.transaction().await.map_err(&error)?;
            let held = transaction
                .query_opt(
                    "SELECT 1 FROM laser_lease WHERE stream = $1 AND owner = $2 AND epoch = $3
                     FOR UPDATE",
                    &[&lease.stream, &lease.owner, &lease.epoch],
                )
                .await
                .map_err(&error)?;
            if held.is_none() {
                return Ok(None);
            }
            let done = work(&transaction).await?;
            transaction.commit().await.map_err(&error)?;
            Ok(Some(done))
        })
        .map_err(failed)
}

/// Delete `lease`'s stream (records, snapshots, the lease row) if this server still holds
/// the lease at its epoch: a stream whose state holds nothing (a deleted router, a name
/// looked up that never existed). Returns whether it was deleted.
pub(super) fn discard_stream(url: &str, lease: &Lease) -> Result<bool, StoreError> {
    let discarded = under_lease(url, lease, async |transaction| {
        for table in ["laser_snapshots", "laser_records", "laser_lease"] {
            transaction
                .execute(
                    &format!("DELETE FROM {table} WHERE stream = $1"),
                    &[&lease.stream],
                )
                .await
                .map_err(db_error(url))?;
        }
        Ok(())
    })?;
    Ok(discarded.is_some())
}

/// The routers that have a stream at `url` (by name). Blocking.
pub fn router_stream_names(url: &str) -> Result<Vec<String>, StoreError> {
    let failed = |reason| unavailable(url, reason);
    let runtime = runtime().map_err(failed)?;
    runtime
        .block_on(async {
            let client = connect(url).await?;
            let rows = client
                .query(
                    "SELECT stream FROM laser_lease WHERE stream LIKE 'router/%' ORDER BY stream",
                    &[],
                )
                .await
                .map_err(db_error(url))?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let stream: &str = row.get(0);
                    stream.strip_prefix("router/").map(str::to_string)
                })
                .collect())
        })
        .map_err(failed)
}

/// Read the newest snapshot and every record after it.
async fn recover(client: &Client, url: &str, stream: &str) -> Result<Recovered, String> {
    let error = db_error(url);
    let newest = client
        .query_opt(
            "SELECT seq, version, bytes, chunks FROM laser_snapshots WHERE stream = $1
             ORDER BY seq DESC LIMIT 1",
            &[&stream],
        )
        .await
        .map_err(&error)?;
    let (snapshot, snapshot_version) = match newest {
        Some(row) => {
            let (seq, version, bytes, chunks): (i64, i32, i64, i32) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let rows = client
                .query(
                    "SELECT index, data FROM laser_snapshot_chunks
                     WHERE stream = $1 AND snapshot_seq = $2 ORDER BY index",
                    &[&stream, &seq],
                )
                .await
                .map_err(&error)?;
            let mut payload = Vec::with_capacity(bytes as usize);
            for (expected, row) in rows.iter().enumerate() {
                let index: i32 = row.get(0);
                if index as usize != expected {
                    return Err(format!("snapshot {seq}: chunk {expected} is missing"));
                }
                payload.extend_from_slice(row.get::<_, &[u8]>(1));
            }
            if rows.len() != chunks as usize || payload.len() != bytes as usize {
                return Err(format!(
                    "snapshot {seq}: {} chunks of {} bytes, expected {chunks} of {bytes}",
                    rows.len(),
                    payload.len()
                ));
            }
            (Some((seq as u64, payload)), version as u32)
        }
        None => (None, SNAPSHOT_VERSION),
    };
    let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq as i64);
    let rows = client
        .query(
            "SELECT seq, payload FROM laser_records WHERE stream = $1 AND seq > $2 ORDER BY seq",
            &[&stream, &after],
        )
        .await
        .map_err(&error)?;
    let mut records = Vec::with_capacity(rows.len());
    for (expected, row) in (after as u64 + 1..).zip(rows) {
        let seq = row.get::<_, i64>(0) as u64;
        if seq != expected {
            return Err(format!(
                "records {expected}..{seq} are missing from laser_records"
            ));
        }
        records.push((seq, row.get::<_, Vec<u8>>(1)));
    }
    Ok(Recovered {
        snapshot,
        snapshot_version,
        records,
        notes: Vec::new(),
    })
}

/// Write a snapshot of the state after record `seq` in chunks, in one transaction that holds
/// the lease row (no takeover interleaves) and also drops older snapshots and the records it
/// covers. Blocking (its own connection).
pub(super) fn write_snapshot(
    url: &str,
    lease: &Lease,
    seq: u64,
    payload: &[u8],
) -> Result<u64, StoreError> {
    let written = under_lease(url, lease, async |transaction| {
        let error = db_error(url);
        let (stream, seq) = (&lease.stream, seq as i64);
        let chunks: Vec<&[u8]> = payload.chunks(SNAPSHOT_CHUNK_BYTES).collect();
        transaction
            .execute(
                "DELETE FROM laser_snapshots WHERE stream = $1 AND seq >= $2",
                &[stream, &seq],
            )
            .await
            .map_err(&error)?;
        transaction
            .execute(
                "INSERT INTO laser_snapshots (stream, seq, version, bytes, chunks)
                 VALUES ($5, $1, $2, $3, $4)",
                &[
                    &seq,
                    &(SNAPSHOT_VERSION as i32),
                    &(payload.len() as i64),
                    &(chunks.len() as i32),
                    stream,
                ],
            )
            .await
            .map_err(&error)?;
        for (index, chunk) in chunks.iter().enumerate() {
            transaction
                .execute(
                    "INSERT INTO laser_snapshot_chunks (stream, snapshot_seq, index, data)
                     VALUES ($4, $1, $2, $3)",
                    &[&seq, &(index as i32), chunk, stream],
                )
                .await
                .map_err(&error)?;
        }
        for covered in [
            "DELETE FROM laser_snapshots WHERE stream = $1 AND seq < $2",
            "DELETE FROM laser_records WHERE stream = $1 AND seq <= $2",
        ] {
            transaction
                .execute(covered, &[stream, &seq])
                .await
                .map_err(&error)?;
        }
        Ok(payload.len() as u64)
    })?;
    written.ok_or_else(|| {
        unavailable(
            url,
            format!(
                "the writer lease (epoch {}) was taken by another replica: snapshot not written",
                lease.epoch
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("postgres://laser:s3cret@db:5432/state"),
            "postgres://laser:***@db:5432/state"
        );
        assert_eq!(redacted("postgres://db/state"), "postgres://db/state");
        assert_eq!(redacted("host=db user=laser"), "host=db user=laser");
    }
}
