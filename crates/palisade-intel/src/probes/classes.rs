//! The probe classes, each a small tokenising check over a decoded value. SQL injection and
//! markup injection use libinjection's tokenisers (the Rust port, `libinjectionrs`); the rest
//! are scanners written for one shape each: a `../` segment, a shell separator followed by a
//! command, a template expression that computes, a Log4j lookup (nested lookups resolved), a URL
//! aimed inside the network. Every check looks for structure an honest value does not have, so
//! a name with an apostrophe, a price with a dollar sign or a sentence with "select" stays clean.
//!
//! Fingerprints come from a fixed vocabulary (or libinjection's token-type letters): never the
//! attacker's bytes.

use super::{Fp, at, head, span, tail};

/// SQL injection: libinjection's fingerprint of the token stream, tried in the three quoting
/// contexts, or a time/out-of-band function an honest value never calls.
pub fn sqli(d: &[u8], lower: &[u8]) -> Option<Fp> {
    if !d
        .iter()
        .any(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
    {
        return None;
    }
    if !sql_possible(d, lower) {
        return None;
    }
    let mut state = libinjectionrs::SqliState::new(d, libinjectionrs::SqliFlags::FLAG_NONE);
    if state.detect() {
        let fp = state.get_fingerprint();
        let f = fp.as_str();
        // Numbers and words joined by `or` and calls without a quote, an operator, a comment
        // or a statement ("1 or 2 or 3", "SUM(price) in excel") are prose; a real probe of
        // that shape is caught by the function list below.
        let structural = f.bytes().any(|c| {
            matches!(
                c,
                b's' | b'o'
                    | b';'
                    | b'c'
                    | b'U'
                    | b'E'
                    | b'k'
                    | b'T'
                    | b'B'
                    | b'X'
                    | b':'
                    | b'A'
                    | b'v'
            )
        });
        let quoted = d.iter().any(|&b| matches!(b, b'\'' | b'"' | b'`'));
        let compares = d.iter().any(|&b| matches!(b, b'=' | b'<' | b'>' | b'#'))
            || find(d, b"--").is_some()
            || find(d, b"/*").is_some();
        // A number and a prose dash ("5/5 -- would buy again!") is not a truncated query.
        let prose_dash = (f == "1c" || f == "nc")
            && !quoted
            && find(d, b"-- ").is_some_and(|p| at(d, p + 3).is_ascii_alphabetic());
        if (structural || quoted || compares) && !prose_dash {
            return Some(Fp::new(f));
        }
    }
    // Keywords split by comments to slip past filters (`UN/**/ION SEL/**/ECT`).
    if find(d, b"/*").is_some() {
        let joined = strip_comments(d);
        if joined.len() < d.len() {
            let mut state =
                libinjectionrs::SqliState::new(&joined, libinjectionrs::SqliFlags::FLAG_NONE);
            if state.detect() {
                return Some(Fp::new("split_keyword"));
            }
        }
    }
    sql_function(lower)
        .or_else(|| quote_then_statement(lower))
        .or_else(|| logic_then_sql(lower))
        .map(Fp::new)
}

/// Whether a value can be SQL injection at all: it has a quote, a comment, a statement
/// separator, a symbolic logic operator, a `@@` variable, or an SQL keyword as a whole word.
/// The rest (names, dates, "blue shoes", a browser's user agent) skip the tokeniser, which is
/// most of the cost.
fn sql_possible(d: &[u8], l: &[u8]) -> bool {
    if d.iter().any(|&b| matches!(b, b'\'' | b'"' | b'`' | b'#'))
        || find(d, b"--").is_some()
        || find(d, b"/*").is_some()
        || find(d, b"&&").is_some()
        || find(d, b"||").is_some()
        || find(d, b"@@").is_some()
    {
        return true;
    }
    static WORDS: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::OnceLock::new();
    let Some(ac) = WORDS
        .get_or_init(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::Standard)
                .build([
                    "select",
                    "union",
                    "insert",
                    "update",
                    "delete",
                    "drop",
                    "and",
                    "or",
                    "xor",
                    "not",
                    "exec",
                    "execute",
                    "declare",
                    "sleep",
                    "benchmark",
                    "waitfor",
                    "having",
                    "order",
                    "group",
                    "limit",
                    "procedure",
                    "into",
                    "load_file",
                    "char",
                    "concat",
                    "create",
                    "alter",
                    "truncate",
                    "shutdown",
                    "div",
                    "between",
                    "case",
                    "rlike",
                    "regexp",
                    "extractvalue",
                    "updatexml",
                    "information_schema",
                    "sqlite_master",
                    "pg_catalog",
                    "sysobjects",
                    "syscolumns",
                    "all_tables",
                    "randomblob",
                    "xp_cmdshell",
                    "xp_dirtree",
                    "dbms_pipe",
                    "dbms_lock",
                    "utl_inaddr",
                    "utl_http",
                    "make_set",
                    "gtid_subset",
                    "attach",
                    "pg_sleep",
                ])
                .ok()
        })
        .as_ref()
    else {
        return true;
    };
    ac.find_overlapping_iter(l).any(|m| {
        let before = m.start().checked_sub(1).map(|p| at(l, p));
        let after = l.get(m.end()).copied();
        let word = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        !word(before) && !word(after)
    })
}

