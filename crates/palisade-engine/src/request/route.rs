//! Routes: which configured route a request belongs to. First match wins; a request that matches
//! nothing belongs to the default route.
//!
//! Matching looks at a normalised view of the path (repeated slashes merged, `.` and `..`
//! segments resolved, percent-encoded bytes other than `/` decoded), so `/api//login`,
//! `/api/./login` and `/api/%6cogin` cannot dodge the policy of `/api/login`; the gateway
//! forwards the canonical path it judged ([`crate::request::path`]).
//!
//! Two rules follow upstream routers that are more lenient than an exact match, so that what
//! they would route to a handler gets that handler's policy:
//! - patterns compiled with [`PathPattern::fold_case`] match without regard to ASCII case
//!   (Express, ASP.NET and others route `/API/Login` to `/api/login`);
//! - a literal last segment without a dot also matches with any `.suffix` (`/api/export`
//!   matches `/api/export.json`, as Spring's suffix pattern matching routes it).

use std::borrow::Cow;

use http::Method;

/// Index of a route in the [`RouteTable`]; the default route has the last index.
pub type RouteId = usize;

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Wildcard,
}

/// A compiled path pattern: exact segments, `{param}` segments and an optional trailing `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    source: String,
    /// Literals compare without regard to ASCII case.
    fold_case: bool,
}

/// Why a path pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Patterns are absolute.
    #[error("path pattern must start with '/'")]
    NotAbsolute,
    /// `*` is only allowed as the whole last segment.
    #[error("'*' is only allowed as the last segment, as in \"/api/*\"")]
    MisplacedWildcard,
    /// A `{` without a matching `}` or with text around it.
    #[error("a parameter must be a whole segment, as in \"/items/{{id}}\"")]
    BadParam,
}

impl PathPattern {
    /// Parses a pattern such as `/api/items/{id}` or `/static/*`.
    pub fn parse(src: &str) -> Result<Self, PatternError> {
        let rest = src.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            let last = parts.len() - 1;
            for (i, part) in parts.into_iter().enumerate() {
                let seg = if part == "*" {
                    if i != last {
                        return Err(PatternError::MisplacedWildcard);
                    }
                    Segment::Wildcard
                } else if part.contains('*') {
                    return Err(PatternError::MisplacedWildcard);
                } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                    let inner = part.get(1..part.len() - 1).unwrap_or_default();
                    if inner.contains(['{', '}']) {
                        return Err(PatternError::BadParam);
                    }
                    Segment::Param
                } else if part.contains(['{', '}']) {
                    return Err(PatternError::BadParam);
                } else {
                    Segment::Literal(percent_decode_segment(part))
                };
                segments.push(seg);
            }
        }
        Ok(Self {
            segments,
            source: src.to_owned(),
            fold_case: false,
        })
    }

    /// The same pattern, matching without regard to ASCII case.
    pub fn fold_case(mut self) -> Self {
        self.fold_case = true;
        self
    }

    /// `/*`: matches every path.
    pub fn catch_all() -> Self {
        Self {
            segments: vec![Segment::Wildcard],
            source: "/*".to_owned(),
            fold_case: false,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether a raw request path matches (normalised first, as for routes).
    pub fn matches_path(&self, path: &str) -> bool {
        self.matches_normalized(&normalize_for_match(path))
    }

    /// Whether a path already normalised with [`normalize_for_match`] matches (for several
    /// patterns against one path: normalised once).
    pub fn matches_normalized(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path).as_bytes();
        // What is left of the path, unsplit (`None` once every segment was taken): segments
        // are cut off the front by bytes, as `split('/')` would yield them, without an iterator.
        let mut left = (!rest.is_empty()).then_some(rest);
        let last = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Wildcard => return true,
                Segment::Param => match next_segment(&mut left) {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match next_segment(&mut left) {
                    Some(p) if self.literal_eq(p, lit.as_bytes()) => {}
                    // The last literal, with a `.suffix` on the path's last segment (and
                    // nothing after it but a trailing slash).
                    Some(p)
                        if i == last
                            && p.len() > lit.len()
                            && p.get(lit.len()) == Some(&b'.')
                            && !lit.contains('.')
                            && self.literal_eq(
                                p.get(..lit.len()).unwrap_or_default(),
                                lit.as_bytes(),
                            )
                            && left.is_none_or(|l| l.first().is_none_or(|b| *b == b'/')) => {}
                    _ => return false,
                },
            }
        }
        // Nothing left, or only a trailing slash (which matches the same route as the path
        // without it).
        left.is_none_or(<[u8]>::is_empty)
    }

    #[inline]
    fn literal_eq(&self, part: &[u8], lit: &[u8]) -> bool {
        if self.fold_case {
            part.eq_ignore_ascii_case(lit)
        } else {
            part == lit
        }
    }
}

