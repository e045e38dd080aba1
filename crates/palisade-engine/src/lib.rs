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
pub mod clock;
pub mod detect;
pub mod engine;
pub mod explain;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod ratelimit_headers;
pub mod request;
pub mod state;
pub mod units;

pub use clock::{Clock, ManualClock, Nanos};
pub use engine::{Engine, EngineError, IdentityReport, LimitStateReport, ResponseFacts};
pub use model::code::ClientCode;
pub use model::decision::{Action, DEFAULT_ALLOW_RULE, Decision, LimitOutcome, Signal};
pub use model::facts::RequestFacts;
pub use model::identity::{Dimension, KeyPart};
pub use observe::{Awaited, Origin, Reported};
pub use policy::{ListsPolicy, Mode, Policy, RouteSpec, ScoringPolicy};
pub use request::ipset::IpSet;
pub use request::route::{PathPattern, RouteId, RouteTable};
pub use state::limiter::{Algorithm, LimitAction, LimitSpec, Unit};
