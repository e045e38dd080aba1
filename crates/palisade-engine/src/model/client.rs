//! What the bot catalog made of a request's user agent, as its decision carries it.

use std::sync::Arc;

use palisade_intel::Category;

/// A user agent's classification, as the decision carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientClass {
    /// Category.
    pub category: Category,
    /// The catalog's name for the client.
    pub name: Option<Arc<str>>,
    /// The verified-bot claim and its state, if the user agent made one.
    pub verification: Option<(Arc<str>, palisade_intel::verify::VerifyStatus)>,
}
