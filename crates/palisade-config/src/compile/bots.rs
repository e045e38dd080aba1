//! `[bots]`: the built-in catalog, per-category actions and verified bots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// The catalog is compiled once per process: it is the same for every config.
pub(super) fn builtin_catalog() -> Option<Arc<BotCatalog>> {
    static CATALOG: std::sync::OnceLock<Option<Arc<BotCatalog>>> = std::sync::OnceLock::new();
    CATALOG
        .get_or_init(|| BotCatalog::builtin().ok().map(Arc::new))
        .clone()
}

pub(super) fn compile_bots(
    b: &RawBots,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
    fetch: &mut Vec<RangeFetch>,
) -> Option<BotsPolicy> {
    let mut actions = [BotAction::Signal; Category::ALL.len()];
    if let Some(i) = Category::ALL.iter().position(|x| *x == Category::Human)
        && let Some(slot) = actions.get_mut(i)
    {
        *slot = BotAction::Allow;
    }
    for (name, value) in &b.actions {
        let Some(i) =
            Category::parse(name).and_then(|cat| Category::ALL.iter().position(|x| *x == cat))
        else {
            let known: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
            c.at(
                sp(value),
                format!("bots.actions.{name}"),
                format!("unknown bot category `{name}`; known: {}", known.join(", ")),
            );
            continue;
        };
        match (value.get_ref().as_str(), BotAction::parse(value.get_ref())) {
            (_, Some(a)) => {
                if let Some(slot) = actions.get_mut(i) {
                    *slot = a;
                }
            }
            (other, None) => c.at(
                sp(value),
                format!("bots.actions.{name}"),
                format!(
                    "`{other}` is not one of: allow, allow_verified, signal, tag, challenge, block"
                ),
            ),
        }
    }
    let weight = weight(&b.weight, 20, "bots.weight", c);
    let cache_entries = match &b.cache_entries {
        Some(v) if *v.get_ref() < 16 || *v.get_ref() > 10_000_000 => {
            c.at(
                sp(v),
                "bots.cache_entries",
                "must be between 16 and 10000000",
            );
            10_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 10_000,
    };
    let mut verified = Vec::new();
    // The built-in crawlers, unless the config names one itself.
    if b.verify_builtin != Some(false) {
        for bot in palisade_intel::verify::BUILTIN {
            if b.verify.iter().any(|v| v.name.get_ref() == bot.name) {
                continue;
            }
            let mut ranges = Vec::new();
            match b.ranges.get(bot.name).map(|r| (r, r.get_ref())) {
                Some((r, RawRangesSource::File(name))) => {
                    let file = base.join(name.strip_prefix("file:").unwrap_or(name));
                    match std::fs::read_to_string(&file) {
                        Ok(text) => match palisade_intel::verify::parse_ranges(&text) {
                            Ok(rs) => {
                                files.push(file);
                                ranges = rs;
                            }
                            Err(e) => c.at(
                                sp(r),
                                format!("bots.ranges.{}", bot.name),
                                format!("`{}`: {e}", file.display()),
                            ),
                        },
                        Err(e) => c.at(
                            sp(r),
                            format!("bots.ranges.{}", bot.name),
                            format!("cannot read `{}`: {e}", file.display()),
                        ),
                    }
                }
                Some((_, RawRangesSource::Fetched(f))) => {
                    if let Some(rf) = range_fetch(bot, f, c) {
                        fetch.push(rf);
                    }
                }
                None => {}
            }
            let rdns = bot.rdns.iter().map(|d| (*d).to_owned()).collect();
            if let Ok(vb) =
                palisade_intel::verify::VerifiedBot::new(bot.name, bot.claims, ranges, rdns)
            {
                verified.push(Arc::new(vb));
            }
        }
    }
    for (name, source) in &b.ranges {
        let span = sp(source);
        if b.verify.iter().any(|v| v.name.get_ref() == name) {
            c.at(
                span.clone(),
                format!("bots.ranges.{name}"),
                format!("[[bots.verify]] names `{name}` itself: give its ranges there"),
            );
        } else if b.verify_builtin == Some(false) {
            c.at(
                span.clone(),
                format!("bots.ranges.{name}"),
                "verify_builtin = false: the built-in bots are not verified, so their ranges are unused",
            );
        }
        if !palisade_intel::verify::BUILTIN
            .iter()
            .any(|x| x.name == name)
        {
            let known: Vec<&str> = palisade_intel::verify::BUILTIN
                .iter()
                .map(|x| x.name)
                .collect();
            c.at(
                span,
                format!("bots.ranges.{name}"),
                format!(
                    "no built-in bot `{name}` (known: {}); give your own as [[bots.verify]]",
                    known.join(", ")
                ),
            );
        }
    }
    for (i, v) in b.verify.iter().enumerate() {
        let path = format!("bots.verify[{i}]");
        let mut ranges = Vec::new();
        for r in &v.ranges {
            let file = base.join(r.get_ref().strip_prefix("file:").unwrap_or(r.get_ref()));
            match std::fs::read_to_string(&file) {
                Ok(text) => match palisade_intel::verify::parse_ranges(&text) {
                    Ok(mut rs) => {
                        files.push(file);
                        ranges.append(&mut rs);
                    }
                    Err(e) => c.at(
                        sp(r),
                        format!("{path}.ranges"),
                        format!("`{}`: {e}", file.display()),
                    ),
                },
                Err(e) => c.at(
                    sp(r),
                    format!("{path}.ranges"),
                    format!("cannot read `{}`: {e}", file.display()),
                ),
            }
        }
        if v.ranges.is_empty() && v.rdns.is_empty() {
            c.at(
                sp(&v.name),
                &path,
                "a verified bot needs ranges, rdns domains or both",
            );
        }
        match palisade_intel::verify::VerifiedBot::new(
            v.name.get_ref(),
            v.claims.get_ref(),
            ranges,
            v.rdns.clone(),
        ) {
            Ok(vb) => verified.push(Arc::new(vb)),
            Err(e) => c.at(sp(&v.claims), format!("{path}.claims"), e),
        }
    }
    let outcome =
        |v: &Option<Spanned<String>>, dflt: BotAction, field: &str, c: &mut Collector<'_>| {
            choice(
                v,
                &[
                    ("allow", BotAction::Allow),
                    ("signal", BotAction::Signal),
                    ("challenge", BotAction::Challenge),
                    ("block", BotAction::Block),
                ],
                dflt,
                &format!("bots.{field}"),
                c,
            )
        };
    let on_pending = outcome(&b.pending, BotAction::Allow, "pending", c);
    let on_spoofed = outcome(&b.spoofed, BotAction::Block, "spoofed", c);
    let mut dns_servers = Vec::new();
    for d in &b.dns_servers {
        match d.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => dns_servers.push(a),
            Err(_) => c.at(
                sp(d),
                "bots.dns_servers",
                format!("`{}` is not ip:port", d.get_ref()),
            ),
        }
    }
    let Some(catalog) = builtin_catalog() else {
        c.at(
            None,
            "bots",
            "the built-in bot catalog failed to compile (a bug; please report it)",
        );
        return None;
    };
    Some(BotsPolicy {
        catalog,
        actions,
        weight,
        cache_entries,
        verified,
        on_pending,
        on_spoofed,
        dns_servers,
    })
}

