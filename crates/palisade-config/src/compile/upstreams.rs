//! `[[upstreams]]`.

use http::Uri;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[[upstreams]]`: where requests go.
pub(super) fn upstreams(raw: &RawConfig, c: &mut Collector<'_>) -> Vec<UpstreamSettings> {
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        let path = format!("upstreams[{}]", u.index);
        let name = u.name.get_ref();
        if !valid_name(name) {
            c.at(
                sp(&u.name),
                &path,
                format!("upstream name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if raw
            .upstreams
            .iter()
            .take(i)
            .any(|o| o.name.get_ref() == name)
        {
            c.at(
                sp(&u.name),
                &path,
                format!("upstream `{name}` is defined twice"),
            );
        }
        let url = match u.url.expose().parse::<Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.authority().is_some()
                    && uri.query().is_none() =>
            {
                uri
            }
            Ok(uri) if uri.scheme_str() == Some("https") => {
                c.at(
                    sp(u.url.spanned()),
                    format!("{path}.url"),
                    "https upstreams are not supported yet; use http:// on a private network",
                );
                uri
            }
            _ => {
                c.at(
                    sp(u.url.spanned()),
                    format!("{path}.url"),
                    format!("`{}` is not an http://host:port URL", u.url.redacted()),
                );
                Uri::default()
            }
        };
        let protocol = choice(
            &u.protocol,
            &[
                ("http1", UpstreamProtocol::Http1),
                ("h2c", UpstreamProtocol::H2c),
            ],
            UpstreamProtocol::Http1,
            &format!("{path}.protocol"),
            c,
        );
        upstreams.push(UpstreamSettings {
            name: name.clone(),
            url,
            protocol,
            max_idle_connections: u.max_idle_connections.unwrap_or(64),
        });
    }
    upstreams
}
