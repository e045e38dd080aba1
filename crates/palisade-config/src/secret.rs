//! Secret-bearing config values. They read like the strings they wrap, but they never show
//! themselves: serialised (for the admin API's `/v1/config`) and `Debug`-printed (for logs and
//! error messages) they are `"<redacted>"`, or a URL with its password and query removed. So a
//! new secret field is redacted by choosing its type, not by remembering a JSON pointer.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

/// What a secret shows instead of itself.
pub const REDACTED: &str = "<redacted>";

/// A secret string (a token, an HMAC secret, a decoy key): shown as `"<redacted>"`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(Spanned<String>);

impl Secret {
    /// The value, for the code that needs it (never for display).
    pub fn expose(&self) -> &str {
        self.0.get_ref()
    }

    /// The value and its place in the file.
    pub fn spanned(&self) -> &Spanned<String> {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(Spanned::new(0..0, s))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A URL that may carry credentials (`redis://user:password@host`, a JWKS URL with a token in
/// its query): shown with the password and the query replaced by `<redacted>`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(Spanned<String>);

impl SecretUrl {
    /// The URL as written, for the code that connects with it.
    pub fn expose(&self) -> &str {
        self.0.get_ref()
    }

    /// The value and its place in the file.
    pub fn spanned(&self) -> &Spanned<String> {
        &self.0
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// A URL with the password of its user info and its query replaced by `<redacted>`. An
/// `env:NAME` reference names a variable, not a secret, and is shown as it is.
pub fn redact_url(u: &str) -> String {
    if u.starts_with("env:") {
        return u.to_owned();
    }
    let (before_query, query) = match u.split_once('?') {
        Some((b, _)) => (b, Some(REDACTED)),
        None => (u, None),
    };
    // A fragment is dropped with the query (it follows it); without a query it is kept.
    let mut out = match (before_query.find("://"), before_query.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = before_query.get(scheme + 3..at).unwrap_or("");
            let user = userinfo.split(':').next().unwrap_or("");
            let has_password = userinfo.contains(':');
            format!(
                "{}{}{}{}",
                before_query.get(..scheme + 3).unwrap_or(""),
                user,
                if has_password { ":<redacted>" } else { "" },
                before_query.get(at..).unwrap_or("")
            )
        }
        // No scheme or no user info: a bare value that may itself be a secret if it has an
        // `@` without a scheme (user:pass@host); redact everything before the `@`.
        (None, Some(at)) => format!("{REDACTED}{}", before_query.get(at..).unwrap_or("")),
        _ => before_query.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_queries_but_keep_where_they_point() {
        for (url, shown) in [
            (
                "redis://user:pw@host:6379/0",
                "redis://user:<redacted>@host:6379/0",
            ),
            ("redis://:pw@host:6379", "redis://:<redacted>@host:6379"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://user@host", "redis://user@host"),
            (
                "https://idp.example/jwks.json?token=abc",
                "https://idp.example/jwks.json?<redacted>",
            ),
            (
                "https://u:p@idp.example/j?k=1#x",
                "https://u:<redacted>@idp.example/j?<redacted>",
            ),
            ("env:REDIS_URL", "env:REDIS_URL"),
            ("u:p@host:1", "<redacted>@host:1"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_never_print_themselves() {
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"<redacted>\"")
        );
    }
}
