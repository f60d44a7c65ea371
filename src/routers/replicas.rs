//! Routers spread over replicas that share one PostgreSQL database: each router is owned by
//! one replica at a time, through the writer lease of its own stream (`router/<name>`, see
//! [`crate::store::postgres`]), and the models published through Admin are a catalog every
//! replica reads (stream `''`, appended to by any replica).
//!
//! A replica asked about a router looks it up here ([`Replicas::place`]): a router it owns
//! is a *cell* (a [`Routers`] holding just that router, logged to the router's stream); one
//! whose lease another replica holds is [`Placed::There`], at the address that replica
//! registered (requests are forwarded there); one whose lease is free or lapsed (its owner
//! died, or it was never used) is taken over: the lease taken, the router's newest snapshot
//! and later records recovered, a new cell serving it. A cell whose lease another replica
//! took over (this one was paused or cut off past its lease) writes nothing more
//! ([`crate::store::Store::fenced`]) and is dropped at its next lookup, so the router's
//! requests go to the new owner. A cell whose lease may have lapsed unnoticed (its last
//! successful renewal began more than a lease ago, on the monotonic clock: this replica was
//! paused, or cut off from the database) answers nothing from its copy: its router's
//! requests go to the replica holding the lease now, or, while none does, are refused
//! with [`RouterError::LeaseUnconfirmed`] (UNAVAILABLE: retry) until a renewal succeeds. Cells left with no router (deleted, or a lookup of a name
//! that does not exist) delete their stream and lease row at the next
//! [`Replicas::release_idle`]: nothing in them is state any more.
//!
//! Routers of a database written before streams (schema 1) sit in the catalog; each moves
//! to its own stream the first time a replica owns it (imported there when its stream is
//! empty, then deleted from the catalog), so a move cut short is finished by the next owner.
//!
//! Cost: a lookup of an owned router is a map lookup; a router owned elsewhere is looked up
//! in the database (on the catalog's connection) at most every quarter lease (50 ms to
//! 1 s); a takeover costs a connection, the lease, and reading the router's snapshot
//! (hundreds of MB at d = 4096). Each owned router holds one database connection and one
//! writer thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::routers::catalog::ledger::StateEvent;
use crate::routers::error::RouterError;
use crate::routers::{Routers, RoutersOptions};
use crate::store::postgres::router_stream;
use crate::store::{Store, StoreError, StoreOptions};

/// How long a replica trusts what it read of another replica's lease before reading it
/// again: a quarter of the lease, within these bounds.
const REMOTE_RECHECK: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Whether a cell may answer from its copy: nobody took its router over, and its lease
/// surely holds (renewed less than a lease ago).
fn serves(cell: &Routers) -> bool {
    !cell.store().fenced() && cell.store().lease_overdue().is_none()
}

/// Where a router is served.
pub enum Placed {
    /// Here, by this cell.
    Here(Arc<Routers>),
    /// By the replica at this address.
    There { address: String },
}

/// What this replica knows of one router.
enum Slot {
    /// Nothing yet (or dropped).
    Unknown,
    /// Owned here.
    Cell(Arc<Routers>),
    /// Owned by the replica at `address`, as read at `read`.
    Remote { address: String, read: Instant },
}

pub struct Replicas {
    url: String,
    /// How a router's store opens (its stream set per router).
    store_options: StoreOptions,
    routers_options: RoutersOptions,
    /// The catalog of models (and routers of a schema 1 database, until moved).
    catalog: Arc<Routers>,
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    /// How long a read of another replica's lease is trusted.
    recheck: Duration,
    /// Why the last read of the catalog failed (the database is unreachable), if it did.
    catalog_failing: Mutex<Option<String>>,
}

impl Replicas {
    /// Open the catalog at `url` (blocking): what it holds is recovered into `catalog`.
    pub fn open(
        url: &str,
        store_options: StoreOptions,
        routers_options: RoutersOptions,
    ) -> Result<Self, RouterError> {
        let (store, recovered) = Store::open_shared(url, "").map_err(RouterError::StateWrite)?;
        let catalog = Routers::with_store(
            RoutersOptions {
                snapshot_every_records: 0,
                max_routers: usize::MAX,
                ..routers_options.clone()
            },
            store,
        );
        catalog.recover(recovered)?;
        Ok(Self {
            url: url.to_string(),
            routers_options,
            catalog: Arc::new(catalog),
            slots: Mutex::new(HashMap::new()),
            catalog_failing: Mutex::new(None),
            recheck: (store_options.lease / 4).clamp(REMOTE_RECHECK.0, REMOTE_RECHECK.1),
            store_options,
        })
    }

