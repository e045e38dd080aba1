//! The detectors: a request counted in every tracked dimension and read against the thresholds
//! (assess), its answer observed, and progressive throttling's steps.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::Ordering;

use crate::clock::{Nanos, SECOND};
use crate::model::facts::RequestFacts;
use crate::model::principal::Principal;
use crate::request::route::RouteId;

use super::*;

pub(super) fn hash_one(h: &impl BuildHasher, tag: u8, value: impl Hash) -> u64 {
    let mut s = h.build_hasher();
    tag.hash(&mut s);
    value.hash(&mut s);
    s.finish()
}

/// The numeric id a request addresses: the last path segment, or a configured query parameter.
pub(super) fn request_id(path: &str, query: Option<&str>, params: &[String]) -> Option<u64> {
    // The last segment, found from the end by bytes (no string searcher).
    let bytes = path.as_bytes();
    let last = bytes
        .iter()
        .rposition(|b| *b == b'/')
        .map_or(bytes, |i| bytes.get(i + 1..).unwrap_or_default());
    if !last.is_empty() && last.len() <= 18 && last.iter().all(u8::is_ascii_digit) {
        return Some(last.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if params.iter().any(|p| p == k)
            && !v.is_empty()
            && v.len() <= 18
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            return v.parse().ok();
        }
    }
    None
}

/// A cookie's value in the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    for v in crate::request::header_all(headers, &http::header::COOKIE) {
        for part in v.as_bytes().split(|b| *b == b';') {
            let part = part.trim_ascii();
            if let Some(rest) = part.strip_prefix(name.as_bytes())
                && let Some(value) = rest.strip_prefix(b"=")
                && !value.is_empty()
            {
                return Some(value);
            }
        }
    }
    None
}

impl Behaviour {
    /// The hashed value of each dimension for one request.
    pub(super) fn keys(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
    ) -> [Option<u64>; DIMS] {
        let ip = facts.client_ip.to_canonical();
        let mut keys = [None; DIMS];
        for d in Dim::ALL {
            if self.tables.get(d.index()).is_none_or(Option::is_none) {
                continue;
            }
            let k = match d {
                Dim::Ip | Dim::Prefix => Some(self.ip_key(d, ip)),
                Dim::ApiKey => principal
                    .and_then(|p| p.key_id.as_deref())
                    .map(|k| self.key_of(d, k.as_bytes())),
                Dim::Account => principal
                    .and_then(|p| p.account.as_deref())
                    .map(|a| self.key_of(d, a.as_bytes())),
                Dim::Session => self.session(facts, principal).map(|s| self.key_of(d, s)),
                Dim::Ja4h => facts.ja4h.map(|j| self.key_of(d, j.as_bytes())),
                Dim::Hfp => facts.hfp.map(|h| self.key_of(d, h.as_bytes())),
                Dim::Asn => facts
                    .ip_info
                    .filter(|i| i.asn != 0)
                    .map(|i| self.key_of(d, &i.asn.to_be_bytes())),
            };
            if let Some(slot) = keys.get_mut(d.index()) {
                *slot = k;
            }
        }
        keys
    }

