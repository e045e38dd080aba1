//! What the gateway tells operators: Prometheus metrics and the decision log.

pub mod decision_log;
pub mod metrics;
pub mod series;
