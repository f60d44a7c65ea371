//! One bandit instance: a [`Router`](router::Router) and everything that reads or changes it.
//!
//! - [`settings`]: a router's settings, the patch that fills unset fields, policies.
//! - `arm`: an arm (its RM, the policy's model of it, its statistics) and a candidate arm.
//! - [`router`]: the router: its arms, selection, applying events.
//! - `policy`: the one place a router dispatches on its policy.
//! - `groups`: decisions shared by a group of queries, reserved while a Score runs.
//! - `answers`: applying feedback (checks, idempotency keys, normalization, updates).
//! - [`prior`]: a prior from labelled pairs entered into the arms.
//! - [`state`]: a router as plain data (snapshots, exports, their versioned formats).
//! - [`statistics`]: per-arm and per-category statistics for GetRouter.
//!
//! `impl Router` is spread over `router`, `groups`, `answers`, `prior` and `state`, one
//! concern per file; they import the decision book ([`super::decisions`]) and the math
//! ([`crate::bandit`]), never the catalog or replication above them.

mod answers;
pub(crate) mod arm;
mod groups;
pub(crate) mod policy;
pub mod prior;
pub mod router;
pub mod settings;
pub mod state;
pub mod statistics;
