//! Known clients by fingerprint: which family of client a JA4 or an HTTP/2 fingerprint belongs
//! to, and which browser family a user agent claims — for telling a script in a browser's
//! clothes from the browser.
//!
//! The built-in table is small and conservative: a fingerprint is listed only when it is known
//! to belong to one family. An unknown fingerprint says nothing (no signal), so a new browser
//! release is never taken for a spoof; operators add their own entries from a file.
//!
//! Sources of the built-in entries: JA4 values from FoxIO's `ja4plus-mapping.csv` (FoxIO-LLC/ja4
//! @ 0e54bc8); HTTP/2 fingerprints from the captures of real clients in `shared/testdata/h2`
//! (curl 7.88.1, nghttp2 1.52.0, httpx 0.29.0, Node 20, and curl_cffi 0.17.0 impersonating
//! Chrome, Firefox and Safari, whose HTTP/2 frames match the browsers' published signatures).

use std::collections::HashMap;
use std::sync::Arc;

/// Whether a family is a browser or a library (scripts, tools, bots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A web browser.
    Browser,
    /// An HTTP library or tool.
    Library,
}

/// A known client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Family name: `chromium`, `firefox`, `safari`, `curl`, `python`, `go`, `node`, ...
    pub family: Arc<str>,
    /// Browser or library.
    pub kind: Kind,
}

/// Known fingerprints.
#[derive(Debug, Clone, Default)]
pub struct KnownClients {
    ja4: HashMap<String, Known>,
    h2: HashMap<String, Known>,
}

const BUILTIN_JA4: &[(&str, &str, Kind)] = &[
    (
        "t13d1516h2_8daaf6152771_02713d6af862",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13d1517h2_8daaf6152771_b0da82dd1658",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13d1517h2_8daaf6152771_b1ff8ab2d16f",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13i1515h2_8daaf6152771_02713d6af862",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13i1516h2_8daaf6152771_b0da82dd1658",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13i1516h2_8daaf6152771_b1ff8ab2d16f",
        "chromium",
        Kind::Browser,
    ),
    (
        "t13d1715h2_5b57614c22b0_7121afd63204",
        "firefox",
        Kind::Browser,
    ),
    (
        "t13i1714h2_5b57614c22b0_7121afd63204",
        "firefox",
        Kind::Browser,
    ),
    (
        "t13d2014h2_a09f3c656075_14788d8d241b",
        "safari",
        Kind::Browser,
    ),
    (
        "t13i2013h2_a09f3c656075_14788d8d241b",
        "safari",
        Kind::Browser,
    ),
    (
        "t13i181000_85036bcba153_d41ae481755e",
        "python",
        Kind::Library,
    ),
    (
        "t13d181000_85036bcba153_d41ae481755e",
        "python",
        Kind::Library,
    ),
    (
        "t13d4312h1_c7886603b240_b26ce05bbdd6",
        "python",
        Kind::Library,
    ),
    ("t13d190900_9dc949149365_97f8aa674fd9", "go", Kind::Library),
    ("t13i190800_9dc949149365_97f8aa674fd9", "go", Kind::Library),
    ("t13d191000_9dc949149365_e7c285222651", "go", Kind::Library),
    ("t13d1412h2_e33ad33b3d25_6b314db333b6", "go", Kind::Library),
    ("t12d160700_8cdfa2d4673b_18dd7303c4a5", "go", Kind::Library),
    ("t13d141000_cbb2034c60b8_e7c285222651", "go", Kind::Library),
];