/// The value without `/*…*/` comments.
fn strip_comments(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len());
    let mut i = 0;
    while i < d.len() {
        if span(d, i, i + 2) == b"/*" {
            match find(tail(d, i + 2), b"*/") {
                Some(end) => i += 2 + end + 2,
                None => break,
            }
        } else {
            out.push(at(d, i));
            i += 1;
        }
    }
    out
}

/// A closed string or a number, then a logic operator or clause, then SQL: a subquery, a
/// `CASE`, a function call, a comparison (`' AND (SELECT CASE …`, `' || DBMS_LDAP.INIT(…`,
/// `1 AND 5 BETWEEN 1 AND 10`, `' ORDER BY (SELECT 1 …`).
fn logic_then_sql(l: &[u8]) -> Option<&'static str> {
    // A subquery in a list: `1,(select case …)`.
    if find(l, b",(select").is_some() || find(l, b", (select").is_some() {
        return Some("subquery");
    }
    // Longest first: `order by` before `or`.
    const OPS: &[&[u8]] = &[
        b"order by",
        b"group by",
        b"procedure",
        b"between",
        b"having",
        b"regexp",
        b"union",
        b"limit",
        b"rlike",
        b"and",
        b"xor",
        b"div",
        b"or",
        b"&&",
        b"||",
    ];
    let starts: Vec<usize> = l
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'\'' | b'"' | b')'))
        .map(|(i, _)| i + 1)
        .chain(
            // A leading number: numeric context.
            l.iter()
                .position(|b| !b.is_ascii_digit())
                .filter(|p| *p > 0),
        )
        .collect();
    for s in starts {
        let mut i = s;
        let mut spaced = false;
        while at(l, i) == b' ' || at(l, i) == b'\t' || at(l, i) == b')' {
            spaced = true;
            i += 1;
        }
        let rest = tail(l, i);
        let Some(op) = OPS.iter().find(|op| rest.starts_with(op)) else {
            continue;
        };
        let symbolic = matches!(op.first(), Some(b'&' | b'|'));
        let after = tail(rest, op.len());
        if !(symbolic || (spaced && matches!(after.first(), Some(b' ' | b'(' | b'\t')))) {
            continue;
        }
        let after = after.trim_ascii_start();
        let sql = after.starts_with(b"(select")
            || after.starts_with(b"( select")
            || [
                &b"select "[..],
                b"case ",
                b"exists",
                b"not ",
                b"null",
                b"sleep",
                b"(case",
            ]
            .iter()
            .any(|k| after.starts_with(k))
            || call_like(after)
            || (after.first().is_some_and(u8::is_ascii_digit)
                && (find(after, b" between ").is_some()
                    || find(after, b" and ").is_some()
                    || after.iter().any(|b| matches!(b, b'=' | b'<' | b'>'))));
        if sql {
            return Some("logic_sql");
        }
    }
    None
}

/// `name(` or `schema.name(` at the start.
fn call_like(s: &[u8]) -> bool {
    let n = s
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.' || *b == b'$'))
        .unwrap_or(s.len());
    n > 1 && at(s, n) == b'(' && at(s, 0).is_ascii_alphabetic()
}

/// A quote that ends the application's string and then comments the rest of its query out
/// (`admin' #`, `x" --`) or starts a statement of its own (`"; SELECT …`).
fn quote_then_statement(l: &[u8]) -> Option<&'static str> {
    const STATEMENTS: &[&[u8]] = &[
        b"attach",
        b"call",
        b"begin",
        b"select",
        b"insert",
        b"update",
        b"delete",
        b"drop",
        b"exec",
        b"execute",
        b"declare",
        b"shutdown",
        b"create",
        b"alter",
        b"union",
        b"truncate",
        b"waitfor",
        b"grant",
    ];
    for (i, &q) in l.iter().enumerate() {
        if !matches!(q, b'\'' | b'"' | b'`') {
            continue;
        }
        let mut j = i + 1;
        while l.get(j).is_some_and(|b| *b == b' ' || *b == b')') {
            j += 1;
        }
        let rest = tail(l, j);
        if rest.starts_with(b"#") || rest.starts_with(b"--") || rest.starts_with(b"/*") {
            return Some("quote_comment");
        }
        if let Some(r) = rest.strip_prefix(b";") {
            let r = r.trim_ascii_start();
            if STATEMENTS.iter().any(|k| {
                r.starts_with(k) && r.get(k.len()).is_none_or(|b| !b.is_ascii_alphanumeric())
            }) {
                return Some("stacked_query");
            }
        }
    }
    None
}

