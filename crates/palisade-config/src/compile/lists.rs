//! `[lists]`.

use std::path::{Path, PathBuf};

use http::HeaderName;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[lists]`: deny, allow and conditional allow entries.
pub(super) fn lists(
    raw: &RawConfig,
    base: &Path,
    case_sensitive: bool,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> ListsPolicy {
    let deny = parse_ip_entries(&raw.lists.deny, "lists.deny", base, c, files);
    let allow = parse_ip_entries(&raw.lists.allow, "lists.allow", base, c, files);
    let mut allow_if = Vec::new();
    for cond in &raw.lists.allow_if {
        let net = match parse_net(cond.net.get_ref()) {
            Ok(n) => n,
            Err(msg) => {
                c.at(sp(&cond.net), "lists.allow_if", msg);
                continue;
            }
        };
        let mut paths = Vec::new();
        for p in &cond.paths {
            match PathPattern::parse(p.get_ref()) {
                Ok(pat) => paths.push(fold_case(pat, case_sensitive)),
                Err(err) => c.at(sp(p), "lists.allow_if.paths", err.to_string()),
            }
        }
        let header = cond.header.as_ref().and_then(|h| {
            let (name, value) = match h.get_ref().split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (h.get_ref().trim(), None),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).ok();
            let value = value.map(http::HeaderValue::from_str);
            match (name, value) {
                (Some(n), None) => Some((n, None)),
                (Some(n), Some(Ok(v))) => Some((n, Some(v))),
                _ => {
                    c.at(
                        sp(h),
                        "lists.allow_if.header",
                        format!("`{}` is not `name` or `name: value`", h.get_ref()),
                    );
                    None
                }
            }
        });
        if cond.paths.is_empty() && cond.header.is_none() {
            c.at(
                sp(&cond.net),
                "lists.allow_if",
                "an entry needs paths, a header or both; an unconditional network goes in `allow`",
            );
        }
        allow_if.push(palisade_engine::policy::ConditionalAllow {
            net: IpSet::new([net]),
            paths,
            header,
        });
    }
    ListsPolicy {
        allow,
        deny,
        allow_if,
    }
}
