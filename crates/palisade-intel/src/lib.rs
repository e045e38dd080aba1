//! Palisade's client intelligence: what a client *is*, from what it sends. The bot catalog
//! classifies user agents; more detectors join it here. Everything is pure: text in, a
//! classification out, no I/O.

pub mod bots;
pub mod clients;
pub mod h2fp;
pub mod headers;
pub mod hfp;
pub mod ipinfo;
pub mod ja4;
pub mod ja4h;
pub mod mmdb_write;
pub mod probes;
pub mod text;
pub mod verify;

pub use bots::{BotCatalog, Category, Classification};