/// Functions only an injection calls from a value: timing, out-of-band and file access, and
/// the catalog tables an attacker enumerates.
fn sql_function(l: &[u8]) -> Option<&'static str> {
    const CALLS: &[&[u8]] = &[
        b"sleep",
        b"pg_sleep",
        b"benchmark",
        b"extractvalue",
        b"updatexml",
        b"load_file",
        b"utl_inaddr.get_host_address",
        b"utl_http.request",
        b"dbms_pipe.receive_message",
        b"dbms_lock.sleep",
        b"randomblob",
        b"xp_cmdshell",
        b"xp_dirtree",
        b"make_set",
        b"gtid_subset",
        b"exp",
    ];
    for name in CALLS {
        let mut from = 0;
        while let Some(at) = find(tail(l, from), name).map(|p| p + from) {
            from = at + name.len();
            if word_start(l, at) && call_follows(l, from, *name == b"exp") {
                return Some("sql_function");
            }
        }
    }
    const CATALOG: &[&[u8]] = &[
        b"information_schema",
        b"sqlite_master",
        b"pg_catalog",
        b"mysql.user",
        b"sysobjects",
        b"syscolumns",
        b"all_tables",
        b"@@version",
        b"waitfor delay",
        b"waitfor time",
        b"into outfile",
        b"into dumpfile",
        b"procedure analyse",
    ];
    CATALOG
        .iter()
        .any(|t| find(l, t).is_some_and(|at| word_start(l, at)))
        .then_some("sql_catalog")
}

/// After a function name: spaces or comments, `(`, and an argument that computes (a number,
/// a nested call, a quote, a variable), not a word of prose (`sleep (a lot)`).
fn call_follows(l: &[u8], mut i: usize, strict: bool) -> bool {
    i = skip_sql_space(l, i);
    if l.get(i) != Some(&b'(') {
        return false;
    }
    i = skip_sql_space(l, i + 1);
    match l.get(i) {
        Some(b'0'..=b'9' | b'(' | b'\'' | b'"' | b'@' | b'~' | b'-') => !strict || at(l, i) == b'~',
        Some(_) => {
            !strict
                && (tail(l, i).starts_with(b"if(")
                    || tail(l, i).starts_with(b"select")
                    || tail(l, i).starts_with(b"concat")
                    || tail(l, i).starts_with(b"char(")
                    || tail(l, i).starts_with(b"md5(")
                    || tail(l, i).starts_with(b"rand(")
                    || tail(l, i).starts_with(b"user"))
        }
        None => false,
    }
}

fn skip_sql_space(l: &[u8], mut i: usize) -> usize {
    loop {
        while l.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if l.get(i..i + 2) == Some(b"/*") {
            match find(tail(l, i + 2), b"*/") {
                Some(end) => i += 2 + end + 2,
                None => return l.len(),
            }
        } else {
            return i;
        }
    }
}

/// Markup and script injection: libinjection's HTML5 tokeniser in the five contexts a value
/// lands in, then the script shapes it does not look for: a `javascript:` URL, a breakout from
/// a script string into a call, an expression sink.
pub fn xss(d: &[u8], lower: &[u8]) -> Option<&'static str> {
    let interesting = d
        .iter()
        .any(|&b| matches!(b, b'<' | b'>' | b'"' | b'\'' | b'`' | b'=' | b'(' | b':'));
    if !interesting {
        return None;
    }
    // Without a tag or an attribute assignment the HTML5 tokeniser finds nothing.
    if (d.contains(&b'<') || d.contains(&b'=')) && libinjectionrs::detect_xss(d).is_injection() {
        return Some(if d.contains(&b'<') {
            "html"
        } else {
            "attribute"
        });
    }
    if (find(lower, b"script").is_some() || find(lower, b"data:").is_some()) && script_url(lower) {
        return Some("script_url");
    }
    if lower.iter().any(|b| matches!(b, b'(' | b'`')) && script_call(lower) {
        return Some("script_call");
    }
    None
}

/// `javascript:`, `vbscript:`, `data:text/html` where a URL starts (the value's start, or after
/// `=`, a quote, `(`), with tabs and newlines inside the scheme ignored as browsers do.
fn script_url(l: &[u8]) -> bool {
    const SCHEMES: &[&[u8]] = &[
        b"javascript:",
        b"vbscript:",
        b"livescript:",
        b"data:text/html",
        b"data:image/svg+xml",
        b"data:application/xhtml",
    ];
    // The value with tabs, newlines and control characters removed (bounded copy).
    let squeezed: Vec<u8> = l
        .iter()
        .take(4096)
        .copied()
        .filter(|&b| !(b == b'\t' || b == b'\n' || b == b'\r' || b < 0x09))
        .collect();
    let mut start = true;
    for (i, &b) in squeezed.iter().enumerate() {
        if start {
            for s in SCHEMES {
                if tail(&squeezed, i).starts_with(s) {
                    // "JavaScript: the good parts" is prose; `javascript:alert(1)` is not.
                    let next = squeezed.get(i + s.len());
                    if s.ends_with(b":") {
                        if next.is_some_and(|n| !n.is_ascii_whitespace()) {
                            return true;
                        }
                    } else {
                        return true;
                    }
                }
            }
        }
        start =
            matches!(b, b'=' | b'"' | b'\'' | b'(' | b'`' | b'[' | b',') || (start && b == b' ');
    }
    false
}

