//! Header consistency: a user agent that claims a browser, with headers that browser would not
//! send that way. Each finding is a named, weighted signal, never a verdict on its own.
//!
//! Browsers send client hints (`Sec-CH-UA`, Chromium 89+) and fetch metadata (`Sec-Fetch-*`,
//! Chromium 76+, Firefox 90+) only to secure origins, so those two checks apply only when the
//! request reached the site over HTTPS (`secure`). What the gateway sees behind a TLS terminator
//! is exactly that.

/// One contradiction between a user agent and its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inconsistency {
    /// Chromium 89+ without `Sec-CH-UA`.
    ChromiumWithoutClientHints,
    /// A modern Chromium or Firefox without `Sec-Fetch-Mode`.
    BrowserWithoutFetchMetadata,
    /// A browser without `Accept-Language`.
    BrowserWithoutAcceptLanguage,
    /// A browser user agent over the header set of an HTTP library (no `Accept`, or nothing
    /// beyond what libraries send).
    BrowserWithLibraryHeaders,
    /// A bare, generic user agent such as `Mozilla/5.0`.
    GenericUserAgent,
}

impl Inconsistency {
    /// Every kind, in config order.
    pub const ALL: [Inconsistency; 5] = [
        Inconsistency::ChromiumWithoutClientHints,
        Inconsistency::BrowserWithoutFetchMetadata,
        Inconsistency::BrowserWithoutAcceptLanguage,
        Inconsistency::BrowserWithLibraryHeaders,
        Inconsistency::GenericUserAgent,
    ];

    /// The signal name (after `headers/`).
    pub fn name(&self) -> &'static str {
        match self {
            Inconsistency::ChromiumWithoutClientHints => "chromium_without_client_hints",
            Inconsistency::BrowserWithoutFetchMetadata => "browser_without_fetch_metadata",
            Inconsistency::BrowserWithoutAcceptLanguage => "browser_without_accept_language",
            Inconsistency::BrowserWithLibraryHeaders => "browser_with_library_headers",
            Inconsistency::GenericUserAgent => "generic_user_agent",
        }
    }
}

/// Headers an HTTP library sends by itself; a browser always sends more.
const LIBRARY_HEADERS: [&str; 8] = [
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "content-type",
    "authorization",
];

fn major_after(ua: &str, token: &str) -> Option<u32> {
    let i = ua.find(token)? + token.len();
    let digits: String = ua
        .get(i..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .take(4)
        .collect();
    digits.parse().ok()
}

/// What a user agent claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    chromium: Option<u32>,
    firefox: Option<u32>,
    browser: bool,
}

fn claim(ua: &str) -> Claim {
    let chromium = major_after(ua, "Chrome/").or_else(|| major_after(ua, "Chromium/"));
    let firefox = major_after(ua, "Firefox/");
    let safari = ua.contains("Safari/") && ua.contains("Version/");
    Claim {
        chromium,
        firefox,
        browser: ua.starts_with("Mozilla/5.0 (")
            && (chromium.is_some() || firefox.is_some() || safari),
    }
}

/// Checks a request that the bot catalog took for a person's browser. `headers` are
/// (lowercase name, value); `secure` says whether the request reached the site over HTTPS.
pub fn check<'a>(
    user_agent: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    secure: bool,
) -> Vec<Inconsistency> {
    let mut out = Vec::new();
    let ua = user_agent.trim();
    let generic = matches!(
        ua,
        "Mozilla/5.0" | "Mozilla/4.0" | "Mozilla/5.0 (compatible)" | "Mozilla/4.0 (compatible)"
    ) || (ua.starts_with("Mozilla/") && ua.len() < 20);
    if generic {
        out.push(Inconsistency::GenericUserAgent);
        return out;
    }
    let c = claim(ua);
    if !c.browser {
        return out;
    }
    let has = |name: &str| headers.clone().into_iter().any(|(n, _)| n == name);
    if secure && c.chromium.is_some_and(|v| v >= 89) && !has("sec-ch-ua") {
        out.push(Inconsistency::ChromiumWithoutClientHints);
    }
    if secure
        && (c.chromium.is_some_and(|v| v >= 80) || c.firefox.is_some_and(|v| v >= 90))
        && !has("sec-fetch-mode")
    {
        out.push(Inconsistency::BrowserWithoutFetchMetadata);
    }
    if !has("accept-language") {
        out.push(Inconsistency::BrowserWithoutAcceptLanguage);
    }
    let only_library = headers
        .clone()
        .into_iter()
        .all(|(n, _)| LIBRARY_HEADERS.contains(&n) || n.starts_with("x-") || n == "cookie");
    if !has("accept") || only_library {
        out.push(Inconsistency::BrowserWithLibraryHeaders);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

    fn h<'a>(list: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        list.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn a_real_chrome_request_is_consistent() {
        let headers = [
            ("host", "api.example.com"),
            ("sec-ch-ua", "\"Chromium\";v=\"124\""),
            ("sec-ch-ua-mobile", "?0"),
            ("user-agent", CHROME),
            ("accept", "text/html"),
            ("sec-fetch-mode", "navigate"),
            ("accept-language", "en-US,en;q=0.9"),
        ];
        assert!(check(CHROME, h(&headers), true).is_empty());
    }

    #[test]
    fn a_library_claiming_chrome_is_caught() {
        let headers = [
            ("host", "api.example.com"),
            ("user-agent", CHROME),
            ("accept-encoding", "gzip"),
        ];
        let found = check(CHROME, h(&headers), true);
        assert_eq!(
            found,
            [
                Inconsistency::ChromiumWithoutClientHints,
                Inconsistency::BrowserWithoutFetchMetadata,
                Inconsistency::BrowserWithoutAcceptLanguage,
                Inconsistency::BrowserWithLibraryHeaders,
            ]
        );
        // Over plain HTTP a real Chrome sends neither client hints nor fetch metadata.
        let found = check(CHROME, h(&headers), false);
        assert!(!found.contains(&Inconsistency::ChromiumWithoutClientHints));
        assert!(!found.contains(&Inconsistency::BrowserWithoutFetchMetadata));
    }

    #[test]
    fn generic_and_non_browser_agents() {
        assert_eq!(
            check("Mozilla/5.0", h(&[]), true),
            [Inconsistency::GenericUserAgent]
        );
        assert!(check("MyApp/1.0 (iOS)", h(&[]), true).is_empty());
    }
}