    pub(super) fn session<'a>(
        &self,
        facts: &RequestFacts<'a>,
        principal: Option<&'a Principal>,
    ) -> Option<&'a [u8]> {
        for s in &self.policy.session {
            let v = match s {
                SessionSource::Cookie(name) => cookie(facts.headers, name),
                SessionSource::Header(name) => facts.headers.get(name).map(|v| v.as_bytes()),
                SessionSource::Jwt(claim) => {
                    principal.and_then(|p| p.claim(claim)).map(str::as_bytes)
                }
                SessionSource::ApiKey => principal
                    .and_then(|p| p.key_id.as_deref())
                    .map(str::as_bytes),
            };
            if let Some(v) = v.filter(|v| !v.is_empty() && v.len() <= 512) {
                return Some(v);
            }
        }
        None
    }

    /// Counts one request and judges every identity it carries. Pushes the signals (with
    /// remembered ones, decayed) into `out`, at most one per signal, strongest weight.
    pub fn assess(
        &self,
        facts: &RequestFacts<'_>,
        route: RouteId,
        username: Option<&[u8]>,
        key_created_ms: Option<u64>,
        out: &mut Vec<Emitted>,
    ) -> Trace {
        let p = &self.policy;
        let principal = facts.auth.principal();
        let now = facts.now;
        let keys = self.keys(facts, principal);
        let ip = facts.client_ip.to_canonical();
        // What a key or account is seen from (its addresses, user agents, networks and
        // countries) is counted only on those records: without one (most anonymous traffic)
        // these hashes are not made.
        let principal_keys = [Dim::ApiKey, Dim::Account]
            .iter()
            .any(|d| keys.get(d.index()).is_some_and(Option::is_some));
        let ip_hash = principal_keys.then(|| hash_one(&self.hasher, 1, ip));
        let ua_hash = crate::request::header(facts.headers, &http::header::USER_AGENT)
            .filter(|_| principal_keys)
            .map(|v| hash_one(&self.hasher, 2, v.as_bytes()));
        let (asn_hash, country_hash) = match facts.ip_info {
            Some(i) if principal_keys => (
                (i.asn != 0).then(|| hash_one(&self.hasher, 3, i.asn)),
                (!i.country.is_empty()).then(|| hash_one(&self.hasher, 4, &*i.country)),
            ),
            _ => (None, None),
        };
        let key_hash = principal
            .and_then(|p| p.key_id.as_deref())
            .map(|k| hash_one(&self.hasher, 5, k));
        let account_hash = principal
            .and_then(|p| p.account.as_deref())
            .map(|a| hash_one(&self.hasher, 6, a));
        let login = p.stuffing.as_ref().is_some_and(|s| s.route == route);
        let username = username
            .filter(|_| login)
            .map(|u| hash_one(&self.hasher, 7, u));
        let id = request_id(facts.path, facts.query, &p.id_params);
        let id_hash = id.map(|id| hash_one(&self.hasher, 8, id));
        let busting = p
            .cache_keys
            .iter()
            .find(|c| c.route == route)
            .map(|c| self.busting_hash(route, facts.query, &c.params));
        let route_bucket = route % ROUTE_BUCKETS;
        // The client's network (whether or not prefixes are tracked), for telling co-located
        // groups from unrelated clients that share a library or a cloud.
        let prefix_key = Some(
            keys.get(Dim::Prefix.index())
                .copied()
                .flatten()
                .unwrap_or_else(|| self.ip_key(Dim::Prefix, facts.client_ip.to_canonical())),
        );
        let anonymous = principal.is_none();
        let flow_slots = self.flow_slots();
        let mut emitted: [u8; SIGS] = [0; SIGS];
        let w = &p.weights;
        let t = &p.thresholds;
        let weight = |s: Sig| w.get(s.index()).copied().unwrap_or(0);
        let emit = |emitted: &mut [u8; SIGS], s: Sig, wt: u8| {
            if let Some(e) = emitted.get_mut(s.index()) {
                *e = (*e).max(wt);
            }
        };

        // Throttling is kept on the key when there is one, else on the address.
        let throttle = [Dim::ApiKey, Dim::Ip].into_iter().find_map(|d| {
            let key = (*keys.get(d.index())?)?;
            Some((d, key))
        });
        let mut flow_last: [Nanos; FLOW_SLOTS] = [0; FLOW_SLOTS];
        // Whether this request's own network carries many keys or accounts (from the /24, or the
        // address when networks are not tracked; unknown when neither is). A group seen behind a
        // fingerprint or an ASN is evidence only against requests from such a network: a customer
        // on the same library as a swarm, from its own network, is not part of it.
        let mut crowded_network: Option<bool> = None;
        for d in Dim::ALL {
            let (Some(Some(table)), Some(Some(key))) =
                (self.tables.get(d.index()), keys.get(d.index()))
            else {
                continue;
            };
            let key = *key;
            let similar = table
                .with(
                    key,
                    || Features::fresh(now, p.window),
                    |f| {
                        f.roll(now, p.window);
                        // Rate and regularity.
                        if f.last > 0 && now > f.last {
                            let gap = (now - f.last) as f32 / SECOND as f32;
                            let a = 0.1f32;
                            if f.gaps == 0 {
                                f.gap_mean = gap;
                                f.gap_sq = gap * gap;
                            } else {
                                f.gap_mean += a * (gap - f.gap_mean);
                                f.gap_sq += a * (gap * gap - f.gap_sq);
                            }
                            f.gaps = f.gaps.saturating_add(1);
                            let decay =
                                (-((now - f.last) as f32) / p.short_window.max(1) as f32).exp();
                            f.short_rate = f.short_rate * decay + 1.0;
                        } else if f.last == 0 {
                            f.short_rate = 1.0;
                        } else {
                            f.short_rate += 1.0;
                        }
                        f.last = now;
                        if p.shared && !f.queued {
                            f.queued = self.queue_share(d.index() as u8, key);
                        }
                        let c = &mut f.cur;
                        c.requests = c.requests.saturating_add(1);
                        if let Some(r) = c.routes.get_mut(route_bucket) {
                            *r = r.saturating_add(1);
                        }
                        if now < f.quiet_until && f.quiet_route == route {
                            c.after_429 = c.after_429.saturating_add(1);
                        }
                        if d.is_principal() {
                            if let Some(h) = ua_hash {
                                f.add_distinct(Distinct::UserAgents, h);
                            }
                            if let Some(h) = ip_hash {
                                f.add_distinct(Distinct::Ips, h);
                            }
                            if let Some(h) = asn_hash {
                                f.add_distinct(Distinct::Asns, h);
                            }
                            if let Some(h) = country_hash {
                                f.add_distinct(Distinct::Countries, h);
                            }
                        }
                        if d.is_source() {
                            // Behind a fingerprint or an ASN: the networks it is seen from
                            // (the address slot is unused on these dimensions).
                            if matches!(d, Dim::Ja4h | Dim::Hfp | Dim::Asn)
                                && let Some(net) = prefix_key
                            {
                                f.add_distinct(Distinct::Ips, net);
                            }
                            if let Some(h) = key_hash {
                                f.add_distinct(Distinct::Keys, h);
                            }
                            if let Some(h) = account_hash {
                                f.add_distinct(Distinct::Accounts, h);
                            }
                            if login {
                                f.cur.logins = f.cur.logins.saturating_add(1);
                                if let Some(u) = username {
                                    f.add_distinct(Distinct::Usernames, u);
                                }
                            }
                        }
                        if let Some(id) = id {
                            let step = id.abs_diff(f.last_id);
                            if f.last_id != 0 && (1..=3).contains(&step) {
                                f.id_run = f.id_run.saturating_add(1);
                                f.cur.id_steps = f.cur.id_steps.saturating_add(1);
                            } else if step != 0 {
                                f.id_run = 0;
                            }
                            f.last_id = id;
                            f.cur.id_min = if f.cur.id_min == 0 {
                                id
                            } else {
                                f.cur.id_min.min(id)
                            };
                            f.cur.id_max = f.cur.id_max.max(id);
                            if let Some(h) = id_hash {
                                f.add_distinct(Distinct::Ids, h);
                            }
                        }
                        if let Some(b) = busting {
                            f.cur.busting_requests = f.cur.busting_requests.saturating_add(1);
                            f.add_distinct(Distinct::Busting, b);
                        }
                        if d == Dim::Session || d == Dim::Ip {
                            for (slot, seen) in flow_last.iter_mut().zip(f.flow_seen) {
                                *slot = (*slot).max(seen);
                            }
                        }

                        // Detectors.
                        // One bit per signal (`SIGS` fit a word): most requests fire none,
                        // and then there is nothing to remember.
                        let mut fired: u32 = 0;
                        let mut fire = |s: Sig| fired |= 1 << s.index();
                        let requests = f.est(now, p.window, |c| c.requests);
                        let individual = d.is_individual();
                        if individual
                            && f.gaps >= t.regular_min_gaps
                            && f.regularity().is_some_and(|cv| cv < t.regular_cv)
                        {
                            fire(Sig::Regular);
                        }
                        if d.judges_walks() && requests >= t.min_requests as f32 {
                            let share = f.route_share(now, p.window);
                            if individual
                                && share >= t.one_route_share
                                && requests >= 5.0 * t.min_requests as f32
                            {
                                fire(Sig::OneRoute);
                            }
                            let errors = f.est(now, p.window, |c| {
                                u32::from(c.s401) + u32::from(c.s403) + u32::from(c.s404)
                            });
                            if errors / requests >= t.error_share {
                                fire(Sig::Errors);
                            }
                        }
                        if individual
                            && f.est(now, p.window, |c| u32::from(c.after_429))
                                >= t.ignored_429s as f32
                        {
                            fire(Sig::IgnoresRetryAfter);
                        }
                        if d.is_principal() {
                            if f.distinct(Distinct::UserAgents) >= t.user_agents {
                                fire(Sig::ManyUserAgents);
                            }
                            if f.distinct(Distinct::Ips) >= t.ips {
                                fire(Sig::ManyIps);
                            }
                            if f.distinct(Distinct::Countries) >= t.countries {
                                fire(Sig::ManyCountries);
                            }
                            if f.distinct(Distinct::Asns) >= t.asns {
                                fire(Sig::ManyAsns);
                            }
                        }
                        // A fingerprint or ASN seen from many networks is shared by unrelated
                        // clients (a library, a cloud): the keys behind it are no group.
                        let shared = matches!(d, Dim::Ja4h | Dim::Hfp | Dim::Asn);
                        let many_keys = f.distinct(Distinct::Keys) >= t.keys_per_source;
                        let many_accounts = f.distinct(Distinct::Accounts) >= t.keys_per_source;
                        if matches!(d, Dim::Ip | Dim::Prefix) {
                            crowded_network = Some(many_keys || many_accounts);
                        }
                        let member = crowded_network.unwrap_or(true);
                        let co_located = !shared
                            || (member && f.distinct(Distinct::Ips) < t.shared_source_networks);
                        if d.is_source() && co_located {
                            if many_keys {
                                fire(match d {
                                    Dim::Ip => Sig::KeysPerIp,
                                    Dim::Prefix => Sig::KeysPerPrefix,
                                    Dim::Ja4h | Dim::Hfp => Sig::KeysPerFingerprint,
                                    _ => Sig::KeysPerAsn,
                                });
                            }
                            if many_accounts {
                                fire(Sig::AccountsPerSource);
                            }
                        }
                        if d.is_source()
                            && let Some(s) = &p.stuffing
                        {
                            let failed = f.est(now, p.window, |c| u32::from(c.failed_logins));
                            let logins = f.est(now, p.window, |c| u32::from(c.logins));
                            if failed >= s.min_failures as f32
                                && f.distinct(Distinct::Usernames) >= s.min_usernames
                                && failed >= s.failure_share * logins.max(1.0)
                            {
                                fire(Sig::StuffingSource);
                            }
                        }
                        if !d.judges_walks() {
                            // Group dimensions: no walk or busting judgement.
                        } else if f.id_run as u32 >= t.enumeration_run {
                            fire(Sig::Enumeration);
                        } else {
                            let distinct = f.distinct(Distinct::Ids);
                            let span = f.cur.id_max.saturating_sub(f.cur.id_min) + 1;
                            if distinct >= t.enumeration_distinct && span <= 2 * u64::from(distinct)
                            {
                                fire(Sig::Enumeration);
                            }
                        }
                        if busting.is_some() && d.judges_walks() {
                            let distinct = f.distinct(Distinct::Busting);
                            let n = f.est(now, p.window, |c| u32::from(c.busting_requests));
                            if distinct >= t.cache_busting_distinct
                                && distinct as f32 >= 0.8 * n.min(266.0)
                            {
                                fire(Sig::CacheBusting);
                            }
                        }

                        // Remember what fired; report what fired and what is still remembered.
                        f.decay(now, p.half_life);
                        while fired != 0 {
                            let i = fired.trailing_zeros() as usize;
                            fired &= fired - 1;
                            let wt = Sig::ALL.get(i).map_or(0, |s| weight(*s));
                            if wt > 0 {
                                f.remember(i, wt);
                            }
                        }
                        for (tag, amount) in f.memory {
                            let group = matches!(
                                Sig::ALL.get(usize::from(tag).wrapping_sub(1)),
                                Some(
                                    Sig::KeysPerFingerprint
                                        | Sig::KeysPerAsn
                                        | Sig::AccountsPerSource
                                )
                            );
                            if tag > 0 && !(shared && group && !member) {
                                emit(
                                    &mut emitted,
                                    Sig::ALL
                                        .get(usize::from(tag) - 1)
                                        .copied()
                                        .unwrap_or(Sig::Regular),
                                    amount.round().min(100.0) as u8,
                                );
                            }
                        }
                        // Signature of behaviour, for near-identical keys.
                        if d == Dim::ApiKey && requests >= t.min_requests as f32 {
                            let rate = requests / (p.window as f32 / SECOND as f32);
                            let cv = f.regularity().unwrap_or(1.0);
                            let share = f.route_share(now, p.window);
                            let errors = f.est(now, p.window, |c| {
                                u32::from(c.s401) + u32::from(c.s403) + u32::from(c.s404)
                            }) / requests;
                            Some(hash_one(
                                &self.hasher,
                                9,
                                (
                                    (rate.max(1e-3).log2() * 2.0).round() as i32,
                                    (cv * 10.0).round().min(10.0) as i32,
                                    (share * 5.0).round() as i32,
                                    (errors * 5.0).round() as i32,
                                    route_bucket,
                                    facts.ja4h,
                                ),
                            ))
                        } else {
                            None
                        }
                    },
                )
                .and_then(|sig| {
                    let count = self
                        .similar
                        .with(sig, Group::default, |g| g.add(now, p.window, key));
                    (count >= t.group_keys).then_some(())
                });
            if similar.is_some() {
                emit(&mut emitted, Sig::SimilarKeys, weight(Sig::SimilarKeys));
            }
        }

        // One username failing from many sources.
        if let (Some(u), Some(targets), Some(s)) = (username, &self.targets, &p.stuffing) {
            let epoch = now / p.window.max(1);
            if let Some(t) = targets.peek(u) {
                let sources = if t.epoch == epoch || t.epoch + 1 == epoch {
                    sketch_estimate(t.sources_cur | t.sources_prev)
                } else {
                    0
                };
                if sources >= s.sources_per_username {
                    emit(
                        &mut emitted,
                        Sig::StuffingTarget,
                        weight(Sig::StuffingTarget),
                    );
                }
            }
        }

        // Keys created together that became active together.
        if let (Some(created), Some(k)) = (key_created_ms, key_hash)
            && facts.unix_ms.saturating_sub(created) < 24 * 3_600_000
        {
            // Onboarding creates keys together; a swarm's keys are also used from one network.
            let cohort = hash_one(&self.hasher, 10, (created / 3_600_000, prefix_key));
            let n = self
                .cohorts
                .with(cohort, Group::default, |g| g.add(now, p.window, k));
            if n >= t.group_keys {
                emit(&mut emitted, Sig::KeyCohort, weight(Sig::KeyCohort));
            }
        }

        for (i, wt) in emitted.iter().enumerate() {
            if *wt > 0 {
                out.push(Emitted {
                    index: i,
                    weight: *wt,
                });
            }
        }

        // Flows (after the signals, each straight into `out`).
        for (i, flow) in p.flows.iter().enumerate() {
            if flow.route != route || (flow.anonymous_only && !anonymous) {
                continue;
            }
            let slot = flow_slots
                .iter()
                .position(|r| *r == flow.after)
                .and_then(|s| flow_last.get(s))
                .copied()
                .unwrap_or(0);
            let ok = slot > 0
                && now.saturating_sub(slot) <= flow.within
                && now.saturating_sub(slot) >= flow.min_gap;
            if !ok {
                out.push(Emitted {
                    index: SIGS + i,
                    weight: flow.weight,
                });
            }
        }
        self.count_route(route, now, false);
        Trace {
            keys,
            route,
            username,
            // For the stuffing targets, which count the addresses a username fails from.
            ip_hash: username.map(|_| ip_hash.unwrap_or_else(|| hash_one(&self.hasher, 1, ip))),
            throttle,
        }
    }

    /// The distinct `after` routes of the flows, in slot order (at most [`FLOW_SLOTS`]).
    pub(super) fn flow_slots(&self) -> &[RouteId] {
        &self.flow_slots
    }

    pub(super) fn busting_hash(
        &self,
        route: RouteId,
        query: Option<&str>,
        params: &[String],
    ) -> u64 {
        let mut s = self.hasher.build_hasher();
        11u8.hash(&mut s);
        route.hash(&mut s);
        if let Some(q) = query {
            let mut pairs: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    !k.is_empty() && !params.iter().any(|p| p == k)
                })
                .take(32)
                .collect();
            pairs.sort_unstable();
            pairs.hash(&mut s);
        }
        s.finish()
    }

    /// A login's username learnt after its decision (from the front's access log, when
    /// Palisade decided without seeing the body): counted among its sources' usernames as if
    /// it had been read then, and kept on the trace for the failed-login accounting.
    pub fn learn_username(&self, trace: &mut Trace, username: &[u8]) {
        let login = self
            .policy
            .stuffing
            .as_ref()
            .is_some_and(|s| s.route == trace.route);
        if trace.username.is_some() || !login {
            return;
        }
        let u = hash_one(&self.hasher, 7, username);
        trace.username = Some(u);
        for d in Dim::ALL.into_iter().filter(|d| d.is_source()) {
            if let (Some(Some(table)), Some(Some(key))) =
                (self.tables.get(d.index()), trace.keys.get(d.index()))
            {
                table.update(*key, |f| f.add_distinct(Distinct::Usernames, u));
            }
        }
    }

    /// Records the answer to a request: status mix, 429s and their `Retry-After`, failed
    /// logins, successful flow steps, the route's baseline.
    /// `upstream`: the upstream answered. The gateway's own answers (refusals, bounds) are no
    /// evidence about the client, except that a 429 starts a `Retry-After` it must honour.
    pub fn observe(
        &self,
        trace: &Trace,
        status: u16,
        upstream: bool,
        retry_after: Nanos,
        now: Nanos,
    ) {
        let p = &self.policy;
        if !upstream && status != 429 {
            return;
        }
        let failed_login = upstream
            && p.stuffing
                .as_ref()
                .is_some_and(|s| s.route == trace.route && s.failure_status.contains(&status));
        let flow_slot = self
            .flow_slots()
            .iter()
            .position(|r| *r == trace.route)
            .filter(|_| upstream && status < 400);
        // Most answers change nothing on the records (a 2xx off the flows' routes): the records
        // are not looked up again for them (their windows roll on the next request).
        let records =
            matches!(status, 401 | 403 | 404 | 429) || failed_login || flow_slot.is_some();
        for d in Dim::ALL.into_iter().filter(|_| records) {
            let (Some(Some(table)), Some(Some(key))) =
                (self.tables.get(d.index()), trace.keys.get(d.index()))
            else {
                continue;
            };
            table.with(
                *key,
                || Features::fresh(now, p.window),
                |f| {
                    f.roll(now, p.window);
                    let c = &mut f.cur;
                    match status {
                        401 => c.s401 = c.s401.saturating_add(1),
                        403 => c.s403 = c.s403.saturating_add(1),
                        404 => c.s404 = c.s404.saturating_add(1),
                        429 => {
                            c.s429 = c.s429.saturating_add(1);
                            f.quiet_until = now.saturating_add(retry_after);
                            f.quiet_route = trace.route;
                        }
                        _ => {}
                    }
                    if failed_login && d.is_source() {
                        f.cur.failed_logins = f.cur.failed_logins.saturating_add(1);
                    }
                    if let Some(slot) = flow_slot
                        && (d == Dim::Session || d == Dim::Ip)
                        && let Some(s) = f.flow_seen.get_mut(slot)
                    {
                        *s = now;
                    }
                },
            );
        }
        if failed_login {
            self.failed_logins.fetch_add(1, Ordering::Relaxed);
            if let (Some(u), Some(ip_hash), Some(targets)) =
                (trace.username, trace.ip_hash, &self.targets)
            {
                let epoch = now / p.window.max(1);
                targets.with(u, Target::default, |t| {
                    if t.epoch != epoch {
                        t.sources_prev = if t.epoch + 1 == epoch {
                            t.sources_cur
                        } else {
                            0
                        };
                        t.sources_cur = 0;
                        t.epoch = epoch;
                    }
                    sketch_add(&mut t.sources_cur, ip_hash);
                    t.failures = t.failures.saturating_add(1);
                    if p.shared && !t.queued {
                        t.queued = self.queue_share(SHARED_TARGETS, u);
                    }
                });
            }
        }
        if upstream && (status == 401 || status == 403 || status >= 500 || failed_login) {
            self.count_route(trace.route, now, true);
        }
    }

    /// Progressive throttling: records an offence (or good behaviour) on the request's throttle
    /// record and returns the level to apply (0 = first step). Levels rise by one when the
    /// client offends again after serving its current step, and fall by one per `relax` of
    /// good behaviour.
    pub fn throttle(
        &self,
        trace: &Trace,
        now: Nanos,
        offence: bool,
        steps: &[Nanos],
        relax: Nanos,
    ) -> u8 {
        let Some((d, key)) = trace.throttle else {
            return 0;
        };
        let Some(Some(table)) = self.tables.get(d.index()) else {
            return 0;
        };
        let window = self.policy.window;
        table.with(
            key,
            || Features::fresh(now, window),
            |f| {
                if f.level > 0 && f.last_offense > 0 && relax > 0 {
                    let calm = now.saturating_sub(f.last_offense.max(f.level_at)) / relax;
                    if calm > 0 {
                        f.level = f.level.saturating_sub(calm.min(255) as u8);
                        f.level_at = now;
                    }
                }
                if !offence {
                    return f.level;
                }
                let current = steps
                    .get(usize::from(f.level.saturating_sub(1)))
                    .copied()
                    .unwrap_or(0);
                if f.level == 0 {
                    f.level = 1;
                    f.level_at = now;
                } else if now >= f.level_at.saturating_add(current) {
                    f.level = f.level.saturating_add(1);
                    f.level_at = now;
                }
                f.last_offense = now;
                f.level
            },
        )
    }
}
