//! Palisade's configuration: one strict TOML file, compiled once into runtime structures.
//!
//! Loading has two stages. [`raw`] is the serde schema (`deny_unknown_fields` everywhere); each
//! top-level section and each element of an array section is deserialised on its own, so one
//! unknown field does not hide the next. [`compile`] then turns the raw values into the engine's
//! [`palisade_engine::Policy`] and the gateway's settings, checking every cross-reference and
//! value and reporting *every* error at once with its line and column.
//!
//! This crate reads list files named in the config (`file:` entries); it never opens sockets.

pub mod cases;
pub mod compile;
pub mod error;
pub mod openapi;
pub mod raw;
pub mod secret;
pub use palisade_engine::units;

pub use cases::{CaseOutcome, run_cases};
pub use compile::{
    AcmeChallenge, AcmeSettings, CHALLENGE_TEXTS, CaptchaProvider, CaptchaSettings,
    CertificateInfo, ChallengeBind, ChallengeSettings, Compiled, DecisionLogTarget,
    FeedbackSettings, KeyForward, KeySettings, LETS_ENCRYPT, LogSettings, OnEngineError,
    OnStoreError, Overrides, RangeFetch, ServerSettings, SignedAgentSpec, StoreBackend,
    StoreSettings, StoreSync, TestCase, TlsSettings, TlsVersion, UpstreamProtocol,
    UpstreamSettings, WebBotAuthSettings, agent_origin, compile_str, load_file,
};
pub use error::{ConfigError, ConfigErrors};

/// The embedded default policy: what `palisade serve` runs with no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");
