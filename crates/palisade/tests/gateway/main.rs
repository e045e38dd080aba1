//! Integration tests: the real `palisade` binary on free ports, a real upstream, real HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

mod admin;
mod behaviour;
mod cli;
mod cluster;
mod common;
mod hostile;
mod keys;
mod memory;
mod paths;
mod policy;
mod proxy;
mod tokens;
