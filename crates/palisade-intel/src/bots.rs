//! The bot catalog: automated clients by user agent, by category.
//!
//! Three layers, first match wins:
//! 1. the named catalog (`data/bots.txt`, ours; `data/ai-robots.txt`, derived from
//!    ai.robots.txt, MIT) — a category and a name;
//! 2. generic signs of automation that no person's browser shows (the words bot, crawler,
//!    spider; a URL or an e-mail address in the user agent; a bare `name/version` with no
//!    platform) — category `other`;
//! 3. otherwise `human`; an empty user agent is its own category.
//!
//! Patterns are compiled once into [`regex::RegexSet`]s; classification is one pass of each
//! set over at most [`MAX_UA_LEN`] bytes.

use std::fmt;
use std::sync::Arc;

use regex::{RegexSet, RegexSetBuilder};

/// User agents are classified on their first this-many bytes.
pub const MAX_UA_LEN: usize = 512;

/// What kind of client a user agent names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Web search engines.
    SearchEngine,
    /// Crawlers feeding AI answer engines.
    AiSearch,
    /// Crawlers collecting AI training data.
    AiTraining,
    /// Fetchers acting for a person's AI assistant or agent.
    AiAssistant,
    /// SEO and marketing tools.
    Seo,
    /// Uptime and performance monitoring, load testing.
    Monitoring,
    /// Feed and podcast readers.
    FeedReader,
    /// Link previews of chat and social apps.
    SocialPreview,
    /// Archivers and site copiers.
    Archiver,
    /// HTTP libraries and command-line clients.
    HttpLibrary,
    /// Headless browsers and browser automation.
    HeadlessBrowser,
    /// Vulnerability scanners and attack tools.
    Scanner,
    /// Other automated clients (generic signs of automation).
    Other,
    /// No user agent at all.
    Empty,
    /// What looks like a person's browser or app.
    Human,
}

impl Category {
    /// Every category, in config order.
    pub const ALL: [Category; 15] = [
        Category::SearchEngine,
        Category::AiSearch,
        Category::AiTraining,
        Category::AiAssistant,
        Category::Seo,
        Category::Monitoring,
        Category::FeedReader,
        Category::SocialPreview,
        Category::Archiver,
        Category::HttpLibrary,
        Category::HeadlessBrowser,
        Category::Scanner,
        Category::Other,
        Category::Empty,
        Category::Human,
    ];

    /// The name used in config, logs and `palisade bots classify`.
    pub fn name(&self) -> &'static str {
        match self {
            Category::SearchEngine => "search_engine",
            Category::AiSearch => "ai_search",
            Category::AiTraining => "ai_training",
            Category::AiAssistant => "ai_assistant",
            Category::Seo => "seo",
            Category::Monitoring => "monitoring",
            Category::FeedReader => "feed_reader",
            Category::SocialPreview => "social_preview",
            Category::Archiver => "archiver",
            Category::HttpLibrary => "http_library",
            Category::HeadlessBrowser => "headless_browser",
            Category::Scanner => "scanner",
            Category::Other => "other",
            Category::Empty => "empty",
            Category::Human => "human",
        }
    }

    /// Parses a category name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether the category is an automated client.
    pub fn is_bot(&self) -> bool {
        *self != Category::Human
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A user agent's classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The category.
    pub category: Category,
    /// The catalog's name for the client, if it named one.
    pub name: Option<Arc<str>>,
}

