//! The `aienv` package: configuration, the HTTP layer (REST API v1 and the WebSocket event
//! gateway), the REST client, and the CLI. The actors and the domain model live in the
//! `aienv-actors` crate.

pub mod access;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster_client;
pub mod config;
pub mod git_credentials;
pub mod http;
pub mod login_gate;
pub mod notify;
pub mod peer_client;
pub mod schemas;
pub mod serve;
pub mod tls;
pub mod transfer_client;
