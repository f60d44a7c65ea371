//! Integration tests: each starts the real `laser-router` binary on 127.0.0.1:0 and talks
//! to it over gRPC with the generated tonic clients.

mod common;
mod deploy_files;
mod durability;
mod encoders;
mod hot_models;
mod observability;
mod policies;
mod production;
mod reward_models;
mod server;
mod tls;
mod trainer;
mod validation;