/// Why catalog data was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A line that is not `category | name | pattern`.
    #[error("{file}:{line}: {message}")]
    Line {
        /// Data file.
        file: &'static str,
        /// Line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The patterns did not compile.
    #[error("bot catalog patterns: {0}")]
    Regex(#[from] regex::Error),
}

/// The catalog shipped in the binary.
pub const BUILTIN: [(&str, &str); 3] = [
    ("bots.txt", include_str!("../data/bots.txt")),
    ("ai-robots.txt", include_str!("../data/ai-robots.txt")),
    (
        "crawler-user-agents.txt",
        include_str!("../data/crawler-user-agents.txt"),
    ),
];

/// Generic signs of automation, checked after the named catalog. Each is something a person's
/// browser does not send.
const GENERIC: &[&str] = &[
    // Self-descriptions.
    r"bot\b|bot[/_;\- ]|robot|crawl|spider|scrap(?:e|er|ing)\b|harvest|extractor|indexer",
    r"(?:^|[^a-z])(?:fetch|fetcher|checker|validator|monitor|archiver|downloader|parser|preview|probe|scan|scanner|grabber|sucker|loader|agent)(?:[/ ;)_\-]|\d|$)",
    // A contact URL or address: crawlers identify their operator, browsers never do.
    r"https?://|www\.[a-z0-9-]+\.[a-z]|\+https?|[a-z0-9._-]+@[a-z0-9-]+\.[a-z]",
    // A bare domain name (a service naming itself), not an app's `name.tld/version`.
    r"(?:^|[\s;(,+])[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|ai|co|de|fr|uk|ru|jp|cn|info|gy|ly|me|us|eu|app|dev|nl|se|pl|cz|it|es|br|in|tv|fm|biz|xyz|edu|gov|observer)(?:$|[\s;),]|/[^0-9])",
    // Malformed or fabricated agents: something glued before `Mozilla/`, a version run into the
    // next product, a programming-language repr, an encoded blob, a few bare characters.
    r"^[^(]{1,40}?[,|]\s*mozilla/|(?-i:\d\.\d+\.\d+\.\d+[A-Z][A-Za-z]+/)|<class |fake_useragent|^[a-z0-9+/=]{40,}$|^[^/ ]{1,11}$",
    // Bare library-style agents: `name/1.2` alone, or with only a library's comment.
    r"^[a-z][a-z0-9._-]*/v?[0-9][0-9a-z.\-]*$",
    r"^[a-z][a-z0-9._ -]*$",
];

/// Tokens that mark an otherwise bare agent as a person's app or browser (checked before the
/// bare-agent rules apply).
const HUMAN_HINTS: &str = r"(?:mozilla/|opera/|dalvik/|cfnetwork/|darwin/|android|iphone|ipad|ios[ /]|windows|macintosh|linux|x11|cros|blackberry|symbian|midp|cldc|nokia|samsung|lynx/|links \(|elinks/|w3m/|ibrowse|voyager|aweb|amiga|netfront|up\.browser|playstation|nintendo|xbox|smart-?tv|tizen|webos|roku|appletv|fban/|fbav/|instagram|musical_ly|bytedancewebview|micromessenger|line/|kakaotalk|whatsapp/\d.*(?:android|ios)|microsoft office|mozacfetch|googleapp/|safari/|applewebkit/)";

/// Tokens of people's devices and apps that look like signs of automation (`CUBOT` phones
/// contain "bot"); removed before the generic rules look.
const NOT_AUTOMATION: &str = r"cubot";

#[derive(Debug, Clone)]
struct Entry {
    category: Category,
    name: Arc<str>,
}

/// A compiled catalog.
#[derive(Debug, Clone)]
pub struct BotCatalog {
    named: RegexSet,
    entries: Vec<Entry>,
    generic: RegexSet,
    bare_rules: usize,
    human_hints: regex::Regex,
    not_automation: regex::Regex,
}

fn parse_lines(
    file: &'static str,
    text: &str,
    patterns: &mut Vec<String>,
    entries: &mut Vec<Entry>,
) -> Result<(), CatalogError> {
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| CatalogError::Line {
            file,
            line: i + 1,
            message,
        };
        let mut parts = line.splitn(3, " | ");
        let (Some(cat), Some(name), Some(pattern)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected `category | name | pattern`".to_owned()));
        };
        let category = Category::parse(cat.trim())
            .ok_or_else(|| err(format!("unknown category `{}`", cat.trim())))?;
        patterns.push(pattern.trim().to_owned());
        entries.push(Entry {
            category,
            name: Arc::from(name.trim()),
        });
    }
    Ok(())
}

