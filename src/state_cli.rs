//! `laser-router state export|import|inspect`: move a router's state between servers or
//! archive it with a training run, and look at a data directory. These commands open the
//! data directory themselves, so the server using it must be stopped (the directory's
//! lock says so otherwise). On PostgreSQL they open the router's own stream, which no
//! replica may own meanwhile (its lease says so otherwise); `inspect` names each router's
//! owner instead of reading routers that a replica owns.
//!
//! Export file: `LASERRTR`, a u32 format version, then one CRC-framed blob (see
//! `store::frame::write_blob`) holding the router's state (settings, arm factors, pending decisions,
//! reward history) in postcard encoding.

use std::path::Path;

use crate::config::Config;
use crate::routers::instance::state::{RouterStateV1, RouterStateV2, RouterStateV3, RouterStateV4};
use crate::routers::{RouterError, RouterState, Routers, RoutersOptions};
use crate::store::postgres::{self, router_stream};
use crate::store::{Store, StoreError, StoreOptions, frame};

const EXPORT_MAGIC: &[u8; 8] = b"LASERRTR";
/// Version 5: router settings name context categories; version 4 (routers keep what priors
/// their arms hold per RM), version 3 (pending decisions keep their scores), version 2
/// (routers with decision groups and idempotency keys) and version 1 are still read.
const EXPORT_VERSION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StateCliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn file_error(path: &Path) -> impl FnOnce(String) -> StateCliError + '_ {
    move |reason| StateCliError::File {
        path: path.display().to_string(),
        reason,
    }
}

/// Open the data directory (on PostgreSQL: `stream`) and rebuild its routers (as the
/// server does at startup).
fn open(config: &Config, stream: String) -> Result<Routers, StateCliError> {
    let options = StoreOptions {
        durable: true,
        postgres_stream: stream,
        ..config.store_options()
    };
    let (store, recovered) = Store::open(&config.server.data_dir, &options)?;
    let options = RoutersOptions {
        snapshot_every_records: 0,
        max_routers: usize::MAX,
        ..config.routers_options()
    };
    let routers = Routers::with_store(options, store);
    routers.recover(recovered)?;
    Ok(routers)
}

/// Write router `name`'s state to `file`. Returns a one-line summary.
pub fn export(config: &Config, name: &str, file: &Path) -> Result<String, StateCliError> {
    let routers = open(config, router_stream(name))?;
    let state = routers.export(name)?;
    let payload = postcard::to_stdvec(&state).map_err(|e| file_error(file)(e.to_string()))?;
    let mut bytes = Vec::with_capacity(payload.len() + 32);
    bytes.extend_from_slice(EXPORT_MAGIC);
    bytes.extend_from_slice(&EXPORT_VERSION.to_le_bytes());
    frame::write_blob(&mut bytes, 0, &payload).map_err(|e| file_error(file)(e.to_string()))?;
    std::fs::write(file, &bytes).map_err(|e| file_error(file)(e.to_string()))?;
    Ok(format!(
        "exported router {name:?} ({}) to {} ({} bytes)",
        summary(&state),
        file.display(),
        bytes.len()
    ))
}

/// Read an export and make it router `name` (replacing any router of that name), durably.
pub fn import(config: &Config, name: &str, file: &Path) -> Result<String, StateCliError> {
    let bytes = std::fs::read(file).map_err(|e| file_error(file)(e.to_string()))?;
    if bytes.len() < 12 || &bytes[..8] != EXPORT_MAGIC {
        return Err(file_error(file)("not a laser-router router export".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(1..=EXPORT_VERSION).contains(&version) {
        return Err(file_error(file)(format!(
            "unsupported export version {version}"
        )));
    }
    let (_, payload) =
        frame::read_blob(&bytes[12..]).map_err(|e| file_error(file)(e.to_string()))?;
    let state: RouterState = if version == 1 {
        postcard::from_bytes::<RouterStateV1>(payload).map(RouterState::from)
    } else if version == 2 {
        postcard::from_bytes::<RouterStateV2>(payload).map(RouterState::from)
    } else if version == 3 {
        postcard::from_bytes::<RouterStateV3>(payload).map(RouterState::from)
    } else if version == 4 {
        postcard::from_bytes::<RouterStateV4>(payload).map(RouterState::from)
    } else {
        postcard::from_bytes(payload)
    }
    .map_err(|e| file_error(file)(e.to_string()))?;
    let line = format!(
        "imported router {name:?} ({}) from {}",
        summary(&state),
        file.display()
    );
    let routers = open(config, router_stream(name))?;
    routers.import(name, state)?.wait_blocking()?;
    Ok(line)
}

/// Describe the data directory: what recovery finds, router by router.
pub fn inspect(config: &Config) -> Result<String, StateCliError> {
    if let Some(url) = config.store.postgres_url() {
        return inspect_postgres(config, &url);
    }
    let routers = open(config, String::new())?;
    let mut lines = vec![format!(
        "{}: last sequence number {}",
        routers.store().dir().display(),
        routers.store().last_seq()
    )];
    for name in routers
        .list()
        .iter()
        .map(|r| r.lock().expect("router lock poisoned").name().to_string())
    {
        let state = routers.export(&name)?;
        lines.push(format!("router {name:?}: {}", summary(&state)));
    }
    Ok(lines.join("\n"))
}

/// Each router of the database: its state, or the replica that owns it.
fn inspect_postgres(config: &Config, url: &str) -> Result<String, StateCliError> {
    let names = postgres::router_stream_names(url)?;
    let mut lines = vec![format!(
        "{}: {} router streams",
        postgres::redacted(url),
        names.len()
    )];
    for name in names {
        match open(config, router_stream(&name)) {
            Ok(routers) => match routers.export(&name) {
                Ok(state) => lines.push(format!("router {name:?}: {}", summary(&state))),
                Err(RouterError::UnknownRouter { .. }) => {}
                Err(error) => return Err(error.into()),
            },
            Err(StateCliError::Store(StoreError::Held { owner, address, .. })) => {
                lines.push(format!("router {name:?}: owned by {owner} at {address}"))
            }
            Err(error) => return Err(error),
        }
    }
    Ok(lines.join("\n"))
}

fn summary(state: &RouterState) -> String {
    format!(
        "policy {}, context_dim {}, {} arms, {} pending decisions",
        state.settings.policy.name(),
        state.settings.context_dim,
        state.arm_count(),
        state.pending_count()
    )
}
