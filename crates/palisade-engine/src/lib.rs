//! The pure decision engine of Palisade.
//!
//! A request's life, as far as the engine sees it, is: request facts -> identity -> signals ->
//! decision; after the upstream answers, response facts -> observation (cost charging). The
//! engine never opens a socket, reads a file or reads the system clock: time comes in
//! [`RequestFacts::now`] from the caller, state lives in the tables owned by [`Engine`], and every
//! outcome is a [`Decision`] value that carries its reasons.
//!
//! Policy is compiled elsewhere (the `palisade-config` crate) into a [`Policy`]; the gateway does
//! all I/O and maps decisions to responses.

pub mod behaviour;
pub mod blocks;
pub mod bots;
pub mod client_ip;
pub mod clock;
pub mod decision;
pub mod engine;
pub mod facts;
pub mod identity;
pub mod ipset;
pub mod limits;
pub mod path;
pub mod policy;
pub mod principal;
pub mod quota;
pub mod ratelimit_headers;
pub mod route;
pub mod rules;
pub mod units;

pub use clock::{Clock, ManualClock, Nanos};
pub use decision::{Action, DEFAULT_ALLOW_RULE, Decision, LimitOutcome, Signal};
pub use engine::{Engine, EngineError, IdentityReport, LimitStateReport, ResponseFacts};
pub use facts::RequestFacts;
pub use identity::{Dimension, KeyPart};
pub use ipset::IpSet;
pub use limits::{Algorithm, LimitAction, LimitSpec, Unit};
pub use policy::{ListsPolicy, Mode, Policy, RouteSpec, ScoringPolicy};
pub use route::{PathPattern, RouteId, RouteTable};