/// A call to a script sink with a computing argument (`alert(1)`, `prompt\`1\``,
/// `eval(atob(…))`), or a prototype walk to `Function`, where the value also shows the breakout
/// that would put it in a script (a quote, `;`, `<`, `>`, `//`, `{`, or nothing else at all).
fn script_call(l: &[u8]) -> bool {
    const SINKS: &[&[u8]] = &[
        b"alert",
        b"prompt",
        b"confirm",
        b"eval",
        b"settimeout",
        b"setinterval",
        b"execscript",
        b"msgbox",
        b"print",
        b"fetch",
        b"import",
    ];
    if find(l, b"constructor.constructor(").is_some()
        || find(l, b"constructor(\"return").is_some()
        || find(l, b"constructor('return").is_some()
        || find(l, b"document.cookie").is_some_and(|_| {
            l.iter()
                .any(|&b| matches!(b, b'\'' | b'"' | b';' | b'<' | b'(' | b'+' | b'='))
        })
        || find(l, b"string.fromcharcode(").is_some()
        || find(l, b"expression(").is_some_and(|_| l.contains(&b':'))
    {
        return true;
    }
    let breakout = l
        .iter()
        .any(|&b| matches!(b, b'\'' | b'"' | b'`' | b';' | b'<' | b'>' | b'{' | b'}'))
        || find(l, b"//").is_some();
    for name in SINKS {
        let mut from = 0;
        while let Some(at) = find(tail(l, from), name).map(|p| p + from) {
            from = at + name.len();
            if !word_start(l, at) && !head(l, at).ends_with(b".") {
                continue;
            }
            let mut i = from;
            while l.get(i).is_some_and(|b| *b == b' ') {
                i += 1;
            }
            let arg = match l.get(i) {
                Some(b'(') => {
                    let mut j = i + 1;
                    while l.get(j).is_some_and(|b| *b == b' ') {
                        j += 1;
                    }
                    l.get(j).copied()
                }
                // A tagged template: alert`1`.
                Some(b'`') => Some(b'1'),
                _ => None,
            };
            let computes = match arg {
                Some(b'0'..=b'9' | b'\'' | b'"' | b'`' | b'/' | b')' | b'[') => true,
                Some(b'a'..=b'z' | b'_' | b'$') => {
                    let rest = tail(l, i + 1);
                    let ident_end = rest
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
                        .unwrap_or(rest.len());
                    (matches!(rest.get(ident_end), Some(b'.' | b'(' | b'['))
                        || (rest.get(ident_end) == Some(&b')') && breakout))
                        && !head(rest, ident_end).contains(&b' ')
                        && (*name != b"print" && *name != b"import" && *name != b"fetch"
                            || breakout)
                }
                _ => false,
            };
            let lone = l.len() <= from + 40 && at < 40;
            if computes && (breakout || lone) && (*name != b"print" || breakout) {
                return true;
            }
        }
    }
    false
}

/// Path traversal: a `..` segment (`../`, `..\`, or a trailing `/..`) or a path to a file an
/// attacker reads first, or a stream wrapper that reads files.
pub fn traversal(d: &[u8], lower: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    while let Some(at) = find(tail(d, i), b"..").map(|p| p + i) {
        let before = at.checked_sub(1).and_then(|p| d.get(p).copied());
        let after = d.get(at + 2).copied();
        let boundary_before = matches!(before, None | Some(b'/' | b'\\' | b'=' | b':' | b'.'));
        let boundary_after = matches!(after, Some(b'/' | b'\\' | b';'))
            || (after.is_none() && matches!(before, Some(b'/' | b'\\')));
        // "../ means the parent" is prose: what follows the dot segments is a path.
        let mut k = at + 2;
        while d
            .get(k)
            .is_some_and(|b| matches!(b, b'/' | b'\\' | b'.' | b';'))
        {
            k += 1;
        }
        let prose = d.get(k).is_some_and(|b| *b == b' ');
        if boundary_before && boundary_after && !prose {
            return Some("dotdot");
        }
        i = at + 2;
    }
    const FILES: &[&[u8]] = &[
        b"/etc/passwd",
        b"/etc/shadow",
        b"/etc/group",
        b"/etc/hosts",
        b"/etc/issue",
        b"/proc/self/",
        b"/proc/version",
        b"/.ssh/",
        b"/root/",
        b"/var/log/",
        b"win.ini",
        b"boot.ini",
        b"system32",
        b"web-inf/",
        b".htaccess",
        b".htpasswd",
        b"/.env",
        b"/.git/",
        b"c:/windows",
        b"c:\\windows",
        b"php://",
        b"file://",
        b"zip://",
        b"phar://",
        b"expect://",
        b"jar:file:",
    ];
    static AC: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> = std::sync::OnceLock::new();
    match AC
        .get_or_init(|| aho_corasick::AhoCorasick::new(FILES).ok())
        .as_ref()
    {
        Some(ac) => ac.is_match(lower),
        None => FILES.iter().any(|f| find(lower, f).is_some()),
    }
    .then_some("sensitive_file")
}

