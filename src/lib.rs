//! laser-router: a gRPC service that routes RLHF training queries to reward models with a
//! LinUCB contextual bandit (LASeR, Nguyen et al. 2024), scores the responses with the
//! chosen ONNX reward model, and learns from the trainer's loss.
//!
//! Map of the crate, top to bottom; a module imports only modules below it (the plumbing —
//! `telemetry`, `tls`, `memory` — is used by all; `scripts/check-layers.py` checks every
//! `crate::` path in CI). `docs/architecture.md` walks a Score and a Feedback through it.
//!
//! | layer | module | owns |
//! |---|---|---|
//! | edge | [`state_cli`] | `laser-router state export/import/inspect` |
//! | | [`app`] | startup (recover state, load RMs, bind, serve), ordered shutdown |
//! | | [`config`] | the config file: typed settings from TOML + env + flags, validated, defaults documented, converted into the settings types the layers below own |
//! | wire | [`http_listener`] | the HTTP/JSON port, plain or TLS |
//! | | [`api`] | gRPC handlers (admit -> convert -> call -> convert), the one error -> status mapping, forwarding to a router's owning replica; the only place that sees prost types |
//! | domain | [`service`] | running Score and Feedback end to end (selection, RM fan-out, deadline, ids, ensemble, ranking, durability, metrics), priors from labelled pairs, admin operations, load shedding |
//! | components | [`routers`] | from the bottom: `error`, `decisions` (the decision book), `instance` (one router: policy, feedback, prior, statistics), `catalog` (routers by name, the ledger: log, replay, snapshots), `replicas` (each router's owning replica on PostgreSQL), `placement` (where a router lives), `handle` (the async front that owns their blocking threads) |
//! | | [`models`] | reward models: specs, ONNX Runtime sessions on worker threads, batching, tokenization |
//! | foundations (crates of their own: `crates/bandit`, `crates/store`; they cannot import the server) | [`bandit`] | pure math: LinUCB arms, Thompson draws, reward normalization, label agreement, arm selection |
//! | | [`store`] | durable bytes: CRC-framed log with group commit, snapshots, recovery; or streams with leases in PostgreSQL; the host identity |
//! | plumbing | [`telemetry`] | tracing setup, every metric name |
//! | | [`tls`] | TLS settings of the ports and of peer forwarding |
//! | | [`memory`] | malloc arena cap and trimming (no RSS creep across RM add/remove) |

pub mod api;
pub mod app;
pub use laser_bandit as bandit;
pub mod config;
pub mod http_listener;
pub mod memory;
pub mod models;
pub mod routers;
pub mod service;
pub mod state_cli;
pub use laser_store as store;
pub mod telemetry;
pub mod tls;
