//! laser-router: a gRPC service that routes RLHF training queries to reward models with a
//! LinUCB contextual bandit (LASeR, Nguyen et al. 2024), scores the responses with the
//! chosen ONNX reward model, and learns from the trainer's loss.
//!
//! Map of the crate (data flows one way: api -> routers (select) -> models (score) -> api;
//! feedback: api -> routers -> store (log) -> bandit):
//!
//! | module | owns |
//! |---|---|
//! | [`app`] | wiring, startup (load RMs, bind, serve), shutdown |
//! | [`config`] | typed settings from TOML + env + flags, validated, defaults documented |
//! | [`api`] | gRPC handlers, request validation/conversion, error -> status mapping (the only place that sees prost types) |
//! | [`routers`] | named routers, decisions awaiting feedback, applying feedback |
//! | [`bandit`] | pure math: LinUCB arms, reward normalization, arm selection |
//! | [`models`] | reward model specs, ONNX Runtime sessions on worker threads, tokenization |
//! | [`store`] | durable state: CRC-framed log with group commit, snapshots, recovery |
//! | [`state_cli`] | `laser-router state export/import/inspect` |
//! | [`telemetry`] | tracing setup, every metric name |
//! | [`memory`] | malloc arena cap and trimming (no RSS creep across RM add/remove) |

pub mod api;
pub mod app;
pub mod bandit;
pub mod config;
pub mod memory;
pub mod models;
pub mod routers;
pub mod state_cli;
pub mod store;
pub mod telemetry;