/// Command injection: a shell separator (`;`, `|`, `&`, a newline, a backquote, `$(`) followed
/// by a command, or the `${IFS}` space trick.
pub fn command(lower: &[u8]) -> Option<&'static str> {
    if find(lower, b"${ifs}").is_some() || find(lower, b"$ifs$").is_some() {
        return Some("ifs");
    }
    // Commands a probe runs; the ones that are also English words need an argument-like
    // continuation (`; id` at the end, `; echo $PATH`), not prose (`; id say`).
    const COMMANDS: &[&[u8]] = &[
        b"cat",
        b"ls",
        b"whoami",
        b"uname",
        b"wget",
        b"curl",
        b"nc",
        b"ncat",
        b"netcat",
        b"bash",
        b"sh",
        b"zsh",
        b"ksh",
        b"ping",
        b"nslookup",
        b"powershell",
        b"pwsh",
        b"cmd",
        b"cmd.exe",
        b"python",
        b"python3",
        b"perl",
        b"ruby",
        b"php",
        b"rm",
        b"chmod",
        b"ifconfig",
        b"ipconfig",
        b"hostname",
        b"systeminfo",
        b"pwd",
        b"telnet",
        b"base64",
        b"xxd",
        b"tftp",
        b"busybox",
        b"net",
        b"id",
        b"echo",
        b"env",
        b"type",
        b"dir",
        b"ps",
        b"sleep",
        b"printf",
        b"dig",
        b"kill",
        b"timeout",
        b"certutil",
        b"bitsadmin",
        b"head",
        b"tail",
        b"more",
        b"find",
        b"awk",
        b"sed",
        b"nohup",
        b"exec",
        b"eval",
        b"set",
    ];
    const PROSE: &[&[u8]] = &[
        b"id", b"echo", b"env", b"type", b"dir", b"ps", b"sleep", b"printf", b"dig", b"kill",
        b"timeout", b"net", b"more", b"find", b"head", b"tail", b"set", b"exec", b"eval", b"cat",
        b"ping", b"rm",
    ];
    let n = lower.len();
    let mut i = 0;
    while i < n {
        let b = at(lower, i);
        let sep_len = match b {
            b';' | b'|' | b'`' | b'\n' => 1,
            b'&' => 1,
            b'$' if lower.get(i + 1) == Some(&b'(') => 2,
            _ => {
                i += 1;
                continue;
            }
        };
        // A backquote in prose ("use `ls -la` to list") quotes code; one that wraps the
        // value, or follows a character without a space, runs it.
        if b == b'`' && i > 0 && at(lower, i - 1) == b' ' {
            let close = tail(lower, i + 1).iter().position(|c| *c == b'`');
            let prose_after = close.is_some_and(|c| {
                let after = tail(lower, i + 1 + c + 1);
                after.first() == Some(&b' ') && after.get(1).is_some_and(u8::is_ascii_alphabetic)
            });
            if prose_after {
                i += 1;
                continue;
            }
        }
        // `$(…)` and backquotes close what they open: any command inside runs.
        let subshell = (sep_len == 2 && tail(lower, i + 2).contains(&b')'))
            || (b == b'`' && tail(lower, i + 1).contains(&b'`'));
        let mut j = i + sep_len;
        while j < n && matches!(at(lower, j), b'|' | b'&') {
            j += 1;
        }
        while j < n && matches!(at(lower, j), b' ' | b'\t' | b'(' | b'{') {
            j += 1;
        }
        // An absolute path to the command: /bin/cat, /usr/bin/id.
        for prefix in [&b"/usr/bin/"[..], b"/bin/", b"/usr/sbin/", b"/sbin/"] {
            if tail(lower, j).starts_with(prefix) {
                j += prefix.len();
                break;
            }
        }
        for c in COMMANDS {
            if !tail(lower, j).starts_with(c) {
                continue;
            }
            let k = j + c.len();
            let next = lower.get(k).copied();
            let ended = matches!(
                next,
                None | Some(b';' | b'|' | b'&' | b'`' | b')' | b'\n' | b'<' | b'>' | b'$' | b'}')
            );
            let argued = next == Some(b' ') || next == Some(b'\t');
            if !(ended || argued) {
                continue;
            }
            if PROSE.contains(c) && argued {
                // The argument must look like one: a flag, a path, a variable, a number, a
                // quote, a redirection.
                let mut a = k;
                while lower.get(a).is_some_and(|b| *b == b' ' || *b == b'\t') {
                    a += 1;
                }
                let arg_like = matches!(
                    lower.get(a),
                    None | Some(
                        b'-' | b'/' | b'$' | b'0'
                            ..=b'9'
                                | b'\''
                                | b'"'
                                | b'>'
                                | b'<'
                                | b'|'
                                | b';'
                                | b'&'
                                | b'`'
                                | b'.'
                                | b'%'
                                | b'\\'
                    )
                );
                // A drive (`c:\`), or a redirection, pipe or path later in the value.
                let drive = lower.get(a).is_some_and(u8::is_ascii_alphabetic)
                    && lower.get(a + 1) == Some(&b':');
                let shelly = tail(lower, a)
                    .iter()
                    .any(|b| matches!(b, b'>' | b'|' | b'/' | b'\\' | b'$'));
                if !(arg_like || drive || shelly || subshell) {
                    continue;
                }
            }
            // A separator that is not shell-like in prose: `&` between words ("Q&A id"), a
            // lone `;` in a sentence, need the command at the end or an argument-like shape.
            if b == b'&'
                && sep_len == 1
                && i > 0
                && at(lower, i - 1).is_ascii_alphanumeric()
                && !ended
            {
                continue;
            }
            return Some("command");
        }
        i += sep_len;
    }
    None
}

