//! Bot catalog conformance, measured the way operators see it: `palisade bots classify` over
//! the third-party corpora in shared/testdata/ua:
//! - monperrus/crawler-user-agents @ 7c7f9f2: every instance must be classified as a bot;
//! - omrilotan/isbot @ 344052d `crawlers.yml`: at least 99% as bots;
//! - isbot `browsers.yml`: at most 0.5% as bots. Nine strings in browsers.yml are listed,
//!   verbatim, as crawler instances in crawler-user-agents (which must be 100% bots); they
//!   cannot be both, so the bound is checked on the rest and the raw figure is printed too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

fn testdata() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("PALISADE_TESTDATA_DIR"))
}

/// `palisade bots classify` on these user agents: (category, name) per line.
fn classify(uas: &[String]) -> Vec<(String, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["bots", "classify"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for ua in uas {
        input.push_str(&ua.replace(['\n', '\r'], " "));
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(rows.len(), uas.len(), "one line out per line in");
    rows
}

/// The values of isbot's fixture files: `name:` keys with `  - ua` items (some quoted).
fn isbot_list(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(testdata().join("ua/isbot").join(file)).unwrap();
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .map(|v| {
            let v = v.trim();
            if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                serde_json::from_str::<String>(v).unwrap_or_else(|_| v[1..v.len() - 1].to_owned())
            } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
                v[1..v.len() - 1].replace("''", "'")
            } else {
                v.to_owned()
            }
        })
        .collect()
}

fn crawler_instances() -> Vec<String> {
    let text = std::fs::read_to_string(testdata().join("ua/crawler-user-agents.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| i.as_str().unwrap().to_owned())
        .collect()
}

fn bots(rows: &[(String, String)]) -> usize {
    rows.iter().filter(|(c, _)| c != "human").count()
}

#[test]
#[cfg_attr(
    not(palisade_testdata),
    ignore = "shared testdata not found: bot catalog conformance skipped"
)]
fn bot_catalog_conformance() {
    let crawlers = crawler_instances();
    let rows = classify(&crawlers);
    let missed: Vec<&String> = crawlers
        .iter()
        .zip(&rows)
        .filter(|(_, (c, _))| c == "human")
        .map(|(u, _)| u)
        .collect();
    println!(
        "crawler-user-agents: {}/{} instances classified as bots",
        crawlers.len() - missed.len(),
        crawlers.len()
    );
    assert!(missed.is_empty(), "not classified as bots: {missed:#?}");

    let isbot_crawlers = isbot_list("crawlers.yml");
    assert!(isbot_crawlers.len() > 600, "{}", isbot_crawlers.len());
    let rows = classify(&isbot_crawlers);
    let recall = bots(&rows) as f64 / rows.len() as f64;
    println!(
        "isbot crawlers.yml: {}/{} as bots ({:.2}%)",
        bots(&rows),
        rows.len(),
        recall * 100.0
    );
    assert!(recall >= 0.99);

    let browsers = isbot_list("browsers.yml");
    assert!(browsers.len() > 500, "{}", browsers.len());
    let listed_as_crawlers: HashSet<&String> = crawlers.iter().chain(&isbot_crawlers).collect();
    let rows = classify(&browsers);
    let (conflicting, clean): (Vec<_>, Vec<_>) = browsers
        .iter()
        .zip(&rows)
        .partition(|(ua, _)| listed_as_crawlers.contains(ua));
    let fp_clean = clean.iter().filter(|(_, (c, _))| c != "human").count();
    let rate = fp_clean as f64 / clean.len() as f64;
    println!(
        "isbot browsers.yml: {}/{} as bots ({:.2}%) raw; {}/{} ({:.2}%) without the {} strings also listed as crawlers",
        bots(&rows),
        rows.len(),
        bots(&rows) as f64 * 100.0 / rows.len() as f64,
        fp_clean,
        clean.len(),
        rate * 100.0,
        conflicting.len()
    );
    assert_eq!(
        conflicting.len(),
        9,
        "the corpora's overlap changed; recheck the bound"
    );
    assert!(rate <= 0.005, "false positives: {fp_clean}");
}

#[test]
fn classify_prints_one_line_per_user_agent() {
    let rows = classify(&[
        "curl/8.5.0".to_owned(),
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)".to_owned(),
        String::new(),
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36".to_owned(),
    ]);
    assert_eq!(
        rows,
        [
            ("http_library".to_owned(), "curl".to_owned()),
            ("search_engine".to_owned(), "Googlebot".to_owned()),
            ("empty".to_owned(), "-".to_owned()),
            ("human".to_owned(), "-".to_owned()),
        ]
    );
}

/// Google's published crawler ranges (shared/testdata/goodbots, via jonhadfield/cloud-ips) load
/// in the format `[[bots.verify]] ranges` reads, and Google's documented example crawler address
/// (66.249.66.1, crawl-66-249-66-1.googlebot.com) is in them.
#[test]
#[cfg_attr(
    not(palisade_testdata),
    ignore = "shared testdata not found: published bot ranges check skipped"
)]
fn published_googlebot_ranges_load() {
    use palisade_intel::verify::{VerifiedBot, VerifyStatus, parse_ranges};
    let dir = testdata().join("goodbots");
    let mut total = 0;
    for f in [
        "googlebot.json",
        "googlesc.json",
        "user-triggered-fetchers.json",
    ] {
        let ranges = parse_ranges(&std::fs::read_to_string(dir.join(f)).unwrap())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!ranges.is_empty(), "{f}");
        total += ranges.len();
    }
    let g = parse_ranges(&std::fs::read_to_string(dir.join("googlebot.json")).unwrap()).unwrap();
    let bot = VerifiedBot::new("googlebot", "googlebot", g, vec![]).unwrap();
    assert_eq!(
        bot.check_without_dns("66.249.66.1".parse().unwrap()),
        Some(VerifyStatus::Verified)
    );
    assert_eq!(
        bot.check_without_dns("203.0.113.1".parse().unwrap()),
        Some(VerifyStatus::Spoofed)
    );
    println!("published ranges: {total} prefixes");
}