const BUILTIN_H2: &[(&str, &str, Kind)] = &[
    (
        "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p",
        "chromium",
        Kind::Browser,
    ),
    (
        "1:65536;3:1000;4:6291456;6:262144|15663105|0|m,a,s,p",
        "chromium",
        Kind::Browser,
    ),
    (
        "1:65536;2:0;3:1000;4:6291456;6:262144|15663105|0|m,a,s,p",
        "chromium",
        Kind::Browser,
    ),
    (
        "1:65536;2:0;4:131072;5:16384|12517377|0|m,p,a,s",
        "firefox",
        Kind::Browser,
    ),
    (
        "4:4194304;3:100|10485760|0|m,s,p,a",
        "safari",
        Kind::Browser,
    ),
    (
        "2:0;4:4194304;3:100|10485760|0|m,s,p,a",
        "safari",
        Kind::Browser,
    ),
    (
        "2:0;3:100;4:2097152;8:1;9:1|10420225|0|m,s,a,p",
        "safari",
        Kind::Browser,
    ),
    (
        "2:0;3:100;4:2097152;9:1|10420225|0|m,s,a,p",
        "safari",
        Kind::Browser,
    ),
    (
        "3:100;4:33554432;2:0|33488897|0|m,p,s,a",
        "curl",
        Kind::Library,
    ),
    (
        "2:0;4:1073741823|1073676288|0|p,s,a,m",
        "nghttp2",
        Kind::Library,
    ),
    (
        "3:100;4:65535|0|3:0:0:201,5:0:0:101,7:0:0:1,9:0:7:1,11:0:3:1|m,p,s,a",
        "nghttp2",
        Kind::Library,
    ),
    (
        "1:4096;2:0;4:65535;5:16384;3:100;6:65536|16777216|0|m,a,s,p",
        "python",
        Kind::Library,
    ),
    ("|0|0|p,m,a,s", "node", Kind::Library),
];