/// Server-side template injection: an expression in a template's delimiters that computes
/// (`{{7*7}}`, `${7*7}`, `<%= 7*7 %>`, `#{…}`, `*{…}`, `{% … %}` with a tag) or walks to the
/// runtime (`__class__`, `config`, `T(java.lang.Runtime)`).
pub fn template(lower: &[u8]) -> Option<&'static str> {
    // FreeMarker and Smarty directives that run code.
    for directive in [
        &b"<#assign"[..],
        b"?new()",
        b"{php}",
        b"{system(",
        b"#set($",
        b"#foreach(",
    ] {
        if find(lower, directive).is_some() {
            return Some("directive");
        }
    }
    const OPENERS: &[(&[u8], &[u8])] = &[
        (b"{{", b"}}"),
        (b"${", b"}"),
        (b"#{", b"}"),
        (b"*{", b"}"),
        (b"@{", b"}"),
        (b"<%=", b"%>"),
        (b"<%", b"%>"),
        (b"{%", b"%}"),
        (b"[[", b"]]"),
        (b"@(", b")"),
    ];
    for (open, close) in OPENERS {
        let mut from = 0;
        while let Some(at) = find(tail(lower, from), open).map(|p| p + from) {
            let inner_start = at + open.len();
            from = inner_start;
            let window = span(lower, inner_start, lower.len().min(inner_start + 256));
            let Some(end) = find(window, close) else {
                // An unclosed expression still computes in many engines: `{{7*7`.
                if computes(window) {
                    return Some("expression");
                }
                continue;
            };
            let inner = head(window, end);
            if *open == b"{%" {
                let t = inner.trim_ascii_start();
                if [
                    &b"import"[..],
                    b"for ",
                    b"set ",
                    b"include",
                    b"debug",
                    b"if ",
                    b"print",
                ]
                .iter()
                .any(|k| t.starts_with(k))
                {
                    return Some("tag");
                }
            }
            if computes(inner) {
                return Some("expression");
            }
        }
    }
    None
}

/// Whether a template expression computes or reaches the runtime.
fn computes(inner: &[u8]) -> bool {
    // Arithmetic between numbers (7*7, 7*'7', 1337+1).
    let arith = inner.windows(3).any(|w| {
        matches!(w, [a, b'*' | b'+' | b'-' | b'/' | b'%', c]
            if a.is_ascii_digit() && (c.is_ascii_digit() || *c == b'\'' || *c == b'"'))
    }) || inner.windows(5).any(|w| {
        matches!(w, [a, b' ', b'*' | b'+' | b'/', b' ', c] if a.is_ascii_digit() && c.is_ascii_digit())
    });
    if arith {
        return true;
    }
    const RUNTIME: &[&[u8]] = &[
        b"__class__",
        b"__mro__",
        b"__subclasses__",
        b"__globals__",
        b"__builtins__",
        b"__import__",
        b"__init__",
        b"config.",
        b"config}",
        b"self.",
        b"request.application",
        b"lipsum",
        b"cycler",
        b"joiner",
        b"getclass",
        b"getruntime",
        b"java.lang",
        b"t(java",
        b"runtime.exec",
        b"processbuilder",
        b"freemarker.template",
        b"?new(",
        b"constructor",
        b"system(",
        b"exec(",
        b"popen(",
        b"os.",
        b"_self.env",
        b"registerundefinedfiltercallback",
        b"|filter(",
        b"|map(",
        b"'system'",
        b"`",
    ];
    inner == b"config"
        || inner == b"self"
        || inner == b" config "
        || RUNTIME.iter().any(|r| find(inner, r).is_some())
}

