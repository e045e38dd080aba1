//! One identity's features as an operator reads them ("why was this client scored?").

use crate::clock::{Nanos, SECOND};

use super::*;

/// One identity's features, for "why was this client scored?".
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureReport {
    /// Requests in the long window (sliding estimate).
    pub requests: f32,
    /// Requests per second over the short window.
    pub rate_short: f32,
    /// Requests per second over the long window.
    pub rate_long: f32,
    /// Coefficient of variation of inter-arrival times (low: machine-steady).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regularity_cv: Option<f32>,
    /// Mean seconds between requests.
    pub mean_gap_secs: f32,
    /// Share of requests on the most used route.
    pub top_route_share: f32,
    /// Shannon entropy of the route mix, in bits.
    pub route_entropy: f32,
    /// Shares of 401, 403, 404 and 429 answers.
    pub share_401: f32,
    /// See `share_401`.
    pub share_403: f32,
    /// See `share_401`.
    pub share_404: f32,
    /// See `share_401`.
    pub share_429: f32,
    /// Requests sent while a `Retry-After` ran.
    pub after_429: f32,
    /// Distinct user agents, addresses, ASNs and countries (keys and accounts).
    pub distinct_user_agents: u32,
    /// See `distinct_user_agents`.
    pub distinct_ips: u32,
    /// See `distinct_user_agents`.
    pub distinct_asns: u32,
    /// See `distinct_user_agents`.
    pub distinct_countries: u32,
    /// Distinct keys and accounts (sources).
    pub distinct_keys: u32,
    /// See `distinct_keys`.
    pub distinct_accounts: u32,
    /// Login attempts, failures and distinct usernames tried.
    pub logins: f32,
    /// See `logins`.
    pub failed_logins: f32,
    /// See `logins`.
    pub distinct_usernames: u32,
    /// Longest current walk of small id steps, and distinct ids seen.
    pub id_run: u32,
    /// See `id_run`.
    pub distinct_ids: u32,
    /// Distinct non-resource parameter values on cache-key routes.
    pub cache_busting_values: u32,
    /// Remembered signals and their decayed weight.
    pub remembered: Vec<(String, u8)>,
    /// What the remembered signals add to this identity's requests now (0-100).
    pub score: u8,
    /// Remembered signals that are anonymous clients' habits (walking ids, steady timing, one
    /// route, errors, cache busting): they do not count for requests made with a verified key or
    /// token.
    pub discounted_when_keyed: Vec<String>,
    /// What the remembered signals add to a keyed request now: `score` without the habits.
    pub keyed_score: u8,
    /// Progressive throttling level (0: none).
    pub throttle_level: u8,
}

/// Whether the signal at `index` is an anonymous client's habit (flows, past the signals, are not).
fn habit(index: usize) -> bool {
    Sig::ALL
        .get(index)
        .is_some_and(|s| crate::detect::trust::is_habit(*s))
}

impl Behaviour {
    /// The features of one identity, if tracked.
    pub fn report(
        &self,
        dim: Dim,
        key: u64,
        now: Nanos,
        names: &dyn Fn(usize) -> String,
    ) -> Option<FeatureReport> {
        let table = self.tables.get(dim.index())?.as_ref()?;
        let mut f = table.peek(key)?;
        let p = &self.policy;
        f.roll(now, p.window);
        f.decay(now, p.half_life);
        let requests = f.est(now, p.window, |c| c.requests);
        let share = |g: fn(&Counts) -> u16| {
            if requests > 0.0 {
                f.est(now, p.window, |c| u32::from(g(c))) / requests
            } else {
                0.0
            }
        };
        let (top, entropy) = f.route_share_and_entropy(now, p.window);
        let window_secs = (p.window as f32 / SECOND as f32).max(1.0);
        let idle = now.saturating_sub(f.last) as f32;
        Some(FeatureReport {
            requests,
            rate_short: f.short_rate * (-idle / p.short_window.max(1) as f32).exp()
                / (p.short_window as f32 / SECOND as f32).max(1.0),
            rate_long: requests / window_secs,
            regularity_cv: f.regularity(),
            mean_gap_secs: f.gap_mean,
            top_route_share: top,
            route_entropy: entropy,
            share_401: share(|c| c.s401),
            share_403: share(|c| c.s403),
            share_404: share(|c| c.s404),
            share_429: share(|c| c.s429),
            after_429: f.est(now, p.window, |c| u32::from(c.after_429)),
            distinct_user_agents: f.distinct(Distinct::UserAgents),
            distinct_ips: f.distinct(Distinct::Ips),
            distinct_asns: f.distinct(Distinct::Asns),
            distinct_countries: f.distinct(Distinct::Countries),
            distinct_keys: f.distinct(Distinct::Keys),
            distinct_accounts: f.distinct(Distinct::Accounts),
            logins: f.est(now, p.window, |c| u32::from(c.logins)),
            failed_logins: f.est(now, p.window, |c| u32::from(c.failed_logins)),
            distinct_usernames: f.distinct(Distinct::Usernames),
            id_run: u32::from(f.id_run),
            distinct_ids: f.distinct(Distinct::Ids),
            cache_busting_values: f.distinct(Distinct::Busting),
            remembered: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0)
                .map(|(t, a)| (names(usize::from(*t) - 1), a.round() as u8))
                .collect(),
            score: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0)
                .map(|(_, a)| a.round() as u32)
                .sum::<u32>()
                .min(100) as u8,
            discounted_when_keyed: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0 && habit(usize::from(*t) - 1))
                .map(|(t, _)| names(usize::from(*t) - 1))
                .collect(),
            keyed_score: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0 && !habit(usize::from(*t) - 1))
                .map(|(_, a)| a.round() as u32)
                .sum::<u32>()
                .min(100) as u8,
            throttle_level: f.level,
        })
    }
}
