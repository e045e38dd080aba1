//! Integration tests: the real `palisade` binary on free ports, a real upstream, real HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

mod acme;
mod admin;
mod behaviour;
mod bots;
mod challenges;
mod cli;
mod cluster;
mod common;
mod contract;
mod dashboard;
mod ext_authz;
mod fingerprints;
mod fronts;
mod honeypots;
mod hostile;
mod intel;
mod keys;
mod limits;
mod lists;
mod logging;
mod memory;
mod modes;
mod monitoring;
mod paths;
mod probes;
mod proxy;
mod replay;
mod signed_agents;
mod tls;
mod tokens;
