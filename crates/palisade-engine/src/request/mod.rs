//! Reading a request: its canonical path, the route it belongs to, the client's address
//! through trusted proxies, and address sets.

pub mod client_ip;
pub mod ipset;
pub mod path;
pub mod route;
