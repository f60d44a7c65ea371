//! Where routers live: all in one [`Routers`] (the local log, or in memory), or spread over
//! the replicas sharing a PostgreSQL database ([`Replicas`]: each router owned by one
//! replica, the catalog of models shared). The async front ([`crate::routers::handle`]) asks
//! it, on the blocking pool, for the routers serving a name, whether a copy found earlier may
//! have gone stale (a lapsed lease), and where Admin's catalog changes are logged.
//! Cost: one map lookup per call, plus with replicas a lease check (and a database read when
//! the router is not placed here yet, as `Replicas::place` says).

use std::sync::Arc;

use crate::routers::Routers;
use crate::routers::error::RouterError;
use crate::routers::replicas::{Placed, Replicas};

/// Where routers live.
pub(in crate::routers) enum Placement {
    /// All of them here.
    Single(Arc<Routers>),
    /// Each owned by one of the replicas sharing a database.
    Replicas(Box<Replicas>),
}

impl Placement {
    /// The routers serving router `name`. Blocking.
    pub(in crate::routers) fn routers_for(&self, name: &str) -> Result<Arc<Routers>, RouterError> {
        match self {
            Placement::Single(routers) => Ok(routers.clone()),
            Placement::Replicas(replicas) => match replicas.place(name)? {
                Placed::Here(cell) => Ok(cell),
                Placed::There { address } => Err(RouterError::ServedElsewhere {
                    router: name.to_string(),
                    address,
                }),
            },
        }
    }

    /// `error`, answered by `routers` for router `name`, unless the routers' copy may have
    /// gone stale while the request ran (replicas: the lease lapsed, or another replica took
    /// the router over): then an answer that depends on state it may not have (an unknown
    /// decision, "already answered", a refused change) would mislead, and the request is
    /// refused as retryable instead ([`RouterError::LeaseUnconfirmed`], UNAVAILABLE).
    pub(in crate::routers) fn unless_stale(
        &self,
        name: &str,
        routers: &Routers,
        error: RouterError,
    ) -> RouterError {
        match self.still_serves(name, routers) {
            Ok(()) => error,
            Err(stale) => stale,
        }
    }

    /// `Ok` unless `routers`' copy of router `name` may have gone stale (replicas: fenced, or
    /// its lease overdue): a check of the routers found earlier in a request, without
    /// looking the router up again.
    pub(in crate::routers) fn still_serves(
        &self,
        name: &str,
        routers: &Routers,
    ) -> Result<(), RouterError> {
        let Placement::Replicas(_) = self else {
            return Ok(());
        };
        let store = routers.store();
        match (store.fenced(), store.lease_overdue()) {
            (false, None) => Ok(()),
            (_, overdue) => Err(RouterError::LeaseUnconfirmed {
                router: name.to_string(),
                overdue_ms: overdue.unwrap_or_default().as_millis() as u64,
            }),
        }
    }

    /// Where the models published through Admin are logged.
    pub(in crate::routers) fn catalog(&self) -> &Arc<Routers> {
        match self {
            Placement::Single(routers) => routers,
            Placement::Replicas(replicas) => replicas.catalog(),
        }
    }

    /// Every [`Routers`] this server writes to: the catalog, then the routers it owns.
    pub(in crate::routers) fn all(&self) -> Vec<Arc<Routers>> {
        match self {
            Placement::Single(routers) => vec![routers.clone()],
            Placement::Replicas(replicas) => std::iter::once(replicas.catalog().clone())
                .chain(replicas.cells())
                .collect(),
        }
    }
}
