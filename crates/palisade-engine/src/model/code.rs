//! The stable codes clients see when a request is refused. A code says what the client can do
//! about its request (retry later, present a key, ...), never which rule fired: that goes to the
//! decision log, the metrics and the admin API.

/// A client-facing error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientCode {
    /// Too many requests for a limit.
    RateLimited,
    /// The daily request quota is used up.
    DailyRequestsExceeded,
    /// The daily spend quota is used up.
    DailySpendExceeded,
    /// Refused.
    Forbidden,
    /// The credential lacks a scope the route requires.
    InsufficientScope,
    /// Nothing here (what a honeypot answers).
    NotFound,
    /// A route that needs an API key got none.
    MissingApiKey,
    /// A route that needs a bearer token got none.
    MissingToken,
    /// A route that needs a key or a token got neither.
    MissingCredentials,
    /// Not a key this gateway issued, or a wrong secret.
    InvalidApiKey,
    /// The key has expired.
    ExpiredApiKey,
    /// The key was revoked.
    RevokedApiKey,
    /// The bearer token did not verify.
    InvalidToken,
    /// A signed request's signature, timestamp or nonce did not verify.
    InvalidSignature,
    /// The client must complete a challenge first.
    ChallengeRequired,
    /// The gateway cannot decide now (fail-closed).
    Unavailable,
}

impl ClientCode {
    /// The code as clients see it in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCode::RateLimited => "rate_limited",
            ClientCode::DailyRequestsExceeded => "daily_rpd_limit_exceeded",
            ClientCode::DailySpendExceeded => "daily_usd_limit_exceeded",
            ClientCode::Forbidden => "forbidden",
            ClientCode::InsufficientScope => "insufficient_scope",
            ClientCode::NotFound => "not_found",
            ClientCode::MissingApiKey => "missing_api_key",
            ClientCode::MissingToken => "missing_token",
            ClientCode::MissingCredentials => "missing_credentials",
            ClientCode::InvalidApiKey => "invalid_api_key",
            ClientCode::ExpiredApiKey => "expired_api_key",
            ClientCode::RevokedApiKey => "revoked_api_key",
            ClientCode::InvalidToken => "invalid_token",
            ClientCode::InvalidSignature => "invalid_signature",
            ClientCode::ChallengeRequired => "challenge_required",
            ClientCode::Unavailable => "unavailable",
        }
    }

    /// A short message for people, beside the code.
    pub fn message(self) -> &'static str {
        match self {
            ClientCode::RateLimited => "too many requests; retry after the time in Retry-After",
            ClientCode::DailyRequestsExceeded => {
                "the daily request quota is used up; it resets at midnight UTC"
            }
            ClientCode::DailySpendExceeded => {
                "the daily spend quota is used up; it resets at midnight UTC"
            }
            ClientCode::Forbidden => "this request is not allowed",
            ClientCode::InsufficientScope => "the credential lacks a scope this route requires",
            ClientCode::NotFound => "no such resource",
            ClientCode::MissingApiKey => "an API key is required",
            ClientCode::MissingToken => "a bearer token is required",
            ClientCode::MissingCredentials => "an API key or bearer token is required",
            ClientCode::InvalidApiKey => "the API key is not valid",
            ClientCode::ExpiredApiKey => "the API key has expired",
            ClientCode::RevokedApiKey => "the API key has been revoked",
            ClientCode::InvalidToken => "the bearer token is not valid",
            ClientCode::InvalidSignature => {
                "the request signature is missing, invalid, outside its time window or replayed"
            }
            ClientCode::ChallengeRequired => "this client must complete a challenge first",
            ClientCode::Unavailable => "the service is temporarily unavailable",
        }
    }
}