/// Log4Shell-style lookups: `${jndi:…}` however its letters are hidden in nested lookups
/// (`${${lower:j}ndi:…}`, `${${::-j}${::-n}di:…}`), and the lookups that leak the host's
/// environment (`${env:…}`, `${sys:…}`, `${java:…}`).
pub fn jndi(lower: &[u8]) -> Option<&'static str> {
    find(lower, b"${")?;
    let mut resolved = Vec::with_capacity(lower.len().min(2048));
    resolve(head(lower, lower.len().min(2048)), 0, &mut resolved);
    if find(&resolved, b"jndi:").is_some() {
        return Some("jndi");
    }
    const LOOKUPS: &[&[u8]] = &[
        b"${env:",
        b"${sys:",
        b"${java:",
        b"${ctx:",
        b"${main:",
        b"${k8s:",
        b"${docker:",
        b"${spring:",
        b"${log4j:",
        b"${web:",
        b"${bundle:",
        b"${base64:",
        b"${hostname",
    ];
    LOOKUPS
        .iter()
        .any(|k| find(lower, k).is_some() || find(&resolved, k).is_some())
        .then_some("lookup")
}

/// Resolves Log4j lookups the way the library would: `${a:-b}` is `b`, `${lower:x}` and
/// `${upper:x}` are `x`, `${date:'x'}` is `x`; others stay as written. Depth-bounded.
fn resolve(s: &[u8], depth: usize, out: &mut Vec<u8>) -> usize {
    let mut i = 0;
    while i < s.len() {
        if depth < 8 && tail(s, i).starts_with(b"${") {
            let mut inner = Vec::new();
            let used = resolve(tail(s, i + 2), depth + 1, &mut inner);
            let consumed = i + 2 + used;
            let closed = s.get(consumed) == Some(&b'}');
            let value: &[u8] = if let Some(p) = find(&inner, b":-") {
                tail(&inner, p + 2)
            } else if let Some(r) = inner
                .strip_prefix(b"lower:")
                .or_else(|| inner.strip_prefix(b"upper:"))
            {
                r
            } else if let Some(r) = inner.strip_prefix(b"date:") {
                let r = r.strip_prefix(b"'").unwrap_or(r);
                r.strip_suffix(b"'").unwrap_or(r)
            } else {
                out.extend_from_slice(b"${");
                out.extend_from_slice(&inner);
                if closed {
                    out.push(b'}');
                }
                i = consumed + usize::from(closed);
                continue;
            };
            out.extend_from_slice(value);
            i = consumed + usize::from(closed);
            continue;
        }
        if depth > 0 && at(s, i) == b'}' {
            return i;
        }
        out.push(at(s, i));
        i += 1;
    }
    i
}

/// Server-side request forgery: a URL aimed at the machine itself, its cloud metadata service,
/// a private network, an out-of-band collector, or with a scheme only internal fetchers speak.
pub fn ssrf(lower: &[u8]) -> Option<&'static str> {
    if find(lower, b"/latest/meta-data").is_some()
        || find(lower, b"/computemetadata/").is_some()
        || find(lower, b"/metadata/instance").is_some()
    {
        return Some("metadata");
    }
    let mut from = 0;
    while let Some(at) = find(tail(lower, from), b"://").map(|p| p + from) {
        from = at + 3;
        let scheme_start = head(lower, at)
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'-' || *b == b'.'))
            .map_or(0, |p| p + 1);
        let scheme = span(lower, scheme_start, at);
        if matches!(
            scheme,
            b"gopher"
                | b"dict"
                | b"ldap"
                | b"ldaps"
                | b"tftp"
                | b"netdoc"
                | b"sftp"
                | b"rmi"
                | b"file"
                | b"jar"
        ) {
            return Some("scheme");
        }
        if !matches!(scheme, b"http" | b"https" | b"ftp" | b"ws" | b"wss" | b"") {
            continue;
        }
        let rest = tail(lower, from);
        let authority_end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b' ' | b'"' | b'\'' | b'\\'))
            .unwrap_or(rest.len());
        let authority = head(rest, authority_end);
        let host = match authority.iter().rposition(|b| *b == b'@') {
            Some(p) => tail(authority, p + 1),
            None => authority,
        };
        let host = if host.first() == Some(&b'[') {
            let end = host.iter().position(|b| *b == b']').unwrap_or(host.len());
            head(host, end.min(host.len()))
        } else {
            let end = host.iter().position(|b| *b == b':').unwrap_or(host.len());
            head(host, end)
        };
        if let Some(kind) = internal_host(host) {
            return Some(kind);
        }
    }
    None
}

