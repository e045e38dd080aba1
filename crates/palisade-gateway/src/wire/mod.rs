//! Wire types both sides of the proxy share: bodies and client faults, header fields as wire
//! lines, the chunked codec, header rewriting, addresses as text, the one-timer-for-many-
//! deadlines, request ids.

pub mod body;
pub mod chunked;
pub mod fields;
pub mod headers;
pub mod ip_text;
pub mod request_id;
pub mod timer;
