//! The catalog of routers and its durable ledger.
//!
//! - [`registry`]: routers keyed by name; every change checked, logged, applied.
//! - [`ledger`]: the log, replay and snapshots of the registry's changes, and the reward
//!   models and encoders added through Admin.
//!
//! Imports [`super::instance`] and [`super::decisions`] below it and the store crate; never
//! replication or the async front above it.

pub mod ledger;
pub mod registry;
