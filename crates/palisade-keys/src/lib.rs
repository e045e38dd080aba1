//! Palisade's identities: API keys and their lifecycle in the durable store, the in-memory
//! directory requests are verified against, JWT bearer tokens and signed requests.
//!
//! What this crate must never do: keep or print a raw key after creation, or compare secrets in
//! variable time. The store holds only keyed hashes; the gateway and the CLI show ids and
//! prefixes.

pub mod directory;
pub mod httpsig;
pub mod jwt;
pub mod key;
pub mod signature;
pub mod store;
pub mod time;

pub use directory::{DirEntry, KeyDirectory};
pub use key::{ApiKeyRecord, KeyStatus, KeyView, ServerSecret};
pub use store::{AuditEntry, CreatedKey, KeyStore, KeyUpdate, NewKey, StoreError};