/// The next segment of what is left of a path, as `split('/')` yields it: `left` keeps what
/// follows the segment's `/`, or becomes `None` after the last segment.
fn next_segment<'p>(left: &mut Option<&'p [u8]>) -> Option<&'p [u8]> {
    let rest = (*left)?;
    match rest.iter().position(|b| *b == b'/') {
        Some(i) => {
            *left = rest.get(i + 1..);
            rest.get(..i)
        }
        None => {
            *left = None;
            Some(rest)
        }
    }
}

/// One route's match conditions.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The path pattern.
    pub path: PathPattern,
    /// Methods that match; empty means all.
    pub methods: Vec<Method>,
}

/// The routes in order, plus an implicit default route at the end.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    matches: Vec<RouteMatch>,
}

impl RouteTable {
    /// Builds the table; the default route gets index `matches.len()`.
    pub fn new(matches: Vec<RouteMatch>) -> Self {
        Self { matches }
    }

    /// The first route that matches, or the default route.
    pub fn route_for(&self, method: &Method, path: &str) -> RouteId {
        let path = normalize_for_match(path);
        self.matches
            .iter()
            .position(|m| {
                (m.methods.is_empty() || m.methods.contains(method))
                    && m.path.matches_normalized(&path)
            })
            .unwrap_or(self.matches.len())
    }

    /// Index of the default route.
    pub fn default_route(&self) -> RouteId {
        self.matches.len()
    }
}

