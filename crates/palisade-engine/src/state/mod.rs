//! The bounded tables the engine keeps between requests: limiter cells, the daily quota
//! ledger, blocks with a time to live.

pub mod blocks;
pub mod bounded;
pub mod limiter;
pub mod quota_ledger;
pub mod ua_cache;
