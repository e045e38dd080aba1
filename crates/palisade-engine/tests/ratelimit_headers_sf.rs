//! The RateLimit header fields we emit must be valid RFC 9651 Lists, exactly as in
//! draft-ietf-httpapi-ratelimit-headers-10. The parser we check them with (`sfv`) is itself
//! first run against the httpwg structured-field test suite (shared/testdata/ratelimit/
//! structured-field-tests, httpwg/structured-field-tests @ 1e280c3), so the check means
//! something.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::sync::Arc;

use palisade_engine::model::decision::LimitOutcome;
use palisade_engine::model::header_item::HeaderItem;
use palisade_engine::ratelimit_headers::render;
use palisade_engine::state::limiter::{Unit, Verdict};
use proptest::prelude::*;
use sfv::{BareItem, Dictionary, FieldType, Item, List, ListEntry, Parser};

fn outcome(
    name: &str,
    quota: u64,
    window: u64,
    remaining: u64,
    reset_ns: u64,
    unit: Unit,
) -> LimitOutcome {
    LimitOutcome {
        index: 0,
        name: Arc::from(name),
        key: 0,
        charged: 1,
        verdict: Verdict {
            allowed: remaining > 0,
            remaining,
            reset: reset_ns,
            retry_after: 0,
        },
        shadow: false,
        quota,
        window_secs: window,
        unit,
        headers: true,
        shared: None,
    }
}

fn int_param(item: &Item, key: &str) -> Option<i64> {
    item.params
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .and_then(|(_, v)| v.as_integer())
        .map(i64::from)
}

fn sf_items(field: &str) -> Vec<Item> {
    let list: List = Parser::new(field)
        .parse()
        .unwrap_or_else(|e| panic!("not an SF List: {field}: {e}"));
    list.into_iter()
        .map(|e| match e {
            ListEntry::Item(i) => i,
            ListEntry::InnerList(_) => panic!("inner list in {field}"),
        })
        .collect()
}

#[test]
fn policy_and_ratelimit_fields_parse_as_lists_with_draft_parameters() {
    let mut outs = vec![
        outcome("per-ip", 100, 10, 42, 1_500_000_000, Unit::Requests),
        outcome("login", 5, 60, 0, 60_000_000_000, Unit::Requests),
        outcome("tokens", 2000, 60, 1850, 4_000_000_000, Unit::Cost),
    ];
    for (i, o) in outs.iter_mut().enumerate() {
        o.index = i;
    }
    let h = render(&outs, &items(&outs)).unwrap();
    assert_eq!(
        h.policy,
        r#""per-ip";q=100;w=10, "login";q=5;w=60, "tokens";q=2000;w=60;palisade-unit="cost""#
    );
    assert_eq!(
        h.ratelimit,
        r#""per-ip";r=42;t=2, "login";r=0;t=60, "tokens";r=1850;t=4"#
    );

    let policy = sf_items(&h.policy);
    let limits = sf_items(&h.ratelimit);
    assert_eq!(policy.len(), 3);
    for (p, l) in policy.iter().zip(&limits) {
        // Each item's bare item is the policy name as an sf-string, the same in both fields.
        assert!(matches!(p.bare_item, BareItem::String(_)));
        assert_eq!(p.bare_item, l.bare_item);
        assert!(
            int_param(p, "q").is_some_and(|q| q >= 0),
            "q is a non-negative Integer"
        );
        assert!(
            int_param(p, "w").is_some_and(|w| w > 0),
            "w is a positive Integer"
        );
        assert!(
            int_param(l, "r").is_some_and(|r| r >= 0),
            "r is a non-negative Integer"
        );
        assert!(
            int_param(l, "t").is_some_and(|t| t >= 0),
            "t is a non-negative Integer"
        );
    }
    // The X- trio describes the tightest limit.
    assert_eq!((h.x_limit, h.x_remaining, h.x_reset), (5, 0, 60));
}

#[test]
fn no_advertised_limit_means_no_headers() {
    let mut o = outcome("hidden", 1, 1, 0, 0, Unit::Requests);
    o.headers = false;
    let outs = [o];
    assert!(render(&outs, &items(&outs)).is_none());
}

proptest! {
    #[test]
    fn any_config_name_and_values_stay_valid(
        names in proptest::collection::vec("[A-Za-z0-9_.-]{1,64}", 1..6),
        q in 0u64..1_000_000_000_000_000,
        r in 0u64..1_000_000_000_000_000,
        t in 0u64..u64::MAX / 2,
    ) {
        let outs: Vec<_> = names.iter().enumerate().map(|(i, n)| {
            let mut o = outcome(n, q, 3600, r, t, Unit::Requests);
            o.index = i;
            o
        }).collect();
        let h = render(&outs, &items(&outs)).unwrap();
        prop_assert_eq!(sf_items(&h.policy).len(), names.len());
        prop_assert_eq!(sf_items(&h.ratelimit).len(), names.len());
    }
}

#[cfg_attr(
    not(palisade_testdata),
    ignore = "shared testdata not found: structured-field suite skipped"
)]
#[test]
fn sfv_passes_the_structured_field_suite() {
    let dir = std::path::Path::new(env!("PALISADE_TESTDATA_DIR"))
        .join("ratelimit/structured-field-tests");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for case in cases.as_array().unwrap() {
            let name = case["name"].as_str().unwrap_or("?");
            let raw: Vec<&str> = case["raw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let input = raw.join(", ");
            let must_fail = case["must_fail"].as_bool().unwrap_or(false);
            let can_fail = case["can_fail"].as_bool().unwrap_or(false);
            let canonical: Option<String> = match case.get("canonical") {
                Some(c) => {
                    let parts: Vec<&str> = c
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    Some(parts.join(", "))
                }
                None => None,
            };
            let result: Result<Option<String>, String> = match case["header_type"].as_str().unwrap()
            {
                "list" => List::parse(Parser::new(&input))
                    .map(|v| FieldType::serialize(&v))
                    .map_err(|e| e.to_string()),
                "dictionary" => Dictionary::parse(Parser::new(&input))
                    .map(|v| FieldType::serialize(&v))
                    .map_err(|e| e.to_string()),
                "item" => Item::parse(Parser::new(&input))
                    .map(|v| Some(FieldType::serialize(&v)))
                    .map_err(|e| e.to_string()),
                other => panic!("unknown header_type {other}"),
            };
            checked += 1;
            let file = path.file_name().unwrap().to_string_lossy();
            match (result, must_fail) {
                (Ok(_), true) => failures.push(format!("{file}: {name}: parsed but must fail")),
                (Err(e), false) if !can_fail => {
                    failures.push(format!("{file}: {name}: failed: {e}"))
                }
                (Ok(ser), false) => {
                    let want = canonical.unwrap_or_else(|| input.clone());
                    let got = ser.unwrap_or_default();
                    if got != want {
                        failures.push(format!(
                            "{file}: {name}: serialised {got:?}, canonical {want:?}"
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    println!(
        "structured-field suite: {checked} cases, {} failures",
        failures.len()
    );
    assert!(
        checked > 1000,
        "the suite should have well over 1000 cases, saw {checked}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Header items for outcomes, indexed as the outcomes are.
fn items(outcomes: &[LimitOutcome]) -> Vec<HeaderItem> {
    outcomes
        .iter()
        .map(|o| HeaderItem::for_limit(&o.name, o.quota, o.window_secs, o.unit == Unit::Cost))
        .collect()
}