/// A built-in bot's ranges to fetch: the given URL or the operator's, every `refresh`.
fn range_fetch(
    bot: &palisade_intel::verify::BuiltinBot,
    f: &RawRangesFetch,
    c: &mut Collector<'_>,
) -> Option<RangeFetch> {
    let path = format!("bots.ranges.{}", bot.name);
    let refresh = match &f.refresh {
        Some(r) => match palisade_engine::units::parse_duration(r.get_ref()) {
            Ok(ns) if ns >= palisade_engine::clock::SECOND => ns,
            Ok(_) => {
                c.at(sp(r), format!("{path}.refresh"), "must be at least 1s");
                return None;
            }
            Err(e) => {
                c.at(sp(r), format!("{path}.refresh"), e.to_string());
                return None;
            }
        },
        None => 24 * 3600 * palisade_engine::clock::SECOND,
    };
    let (text, span) = match (&f.url, bot.ranges_url) {
        (Some(u), _) => (u.get_ref().as_str(), sp(u)),
        (None, Some(u)) => (u, None),
        (None, None) => {
            c.at(
                f.refresh.as_ref().and_then(sp),
                format!("{path}.url"),
                format!(
                    "{} publishes no ranges document that Palisade knows of: give its `url`",
                    bot.name
                ),
            );
            return None;
        }
    };
    match text.parse::<http::Uri>() {
        Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() => {
            Some(RangeFetch {
                bot: bot.name.to_owned(),
                url,
                refresh,
            })
        }
        _ => {
            c.at(
                span,
                format!("{path}.url"),
                format!("`{text}` is not an http:// or https:// URL"),
            );
            None
        }
    }
}
