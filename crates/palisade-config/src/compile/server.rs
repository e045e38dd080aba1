//! `[server]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};

/// `[server]`: listeners, data, mode, trust, timeouts and bounds.
pub(super) fn server(
    raw: &RawConfig,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> ServerPart {
    let s = &raw.server;
    let dur = |v: &Option<Spanned<String>>, d: &str, name: &str, c: &mut Collector<'_>| {
        let d = parse_duration(d).unwrap_or(0);
        opt(v, d, &format!("server.{name}"), c, parse_duration)
    };
    let listen = opt(
        &s.listen,
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        "server.listen",
        c,
        parse_addr,
    );
    let admin_listen = opt(
        &s.admin_listen,
        SocketAddr::from(([127, 0, 0, 1], 9901)),
        "server.admin_listen",
        c,
        parse_addr,
    );
    let mode = choice(
        &s.mode,
        &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        Mode::Enforce,
        "server.mode",
        c,
    );
    let on_engine_error = choice(
        &s.on_engine_error,
        &[
            ("allow", OnEngineError::Allow),
            ("deny", OnEngineError::Deny),
        ],
        OnEngineError::Allow,
        "server.on_engine_error",
        c,
    );
    let trusted_proxies =
        parse_ip_entries(&s.trusted_proxies, "server.trusted_proxies", base, c, files);
    let connect_timeout = dur(&s.connect_timeout, "5s", "connect_timeout", c);
    let header_read_timeout = dur(&s.header_read_timeout, "10s", "header_read_timeout", c);
    let idle_timeout = dur(&s.idle_timeout, "60s", "idle_timeout", c);
    let first_byte_timeout = dur(&s.first_byte_timeout, "10s", "first_byte_timeout", c);
    let min_send_rate = opt(
        &s.min_send_rate,
        1024,
        "server.min_send_rate",
        c,
        crate::units::parse_byte_rate,
    );
    let min_receive_rate = opt(
        &s.min_receive_rate,
        256,
        "server.min_receive_rate",
        c,
        crate::units::parse_byte_rate,
    );
    let min_rate_grace = dur(&s.min_rate_grace, "10s", "min_rate_grace", c);
    let upstream_timeout = dur(&s.upstream_timeout, "30s", "upstream_timeout", c);
    let drain_timeout = dur(&s.drain_timeout, "30s", "drain_timeout", c);
    for (v, name, span) in [
        (connect_timeout, "connect_timeout", &s.connect_timeout),
        (
            header_read_timeout,
            "header_read_timeout",
            &s.header_read_timeout,
        ),
        (idle_timeout, "idle_timeout", &s.idle_timeout),
        (
            first_byte_timeout,
            "first_byte_timeout",
            &s.first_byte_timeout,
        ),
        (upstream_timeout, "upstream_timeout", &s.upstream_timeout),
    ] {
        if v == 0 {
            c.at(
                span.as_ref().and_then(sp),
                format!("server.{name}"),
                "a timeout must be longer than zero",
            );
        }
    }
    let max_header_count = match &s.max_header_count {
        Some(v) if !(1..=10_000).contains(v.get_ref()) => {
            c.at(
                sp(v),
                "server.max_header_count",
                "must be between 1 and 10000",
            );
            100
        }
        Some(v) => *v.get_ref() as usize,
        None => 100,
    };
    let max_header_bytes = opt(
        &s.max_header_bytes,
        16 << 10,
        "server.max_header_bytes",
        c,
        parse_size,
    );
    if !(1024..=(1 << 20)).contains(&max_header_bytes) {
        c.at(
            s.max_header_bytes.as_ref().and_then(sp),
            "server.max_header_bytes",
            "must be between 1KiB and 1MiB",
        );
    }
    let max_body_bytes = opt(
        &s.max_body_bytes,
        10 << 20,
        "server.max_body_bytes",
        c,
        parse_size,
    );
    let max_connections = match &s.max_connections {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
            c.at(
                sp(v),
                "server.max_connections",
                "must be between 1 and 1000000",
            );
            10_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 10_000,
    };
    let max_connections_per_ip = match &s.max_connections_per_ip {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1_000_000 => {
            c.at(
                sp(v),
                "server.max_connections_per_ip",
                "must be between 1 and 1000000",
            );
            256
        }
        Some(v) => *v.get_ref() as usize,
        None => 256,
    };
    let listen_backlog = match &s.listen_backlog {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 65_535 => {
            c.at(
                sp(v),
                "server.listen_backlog",
                "must be between 1 and 65535",
            );
            4096
        }
        Some(v) => *v.get_ref() as u32,
        None => 4096,
    };
    let max_tracked = match &s.max_tracked_keys {
        Some(v) if *v.get_ref() < 16 => {
            c.at(sp(v), "server.max_tracked_keys", "must be at least 16");
            100_000
        }
        Some(v) => *v.get_ref(),
        None => 100_000,
    };

    let case_sensitive_paths = s.case_sensitive_paths.unwrap_or(false);
    let max_blocks = match &s.max_blocks {
        Some(v) if *v.get_ref() < 16 || *v.get_ref() > 10_000_000 => {
            c.at(
                sp(v),
                "server.max_blocks",
                "must be between 16 and 10000000",
            );
            100_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 100_000,
    };

    ServerPart {
        settings: ServerSettings {
            listen,
            admin_listen,
            data_dir: s
                .data_dir
                .as_ref()
                .map_or_else(|| PathBuf::from("./palisade-data"), PathBuf::from),
            trusted_proxies,
            fingerprint_headers: fingerprint_headers(s.trusted_fingerprint_headers.as_ref(), c),
            forward_fingerprints: false,
            admin_token: s.admin_token.as_ref().map(|t| t.expose().to_owned()),
            on_engine_error,
            connect_timeout,
            header_read_timeout,
            idle_timeout,
            upstream_timeout,
            drain_timeout,
            max_header_count,
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes,
            max_connections,
            max_connections_per_ip,
            first_byte_timeout,
            listen_backlog,
            min_send_rate,
            min_receive_rate,
            min_rate_grace,
            case_sensitive_paths,
        },
        mode,
        max_tracked,
        max_blocks,
    }
}

/// What `[server]` compiles into beside the gateway's settings.
pub(super) struct ServerPart {
    pub(super) settings: ServerSettings,
    pub(super) mode: Mode,
    pub(super) max_tracked: u64,
    pub(super) max_blocks: usize,
}

/// `[server] trusted_fingerprint_headers`.
fn fingerprint_headers(
    h: Option<&RawFingerprintHeaders>,
    c: &mut Collector<'_>,
) -> (
    Option<http::HeaderName>,
    Option<http::HeaderName>,
    Option<http::HeaderName>,
) {
    let mut name = |v: &Option<Spanned<String>>, key: &str| {
        let v = v.as_ref()?;
        match http::HeaderName::from_bytes(v.get_ref().trim().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                c.at(
                    sp(v),
                    format!("server.trusted_fingerprint_headers.{key}"),
                    format!("`{}` is not a header name", v.get_ref()),
                );
                None
            }
        }
    };
    match h {
        Some(h) => (name(&h.ja4, "ja4"), name(&h.h2, "h2"), name(&h.ja3, "ja3")),
        None => (None, None, None),
    }
}
