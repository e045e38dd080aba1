//! `[probes]`.

use palisade_engine::policy::{ProbeAction, ProbesPolicy};
use palisade_intel::probes::{Class, Scanner};

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[probes]`: which classes, what a hit does, where to look.
pub(super) fn compile_probes(raw: &RawConfig, c: &mut Collector<'_>) -> Option<ProbesPolicy> {
    let p = raw.probes.as_ref()?;
    let unknown = |name: &str| {
        let names: Vec<String> = Class::ALL
            .iter()
            .map(|c| format!("`{}`", c.name()))
            .collect();
        format!("unknown probe class `{name}`; one of {}", names.join(", "))
    };
    let mut classes = Vec::new();
    match &p.classes {
        None => classes.extend(Class::ALL),
        Some(list) => {
            for name in list {
                match Class::from_name(name.get_ref()) {
                    Some(class) => classes.push(class),
                    None => c.at(sp(name), "probes.classes", unknown(name.get_ref())),
                }
            }
        }
    }
    let base = weight(&p.weight, 40, "probes.weight", c);
    let mut actions = [ProbeAction {
        weight: base,
        block: false,
    }; 7];
    for (name, w) in &p.weights {
        match Class::from_name(name) {
            Some(class) => {
                if let Some(a) = actions.get_mut(class as usize) {
                    a.weight = weight(&Some(w.clone()), base, &format!("probes.weights.{name}"), c);
                }
            }
            None => c.at(sp(w), format!("probes.weights.{name}"), unknown(name)),
        }
    }
    for (name, action) in &p.actions {
        let Some(class) = Class::from_name(name) else {
            c.at(sp(action), format!("probes.actions.{name}"), unknown(name));
            continue;
        };
        let block = match action.get_ref().as_str() {
            "signal" => false,
            "block" => true,
            other => {
                c.at(
                    sp(action),
                    format!("probes.actions.{name}"),
                    format!("`{other}` is not an action here: `signal` or `block`"),
                );
                false
            }
        };
        if let Some(a) = actions.get_mut(class as usize) {
            a.block = block;
        }
    }
    let mut scanner = Scanner::new(&classes);
    if let Some(headers) = &p.headers {
        scanner.headers.clear();
        for h in headers {
            match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => scanner.headers.push(n.as_str().to_owned()),
                Err(_) => c.at(
                    sp(h),
                    "probes.headers",
                    format!("`{}` is not a header name", h.get_ref()),
                ),
            }
        }
    }
    scanner.cookies = p.cookies.unwrap_or(true);
    let max_body = match &p.max_body {
        None => 64 * 1024,
        Some(m) => match crate::units::parse_size(m.get_ref()) {
            Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                c.at(
                    sp(m),
                    "probes.max_body",
                    format!("`{}` is not a size such as 64KiB", m.get_ref()),
                );
                64 * 1024
            }
        },
    };
    (p.enabled != Some(false)).then_some(ProbesPolicy {
        scanner,
        actions,
        body: p.body.unwrap_or(true),
        max_body,
    })
}
