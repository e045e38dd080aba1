//! The detectors, one file each, in the order the pipeline runs them. Each reads the request's
//! facts and adds signals (or decides) on the decision being built; adding a detector is a file
//! here and one line in [`crate::pipeline`].

pub mod auth;
pub mod behaviour;
pub mod bots;
pub mod headers;
pub mod intel;
pub mod limits;
pub mod lists;
pub mod quotas;
pub mod rules;
pub mod score;