    /// The catalog of models.
    pub fn catalog(&self) -> &Arc<Routers> {
        &self.catalog
    }

    /// Where router `name` is served, when this replica knows without asking the database
    /// (it owns the router, or read another replica's lease recently). Never blocks on I/O.
    pub fn place_known(&self, name: &str) -> Option<Placed> {
        let slot = self
            .slots
            .lock()
            .expect("slots lock poisoned")
            .get(name)?
            .clone();
        let slot = slot.try_lock().ok()?;
        match &*slot {
            Slot::Cell(cell) if serves(cell) => Some(Placed::Here(cell.clone())),
            Slot::Remote { address, read } if read.elapsed() < self.recheck => {
                Some(Placed::There {
                    address: address.clone(),
                })
            }
            _ => None,
        }
    }

    /// Where router `name` is served, taking it over when nobody owns it. Blocking (a
    /// takeover reads the database).
    pub fn place(&self, name: &str) -> Result<Placed, RouterError> {
        crate::routers::catalog::registry::validate_name(name)?;
        let slot = self
            .slots
            .lock()
            .expect("slots lock poisoned")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Slot::Unknown)))
            .clone();
        let mut slot = slot.lock().expect("slot lock poisoned");
        let stream = router_stream(name);
        match &*slot {
            Slot::Cell(cell) if serves(cell) => return Ok(Placed::Here(cell.clone())),
            Slot::Cell(cell) if !cell.store().fenced() => {
                // Its lease may have lapsed (this replica was paused, or its renewals
                // failed): its copy is answered from only once the lease is renewed, and
                // requests go to a replica that took the router over meanwhile.
                let overdue = cell.store().lease_overdue().unwrap_or_default();
                match self.holder_elsewhere(&stream)? {
                    None => {
                        return Err(RouterError::LeaseUnconfirmed {
                            router: name.to_string(),
                            overdue_ms: overdue.as_millis() as u64,
                        });
                    }
                    Some(address) => {
                        tracing::warn!(router = %name, %address, "another replica took this router over while this one's lease lapsed");
                        *slot = Slot::Remote {
                            address: address.clone(),
                            read: Instant::now(),
                        };
                        return Ok(Placed::There { address });
                    }
                }
            }
            Slot::Cell(_) => {
                tracing::warn!(router = %name, "another replica took this router over");
            }
            Slot::Remote { address, read } if read.elapsed() < self.recheck => {
                return Ok(Placed::There {
                    address: address.clone(),
                });
            }
            Slot::Remote { .. } | Slot::Unknown => {}
        }
        *slot = Slot::Unknown;
        if let Some(address) = self.holder_elsewhere(&stream)? {
            *slot = Slot::Remote {
                address: address.clone(),
                read: Instant::now(),
            };
            return Ok(Placed::There { address });
        }
        let owned = self.cells().len();
        if owned >= self.routers_options.max_routers {
            return Err(RouterError::TooManyRouters {
                max: self.routers_options.max_routers,
            });
        }
        let options = StoreOptions {
            postgres_stream: stream,
            ..self.store_options.clone()
        };
        let (store, recovered) = match Store::open(std::path::Path::new(""), &options) {
            Ok(opened) => opened,
            Err(StoreError::Held { address, .. }) if !address.is_empty() => {
                *slot = Slot::Remote {
                    address: address.clone(),
                    read: Instant::now(),
                };
                return Ok(Placed::There { address });
            }
            // Held by a replica that registered no address: nowhere to forward.
            Err(error) => return Err(RouterError::StateWrite(error)),
        };
        let empty = recovered.snapshot.is_none() && recovered.records.is_empty();
        let started = Instant::now();
        let cell = Routers::with_store(self.routers_options.clone(), store);
        let replayed = cell.recover(recovered)?;
        self.move_from_catalog(name, &cell, empty)?;
        tracing::info!(
            router = %name,
            replayed,
            took_ms = started.elapsed().as_millis() as u64,
            "router owned here"
        );
        let cell = Arc::new(cell);
        *slot = Slot::Cell(cell.clone());
        Ok(Placed::Here(cell))
    }

    /// The address of another live replica holding `stream`'s lease (one that registered
    /// an address), read on the catalog's kept connection.
    fn holder_elsewhere(&self, stream: &str) -> Result<Option<String>, RouterError> {
        Ok(self
            .catalog
            .store()
            .lease_holder(
                stream,
                self.store_options.advertise.as_deref().unwrap_or_default(),
            )
            .map_err(RouterError::StateWrite)?
            .map(|holder| holder.address)
            .filter(|address| !address.is_empty()))
    }

    /// A router of a schema 1 database, still in the catalog: imported into its own
    /// (empty) stream, then deleted from the catalog.
    fn move_from_catalog(
        &self,
        name: &str,
        cell: &Routers,
        empty: bool,
    ) -> Result<(), RouterError> {
        let Ok(state) = self.catalog.export(name) else {
            return Ok(());
        };
        if !empty {
            // Moved already (by a replica that stopped before deleting it from the catalog,
            // or whose deletion this one has not read yet): only the deletion may be left.
            if let Err(error) = self.catalog.delete(name) {
                tracing::debug!(router = %name, %error, "moved router not deleted from the catalog");
            }
            return Ok(());
        }
        cell.import(name, state)?
            .wait_blocking()
            .map_err(RouterError::NotAcknowledged)?;
        self.catalog.delete(name)?;
        tracing::info!(router = %name, "router moved from the catalog to its own stream");
        Ok(())
    }

    /// The cells this replica owns (but one being looked up or taken over just now).
    pub fn cells(&self) -> Vec<Arc<Routers>> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("slots lock poisoned")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|slot| match &*slot.try_lock().ok()? {
                Slot::Cell(cell) => Some(cell.clone()),
                _ => None,
            })
            .collect()
    }

    /// Hand back the leases of cells with no router that nobody is using (deleting their
    /// streams: nothing in them is state any more), and forget fenced cells. Blocking
    /// (closing a store hands its lease back).
    pub fn release_idle(&self) {
        let mut released = Vec::new();
        let mut slots = self.slots.lock().expect("slots lock poisoned");
        slots.retain(|name, slot| {
            let Ok(mut slot) = slot.try_lock() else {
                return true;
            };
            let idle = match &*slot {
                Slot::Cell(cell) => {
                    cell.store().fenced()
                        || (Arc::strong_count(cell) == 1 && cell.list().is_empty())
                }
                Slot::Remote { read, .. } => read.elapsed() > self.recheck * 60,
                Slot::Unknown => true,
            };
            if idle {
                tracing::debug!(router = %name, "router slot released");
                released.push(std::mem::replace(&mut *slot, Slot::Unknown));
            }
            !idle
        });
        // Closing the stores (handing the leases back) waits on the database: not under
        // the map's lock.
        drop(slots);
        for slot in released {
            if let Slot::Cell(cell) = slot
                && !cell.store().fenced()
                && cell.list().is_empty()
                && let Err(error) = cell.store().discard_stream()
            {
                tracing::warn!(%error, "an empty router stream was not deleted");
            }
        }
    }

    /// Hand back every router's lease (the server is stopping). Blocking.
    pub fn release_all(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("slots lock poisoned")
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        drop(slots);
    }

    /// Names of every router stream in the database (deleted routers included: their
    /// streams stay). Blocking.
    pub fn router_names(&self) -> Result<Vec<String>, RouterError> {
        crate::store::postgres::router_stream_names(&self.url).map_err(RouterError::StateWrite)
    }

    /// Apply what other replicas added to the catalog since this one last read it; returns
    /// those changes (the caller loads or unloads the models they name). Blocking.
    pub fn catch_up(&self) -> Result<Vec<StateEvent>, RouterError> {
        let read = self.catalog.catch_up();
        *self.catalog_failing.lock().expect("catalog lock poisoned") =
            read.as_ref().err().map(|error| error.to_string());
        read
    }

    /// Why the database cannot be read now (the last catalog read failed), or `None`.
    pub fn unreachable(&self) -> Option<String> {
        self.catalog_failing
            .lock()
            .expect("catalog lock poisoned")
            .clone()
    }
}