/// Why a known-clients file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ClientsError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl KnownClients {
    /// The built-in table.
    pub fn builtin() -> Self {
        let mut k = Self::default();
        for (fp, family, kind) in BUILTIN_JA4 {
            k.ja4.insert((*fp).to_owned(), known(family, *kind));
        }
        for (fp, family, kind) in BUILTIN_H2 {
            k.h2.insert((*fp).to_owned(), known(family, *kind));
        }
        k
    }

    /// Adds entries from a file of lines `ja4|h2 <TAB or ,> fingerprint <,> family <,>
    /// browser|library` — the HTTP/2 fingerprint has `,` inside, so fields are read from the
    /// ends: kind first, then the last two fields, and the fingerprint is what lies between.
    /// `#` starts a comment. Entries replace built-in ones with the same fingerprint.
    pub fn extend_from_text(&mut self, text: &str) -> Result<usize, Vec<ClientsError>> {
        let mut errors = Vec::new();
        let mut added = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            let err = |m: &str| ClientsError {
                line: i + 1,
                message: m.to_owned(),
            };
            let Some((table, rest)) = line.split_once(',') else {
                errors.push(err(
                    "expected: ja4|h2, fingerprint, family, browser|library",
                ));
                continue;
            };
            let Some((rest, kind)) = rest.rsplit_once(',') else {
                errors.push(err(
                    "expected: ja4|h2, fingerprint, family, browser|library",
                ));
                continue;
            };
            let Some((fp, family)) = rest.rsplit_once(',') else {
                errors.push(err(
                    "expected: ja4|h2, fingerprint, family, browser|library",
                ));
                continue;
            };
            let (fp, family) = (fp.trim(), family.trim());
            let kind = match kind.trim() {
                "browser" => Kind::Browser,
                "library" => Kind::Library,
                other => {
                    errors.push(err(&format!("`{other}`: expected browser or library")));
                    continue;
                }
            };
            if family.is_empty()
                || family.len() > 64
                || !family
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                errors.push(err("family: 1-64 letters, digits, `-`, `_` or `.`"));
                continue;
            }
            let map = match table.trim() {
                "ja4" => {
                    let parts: Vec<&str> = fp.split('_').collect();
                    if parts.len() != 3 || parts.first().is_none_or(|a| a.len() != 10) {
                        errors.push(err(&format!("`{fp}` is not a JA4 fingerprint")));
                        continue;
                    }
                    &mut self.ja4
                }
                "h2" => {
                    if fp.split('|').count() != 4 {
                        errors.push(err(&format!("`{fp}` is not an HTTP/2 fingerprint")));
                        continue;
                    }
                    &mut self.h2
                }
                other => {
                    errors.push(err(&format!("`{other}`: expected ja4 or h2")));
                    continue;
                }
            };
            map.insert(fp.to_owned(), known(family, kind));
            added += 1;
        }
        if errors.is_empty() {
            Ok(added)
        } else {
            Err(errors)
        }
    }

    /// The client a JA4 belongs to.
    pub fn by_ja4(&self, ja4: &str) -> Option<&Known> {
        self.ja4.get(ja4)
    }

    /// The client an HTTP/2 fingerprint belongs to.
    pub fn by_h2(&self, fp: &str) -> Option<&Known> {
        self.h2.get(fp)
    }

    /// Entries in all.
    pub fn len(&self) -> usize {
        self.ja4.len() + self.h2.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn known(family: &str, kind: Kind) -> Known {
    Known {
        family: Arc::from(family),
        kind,
    }
}

/// The browser family a user agent claims, by the engine whose network stack it would use:
/// `chromium` (Chrome, Edge, Opera, ... on every platform but iOS), `firefox` (but not on iOS),
/// `safari` (Safari, and every browser on iOS, which must use WebKit's). `None` for anything
/// that does not claim a browser.
pub fn claimed_browser(ua: &str) -> Option<&'static str> {
    if !ua.starts_with("Mozilla/5.0 ") {
        return None;
    }
    let ios = ua.contains("iPhone") || ua.contains("iPad") || ua.contains("iPod");
    if ios && ua.contains("AppleWebKit/") {
        return Some("safari");
    }
    if ua.contains("Firefox/") {
        return Some("firefox");
    }
    if ua.contains("Chrome/") || ua.contains("Chromium/") {
        return Some("chromium");
    }
    if ua.contains("Safari/") && ua.contains("Version/") {
        return Some("safari");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0";
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0";
        let safari = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
        let chrome_ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1";
        assert_eq!(claimed_browser(chrome), Some("chromium"));
        assert_eq!(claimed_browser(edge), Some("chromium"));
        assert_eq!(claimed_browser(firefox), Some("firefox"));
        assert_eq!(claimed_browser(safari), Some("safari"));
        assert_eq!(claimed_browser(chrome_ios), Some("safari"));
        assert_eq!(claimed_browser("curl/8.5.0"), None);
        assert_eq!(claimed_browser("python-requests/2.32.3"), None);
        assert_eq!(
            claimed_browser("Mozilla/5.0 (compatible; Googlebot/2.1)"),
            None
        );
    }

    #[test]
    fn builtin_and_file_entries() {
        let mut k = KnownClients::builtin();
        assert_eq!(
            k.by_h2("3:100;4:33554432;2:0|33488897|0|m,p,s,a")
                .map(|c| (&*c.family, c.kind)),
            Some(("curl", Kind::Library))
        );
        assert!(k.by_ja4("t13d0000h2_000000000000_000000000000").is_none());
        let added = k
            .extend_from_text(
                "# ours\nja4, t13d1516h2_8daaf6152771_aaaaaaaaaaaa, our-app, library\n\
                 h2, 1:1;2:0|0|0|m,a,s,p, our-app, library\n",
            )
            .unwrap_or(0);
        assert_eq!(added, 2);
        assert_eq!(
            k.by_h2("1:1;2:0|0|0|m,a,s,p").map(|c| &*c.family),
            Some("our-app")
        );
        let errs = k
            .extend_from_text(
                "ja4, nope, x, library\nh2, 1:1|0|0|m, y, robot\nsmtp, a, b, library\n",
            )
            .err()
            .unwrap_or_default();
        assert_eq!(
            errs.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