/// Normalises a path for matching: merges repeated slashes, resolves `.` and `..`, decodes
/// percent-escapes except `%2F` (which stays literal so it cannot add a segment). Returns the
/// input unchanged, without allocating, when there is nothing to do.
pub fn normalize_for_match(path: &str) -> Cow<'_, str> {
    // One pass: a path that starts with `/` and has no `%`, `//` or `/.` is already normal.
    if path.as_bytes().first() == Some(&b'/')
        && !crate::request::path::has_special(path.as_bytes(), false)
    {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<String> = Vec::new();
    for seg in path.split('/') {
        let seg = percent_decode_segment(seg);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (path.ends_with('/') && !out.is_empty()) {
        s.push('/');
    }
    Cow::Owned(s)
}

fn percent_decode_segment(seg: &str) -> String {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if v == b'/' {
                    out.extend_from_slice(b"%2F");
                } else {
                    out.push(v);
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::path::every_string;

    fn table(pats: &[(&str, &[&str])]) -> RouteTable {
        RouteTable::new(
            pats.iter()
                .map(|(p, m)| RouteMatch {
                    path: PathPattern::parse(p).unwrap(),
                    methods: m.iter().map(|s| s.parse().unwrap()).collect(),
                })
                .collect(),
        )
    }

    #[test]
    fn first_match_wins_and_default_catches_the_rest() {
        let t = table(&[
            ("/api/login", &["POST"]),
            ("/api/items/{id}", &[]),
            ("/api/*", &[]),
        ]);
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(t.route_for(&post, "/api/login"), 0);
        assert_eq!(t.route_for(&get, "/api/login"), 2);
        assert_eq!(t.route_for(&get, "/api/items/42"), 1);
        assert_eq!(t.route_for(&get, "/api/items/42/"), 1);
        assert_eq!(t.route_for(&get, "/api/items/"), 2);
        assert_eq!(t.route_for(&get, "/api/items/1/x"), 2);
        assert_eq!(t.route_for(&get, "/api"), 2);
        assert_eq!(t.route_for(&get, "/other"), 3);
        assert_eq!(t.default_route(), 3);
    }

    #[test]
    fn evasions_match_the_canonical_route() {
        let t = table(&[("/api/login", &[])]);
        for p in [
            "/api//login",
            "/api/./login",
            "/api/x/../login",
            "/api/%6cogin",
            "//api/login/",
            "/%61pi/login",
        ] {
            assert_eq!(t.route_for(&Method::POST, p), 0, "{p}");
        }
        assert_eq!(t.route_for(&Method::POST, "/api%2Flogin"), 1);
    }

    #[test]
    fn folded_patterns_match_any_case_and_suffixes_match_the_last_literal() {
        let pats = [
            ("/api/expensive", &[][..]),
            ("/api/items/{id}", &[]),
            ("/files/*", &[]),
        ];
        let folded = RouteTable::new(
            pats.iter()
                .map(|(p, _)| RouteMatch {
                    path: PathPattern::parse(p).unwrap().fold_case(),
                    methods: vec![],
                })
                .collect(),
        );
        let exact = table(&pats);
        let get = Method::GET;
        for p in [
            "/API/expensive",
            "/api/Expensive",
            "/api/EXPENSIVE/",
            "/Api/Items/42",
        ] {
            assert_ne!(folded.route_for(&get, p), folded.default_route(), "{p}");
            assert_eq!(exact.route_for(&get, p), exact.default_route(), "{p}");
        }
        for p in [
            "/api/expensive.json",
            "/api/expensive.JSON/",
            "/api/expensive.",
            "/api/expensive.a.b",
        ] {
            assert_eq!(exact.route_for(&get, p), 0, "{p}");
        }
        for p in [
            "/api/expensivex",
            "/api/expensive.json/more",
            "/api/expensivejson",
        ] {
            assert_eq!(exact.route_for(&get, p), 3, "{p}");
        }
        // A literal with a dot of its own takes no suffix.
        let dotted = table(&[("/wp-login.php", &[])]);
        assert_eq!(dotted.route_for(&get, "/wp-login.php.bak"), 1);
        assert_eq!(dotted.route_for(&get, "/wp-login.php"), 0);
    }

    #[test]
    fn root_and_catch_all() {
        let t = table(&[("/", &[]), ("/*", &[])]);
        assert_eq!(t.route_for(&Method::GET, "/"), 0);
        assert_eq!(t.route_for(&Method::GET, "/a/b"), 1);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(PathPattern::parse("api"), Err(PatternError::NotAbsolute));
        assert_eq!(
            PathPattern::parse("/a/*/b"),
            Err(PatternError::MisplacedWildcard)
        );
        assert_eq!(
            PathPattern::parse("/a*"),
            Err(PatternError::MisplacedWildcard)
        );
        assert_eq!(PathPattern::parse("/a/{id"), Err(PatternError::BadParam));
        assert_eq!(PathPattern::parse("/a/x{id}"), Err(PatternError::BadParam));
    }

    #[test]
    fn dotdot_cannot_escape_root() {
        assert_eq!(normalize_for_match("/../../etc"), "/etc");
        assert_eq!(normalize_for_match("/.."), "/");
    }

    #[test]
    fn only_paths_already_normal_skip_the_work() {
        // The fast path (borrowed, unchanged) is taken exactly when the path starts with `/`
        // and has no `%`, `//` or `/.`.
        for p in [
            "/", "/a", "/a/", "/a/b.c", "/a.b/c", "a/b", "", "//", "/a//b", "/./a", "/a/.",
            "/a/..", "/a%20b", "/a/b%", "/.hidden", "/a/b/", "/a.", "/a./b",
        ] {
            let slow =
                !p.starts_with('/') || p.contains("//") || p.contains('%') || p.contains("/.");
            let fast = matches!(normalize_for_match(p), Cow::Borrowed(_));
            assert_eq!(fast, !slow, "{p:?}");
        }
    }

    /// Matching as it was written before segments were cut by bytes (`split('/')` with a
    /// peek), kept as the reference the byte-wise matcher is checked against.
    fn reference_match(p: &PathPattern, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = (!rest.is_empty()).then(|| rest.split('/').peekable());
        let eq = |a: &str, b: &str| {
            if p.fold_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let last = p.segments.len().saturating_sub(1);
        for (i, seg) in p.segments.iter().enumerate() {
            let part = match seg {
                Segment::Wildcard => return true,
                _ => parts.as_mut().and_then(Iterator::next),
            };
            let ok = match (seg, part) {
                (Segment::Param, Some(x)) => !x.is_empty(),
                (Segment::Literal(lit), Some(x)) => {
                    eq(x, lit)
                        || (i == last
                            && !lit.contains('.')
                            && x.len() > lit.len()
                            && x.as_bytes().get(lit.len()) == Some(&b'.')
                            && x.get(..lit.len()).is_some_and(|h| eq(h, lit))
                            && parts
                                .as_mut()
                                .is_none_or(|ps| ps.peek().is_none_or(|n| n.is_empty())))
                }
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        match parts.as_mut().map(Iterator::next) {
            None | Some(None) => true,
            Some(Some("")) => parts.and_then(|mut ps| ps.next()).is_none(),
            Some(Some(_)) => false,
        }
    }

    #[test]
    fn byte_wise_matching_agrees_with_splitting_on_every_small_path() {
        let patterns = [
            "/",
            "/*",
            "/a",
            "/a/*",
            "/a/{id}",
            "/a/b",
            "/{x}/b",
            "/a/{id}/c",
            "/a.b",
            "/A",
            "/a/b/*",
            "/{x}",
        ];
        // Every path of up to five bytes from an alphabet with the separators that matter.
        let paths: Vec<String> = every_string(b"/ab.cA", 5)
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        let mut checked = 0;
        for src in patterns {
            for pat in [
                PathPattern::parse(src).unwrap(),
                PathPattern::parse(src).unwrap().fold_case(),
            ] {
                for path in &paths {
                    let want = reference_match(&pat, path);
                    assert_eq!(pat.matches_normalized(path), want, "{src} {path:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 200_000, "{checked}");
    }
}