fn internal_host(host: &[u8]) -> Option<&'static str> {
    let h = host.strip_suffix(b".").unwrap_or(host);
    if h.is_empty() {
        return None;
    }
    if h.first() == Some(&b'[') {
        let inner = tail(h, 1);
        return (inner == b"::1"
            || inner == b"::"
            || inner.starts_with(b"::ffff:")
            || inner.starts_with(b"0:0:0:0:0:")
            || inner.starts_with(b"fe80:")
            || inner.starts_with(b"fd")
            || inner.starts_with(b"fc"))
        .then_some("internal");
    }
    const NAMES: &[&[u8]] = &[
        b"localhost",
        b"metadata.google.internal",
        b"metadata",
        b"instance-data",
        b"kubernetes.default",
    ];
    if NAMES.contains(&h)
        || h.ends_with(b".localhost")
        || h.ends_with(b".internal")
        || h.ends_with(b".local")
        || h.ends_with(b".svc")
        || h.ends_with(b".cluster.local")
    {
        return Some("internal");
    }
    const COLLECTORS: &[&[u8]] = &[
        b".burpcollaborator.net",
        b".oastify.com",
        b".interact.sh",
        b".oast.pro",
        b".oast.live",
        b".oast.site",
        b".oast.online",
        b".oast.fun",
        b".oast.me",
        b".requestbin.net",
        b".dnslog.cn",
        b".ceye.io",
        b".canarytokens.com",
    ];
    if COLLECTORS.iter().any(|c| h.ends_with(c)) {
        return Some("collector");
    }
    for rebind in [&b".nip.io"[..], b".sslip.io", b".xip.io", b"localtest.me"] {
        if h.ends_with(rebind) {
            return Some("rebinding");
        }
    }
    // Numbers: dotted (with octal or hex parts), one decimal or hex integer.
    if h.iter().all(|b| b.is_ascii_digit()) && h.len() >= 8 {
        return Some("encoded_ip");
    }
    if h.starts_with(b"0x") && tail(h, 2).iter().all(u8::is_ascii_hexdigit) {
        return Some("encoded_ip");
    }
    let parts: Vec<&[u8]> = h.split(|b| *b == b'.').collect();
    // Short forms a resolver expands: 127.1, 10.1.2.
    if (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
        && matches!(parts.first(), Some(&(b"127" | b"10" | b"0")))
    {
        return Some("internal");
    }
    if parts.len() == 4 && parts.iter().all(|p| !p.is_empty()) {
        let mut octets = [0u32; 4];
        for (o, p) in octets.iter_mut().zip(&parts) {
            let v = if let Some(hx) = p.strip_prefix(b"0x") {
                parse_radix(hx, 16)
            } else if p.len() > 1 && p.first() == Some(&b'0') {
                parse_radix(tail(p, 1), 8)
            } else {
                parse_radix(p, 10)
            };
            match v {
                Some(v) if v <= 255 => *o = v,
                _ => return None,
            }
        }
        let encoded = parts
            .iter()
            .any(|p| p.starts_with(b"0x") || (p.len() > 1 && p.first() == Some(&b'0')));
        let internal = match octets {
            [127, ..] | [10, ..] | [0, ..] => true,
            [169, 254, ..] | [192, 168, ..] => true,
            [172, b, ..] => (16..=31).contains(&b),
            [100, b, ..] => (64..=127).contains(&b),
            _ => false,
        };
        if internal {
            return Some(if octets[0] == 169 {
                "metadata"
            } else {
                "internal"
            });
        }
        if encoded {
            return Some("encoded_ip");
        }
    }
    if h == b"0" {
        return Some("internal");
    }
    None
}

fn parse_radix(s: &[u8], radix: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 11 {
        return (s.is_empty() && radix == 8).then_some(0);
    }
    s.iter().try_fold(0u32, |a, &b| {
        a.checked_mul(radix)?
            .checked_add((b as char).to_digit(radix)?)
    })
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    // Values are short: the first byte by memchr, then a compare, beats building a searcher
    // per call (`memmem::find` sets one up each time, which dominated the scan's cost).
    let (&first, rest) = needle.split_first()?;
    let last_start = hay.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let p = from + memchr::memchr(first, span(hay, from, last_start + 1))?;
        if span(hay, p + 1, p + needle.len()) == rest {
            return Some(p);
        }
        from = p + 1;
    }
    None
}

/// Whether a word starts at `at` (not in the middle of an identifier).
fn word_start(l: &[u8], at: usize) -> bool {
    at == 0 || !(self::at(l, at - 1).is_ascii_alphanumeric() || self::at(l, at - 1) == b'_')
}