impl BotCatalog {
    /// The catalog shipped with Palisade.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::from_sources(&BUILTIN)
    }

    /// A catalog from `(file name, text)` sources, in order.
    pub fn from_sources(sources: &[(&'static str, &str)]) -> Result<Self, CatalogError> {
        let mut patterns = Vec::new();
        let mut entries = Vec::new();
        for (file, text) in sources {
            parse_lines(file, text, &mut patterns, &mut entries)?;
        }
        let build = |p: &[String]| {
            RegexSetBuilder::new(p)
                .case_insensitive(true)
                .size_limit(64 << 20)
                .dfa_size_limit(64 << 20)
                .build()
        };
        let named = build(&patterns)?;
        let generic_patterns: Vec<String> = GENERIC.iter().map(|s| (*s).to_owned()).collect();
        let generic = build(&generic_patterns)?;
        let human_hints = regex::RegexBuilder::new(HUMAN_HINTS)
            .case_insensitive(true)
            .build()?;
        let not_automation = regex::RegexBuilder::new(NOT_AUTOMATION)
            .case_insensitive(true)
            .build()?;
        Ok(Self {
            named,
            entries,
            generic,
            bare_rules: 2,
            human_hints,
            not_automation,
        })
    }

    /// Number of named entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the catalog has no named entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Classifies a user agent.
    pub fn classify(&self, user_agent: &str) -> Classification {
        let ua = user_agent.trim();
        let ua = match ua.char_indices().nth(MAX_UA_LEN) {
            Some((i, _)) => ua.get(..i).unwrap_or(ua),
            None => ua,
        };
        if ua.is_empty() || ua == "-" {
            return Classification {
                category: Category::Empty,
                name: None,
            };
        }
        if let Some(i) = self.named.matches(ua).iter().next()
            && let Some(e) = self.entries.get(i)
        {
            return Classification {
                category: e.category,
                name: Some(e.name.clone()),
            };
        }
        let cleaned = self.not_automation.replace_all(ua, " ");
        let generic = self.generic.matches(&cleaned);
        let strong = generic.iter().any(|i| i < GENERIC.len() - self.bare_rules);
        let bare = generic.iter().any(|i| i >= GENERIC.len() - self.bare_rules);
        if strong || (bare && !self.human_hints.is_match(ua)) {
            return Classification {
                category: Category::Other,
                name: None,
            };
        }
        Classification {
            category: Category::Human,
            name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_compiles_and_names_well_known_clients() {
        let c = BotCatalog::builtin().unwrap();
        assert!(c.len() > 200, "{}", c.len());
        let cases = [
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                "search_engine",
            ),
            (
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
                "ai_training",
            ),
            ("curl/8.5.0", "http_library"),
            ("python-requests/2.31.0", "http_library"),
            ("Go-http-client/1.1", "http_library"),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
                "headless_browser",
            ),
            ("sqlmap/1.7.2#stable (https://sqlmap.org)", "scanner"),
            (
                "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
                "seo",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "human",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                "human",
            ),
            ("", "empty"),
            ("SomeCrawler/1.0", "other"),
        ];
        for (ua, want) in cases {
            assert_eq!(c.classify(ua).category.name(), want, "{ua}");
        }
        assert_eq!(
            c.classify("Mozilla/5.0 (compatible; Googlebot/2.1)")
                .name
                .as_deref(),
            Some("Googlebot")
        );
    }

    #[test]
    fn bad_catalog_lines_are_reported_with_their_place() {
        let err = BotCatalog::from_sources(&[("x.txt", "# c\nsearch_engine | A\n")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.txt:2: expected `category | name | pattern`"
        );
        let err = BotCatalog::from_sources(&[("x.txt", "robots | A | a\n")]).unwrap_err();
        assert!(err.to_string().contains("unknown category `robots`"));
    }

    #[test]
    fn hostile_user_agents_are_bounded() {
        let c = BotCatalog::builtin().unwrap();
        // Only the first MAX_UA_LEN characters are read: what follows cannot change the
        // classification (nor the time it takes).
        let bot = format!("Googlebot/2.1 {}", "a".repeat(100_000));
        let head: String = bot.chars().take(MAX_UA_LEN).collect();
        assert_eq!(c.classify(&bot), c.classify(&head));
        assert_eq!(c.classify(&bot).name.as_deref(), Some("Googlebot"));
        let hidden = format!("{}Googlebot/2.1", "a".repeat(MAX_UA_LEN));
        assert_eq!(c.classify(&hidden), c.classify(&"a".repeat(MAX_UA_LEN)));
        // Control and unusual characters are classified, not refused.
        assert_ne!(c.classify("\u{0}\u{ffff}é").category, Category::Empty);
    }
}
