//! `[intel]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::*;
use crate::error::Collector;
use crate::raw::*;

pub(super) fn compile_intel(
    raw: &RawIntel,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> IntelPolicy {
    let mut db = IpIntel::new();
    let mut read =
        |s: &Spanned<String>, path: &str, c: &mut Collector<'_>| -> Option<(String, String)> {
            let name = s.get_ref().strip_prefix("file:").unwrap_or(s.get_ref());
            let file = base.join(name);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    files.push(file.clone());
                    Some((file.display().to_string(), text))
                }
                Err(e) => {
                    c.at(
                        sp(s),
                        path,
                        format!("cannot read `{}`: {e}", file.display()),
                    );
                    None
                }
            }
        };
    let report = |s: &Spanned<String>,
                  path: &str,
                  errs: Vec<palisade_intel::ipinfo::DataError>,
                  c: &mut Collector<'_>| {
        for e in errs {
            c.at(sp(s), path, e.to_string());
        }
    };
    if let Some(f) = &raw.asn_db
        && let Some((name, text)) = read(f, "intel.asn_db", c)
        && let Err(errs) = db.load_iptoasn(&name, &text)
    {
        report(f, "intel.asn_db", errs, c);
    }
    match &raw.asn_categories {
        None => {
            let _ = db.load_categories("builtin", BUILTIN_ASN_CATEGORIES);
        }
        Some(list) => {
            for f in list {
                if f.get_ref() == "builtin" {
                    let _ = db.load_categories("builtin", BUILTIN_ASN_CATEGORIES);
                } else if let Some((name, text)) = read(f, "intel.asn_categories", c)
                    && let Err(errs) = db.load_categories(&name, &text)
                {
                    report(f, "intel.asn_categories", errs, c);
                }
            }
        }
    }
    if let Some(f) = &raw.tor_exits
        && let Some((name, text)) = read(f, "intel.tor_exits", c)
        && let Err(errs) = db.load_tor_exits(&name, &text)
    {
        report(f, "intel.tor_exits", errs, c);
    }
    for f in raw.mmdb.iter().flatten() {
        let name = f.get_ref().strip_prefix("file:").unwrap_or(f.get_ref());
        let file = base.join(name);
        match std::fs::read(&file) {
            Ok(bytes) => {
                files.push(file.clone());
                if let Err(e) = db.load_mmdb(&file.display().to_string(), bytes) {
                    c.at(sp(f), "intel.mmdb", e);
                }
            }
            Err(e) => c.at(
                sp(f),
                "intel.mmdb",
                format!("cannot read `{}`: {e}", file.display()),
            ),
        }
    }
    let mut category_weights = [20u8, 20, 0, 0];
    let mut tor_weight = 40u8;
    for (k, v) in &raw.weights {
        let w = match u8::try_from(*v.get_ref()) {
            Ok(w) if w <= 100 => w,
            _ => {
                c.at(
                    sp(v),
                    format!("intel.weights.{k}"),
                    "weight must be between 0 and 100",
                );
                continue;
            }
        };
        match k.as_str() {
            "hosting" => category_weights[0] = w,
            "vpn" => category_weights[1] = w,
            "mobile" => category_weights[2] = w,
            "residential" => category_weights[3] = w,
            "tor" => tor_weight = w,
            other => c.at(
                sp(v),
                format!("intel.weights.{other}"),
                format!("`{other}` is not one of: hosting, vpn, mobile, residential, tor"),
            ),
        }
    }
    IntelPolicy {
        db: Arc::new(db),
        category_weights,
        tor_weight,
    }
}
