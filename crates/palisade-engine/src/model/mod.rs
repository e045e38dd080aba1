//! What a decision is about and what it is: request facts, identities, principals, the
//! decision and the codes clients see.

pub mod client;
pub mod code;
pub mod decision;
pub mod facts;
pub mod header_item;
pub mod identity;
pub mod principal;
pub mod shared;
pub mod trace;
