//! IP intelligence: the network (ASN), its owner and country from the iptoasn TSV
//! (`ip2asn-combined.tsv`: `range_start  range_end  AS_number  country_code  AS_description`),
//! the kind of network (hosting, VPN, mobile, residential) from an ASN category list, and Tor exit
//! addresses from a list file.
//!
//! Addresses are kept as `u128` (IPv4 mapped into IPv6), ranges sorted, look-ups a binary
//! search. Nothing is downloaded: operators point the config at files they keep fresh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What kind of network an ASN is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsnCategory {
    /// Cloud, hosting and data-centre networks.
    Hosting,
    /// Commercial VPN and proxy providers.
    Vpn,
    /// Mobile carriers.
    Mobile,
    /// Residential ISPs.
    Residential,
}

impl AsnCategory {
    /// The name in lists, signals and logs.
    pub fn name(&self) -> &'static str {
        match self {
            AsnCategory::Hosting => "hosting",
            AsnCategory::Vpn => "vpn",
            AsnCategory::Mobile => "mobile",
            AsnCategory::Residential => "residential",
        }
    }

    /// Parses a category name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hosting" | "datacenter" => Some(AsnCategory::Hosting),
            "vpn" | "proxy" => Some(AsnCategory::Vpn),
            "mobile" => Some(AsnCategory::Mobile),
            "residential" => Some(AsnCategory::Residential),
            _ => None,
        }
    }
}

/// The starter list of large hosting and VPN networks shipped with Palisade.
pub const BUILTIN_ASN_CATEGORIES: &str = include_str!("../data/asn-categories.txt");

/// What Palisade knows about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpInfo {
    /// Autonomous system number (0 if unknown).
    pub asn: u32,
    /// ISO 3166 country code, upper case (empty if unknown).
    pub country: Arc<str>,
    /// The AS owner's name.
    pub as_name: Arc<str>,
    /// The network's kind, if listed.
    pub category: Option<AsnCategory>,
    /// Whether the address is a Tor exit.
    pub tor_exit: bool,
}

#[derive(Debug, Clone)]
struct AsnRange {
    start: u128,
    end: u128,
    asn: u32,
    country: Arc<str>,
    name: Arc<str>,
}

/// An address as a `u128`, IPv4 mapped into IPv6 (so both families sort in one space).
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A MaxMind-format database (GeoLite2 / DB-IP lite, ASN or country).
#[derive(Clone)]
struct Mmdb {
    name: String,
    reader: Arc<maxminddb::Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Mmdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmdb").field("name", &self.name).finish()
    }
}

/// Everything loaded for IP look-ups.
#[derive(Debug, Clone, Default)]
pub struct IpIntel {
    ranges: Vec<AsnRange>,
    categories: HashMap<u32, AsnCategory>,
    tor: Vec<u128>,
    mmdbs: Vec<Mmdb>,
}

/// A problem in a data file, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct DataError {
    /// File.
    pub file: String,
    /// Line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// At most this many bad lines are reported per file.
const MAX_REPORTED: usize = 5;

impl IpIntel {
    /// Nothing loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the ranges of an iptoasn TSV file. Rows for unrouted space (`AS 0`) are skipped.
    pub fn load_iptoasn(&mut self, file: &str, text: &str) -> Result<usize, Vec<DataError>> {
        let mut errors = Vec::new();
        let before = self.ranges.len();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split('\t');
            let (Some(a), Some(b), Some(asn), country, name) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                if errors.len() < MAX_REPORTED {
                    errors.push(DataError {
                        file: file.to_owned(),
                        line: i + 1,
                        message: "expected range_start, range_end, AS number, country, description separated by tabs".to_owned(),
                    });
                }
                continue;
            };
            let parsed = (
                a.trim().parse::<IpAddr>(),
                b.trim().parse::<IpAddr>(),
                asn.trim().parse::<u32>(),
            );
            let (Ok(a), Ok(b), Ok(asn)) = parsed else {
                if errors.len() < MAX_REPORTED {
                    errors.push(DataError {
                        file: file.to_owned(),
                        line: i + 1,
                        message: "bad address or AS number".to_owned(),
                    });
                }
                continue;
            };
            if asn == 0 {
                continue;
            }
            let (start, end) = (to_u128(a), to_u128(b));
            if end < start || a.is_ipv4() != b.is_ipv4() {
                if errors.len() < MAX_REPORTED {
                    errors.push(DataError {
                        file: file.to_owned(),
                        line: i + 1,
                        message: "the range ends before it starts".to_owned(),
                    });
                }
                continue;
            }
            let country = country.unwrap_or("").trim();
            let country = if country == "None" || country.len() != 2 {
                ""
            } else {
                country
            };
            let name = name.unwrap_or("").trim().to_owned();
            let name = names
                .entry(name.clone())
                .or_insert_with(|| Arc::from(name.as_str()))
                .clone();
            self.ranges.push(AsnRange {
                start,
                end,
                asn,
                country: Arc::from(country.to_ascii_uppercase().as_str()),
                name,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.ranges.sort_by_key(|r| r.start);
        Ok(self.ranges.len() - before)
    }

    /// Adds ASN categories from lines like `AS16509 hosting  # Amazon` (or `16509 hosting`).
    pub fn load_categories(&mut self, file: &str, text: &str) -> Result<usize, Vec<DataError>> {
        let mut errors = Vec::new();
        let mut n = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut f = line.split_whitespace();
            let asn = f
                .next()
                .map(|a| a.trim_start_matches("AS").trim_start_matches("as"))
                .and_then(|a| a.parse::<u32>().ok());
            let cat = f.next().and_then(AsnCategory::parse);
            match (asn, cat) {
                (Some(asn), Some(cat)) => {
                    self.categories.insert(asn, cat);
                    n += 1;
                }
                _ if errors.len() < MAX_REPORTED => errors.push(DataError {
                    file: file.to_owned(),
                    line: i + 1,
                    message: "expected `AS<number> <hosting|vpn|mobile|residential>`".to_owned(),
                }),
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(errors)
        }
    }

    /// Adds Tor exit addresses: one address per line, or the `ExitAddress <ip> <date>` lines of
    /// the Tor project's exit list; `#` comments.
    pub fn load_tor_exits(&mut self, file: &str, text: &str) -> Result<usize, Vec<DataError>> {
        let mut errors = Vec::new();
        let before = self.tor.len();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty()
                || line.starts_with("ExitNode")
                || line.starts_with("Published")
                || line.starts_with("LastStatus")
            {
                continue;
            }
            let token = line
                .strip_prefix("ExitAddress")
                .map_or(line, str::trim)
                .split_whitespace()
                .next()
                .unwrap_or("");
            match token.parse::<IpAddr>() {
                Ok(ip) => self.tor.push(to_u128(ip.to_canonical())),
                Err(_) if errors.len() < MAX_REPORTED => errors.push(DataError {
                    file: file.to_owned(),
                    line: i + 1,
                    message: format!("`{token}` is not an address"),
                }),
                Err(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.tor.sort_unstable();
        self.tor.dedup();
        Ok(self.tor.len() - before)
    }

    /// Adds a MaxMind-format database (ASN or country data; GeoLite2 or DB-IP lite). Returns
    /// its database type.
    pub fn load_mmdb(&mut self, name: &str, bytes: Vec<u8>) -> Result<String, String> {
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|e| format!("{name}: not a MaxMind DB: {e}"))?;
        let kind = reader.metadata.database_type.clone();
        self.mmdbs.push(Mmdb {
            name: name.to_owned(),
            reader: Arc::new(reader),
        });
        Ok(kind)
    }

    /// Whether anything is loaded.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.tor.is_empty() && self.mmdbs.is_empty()
    }

    /// ASN, organisation and country from the MaxMind databases, for what the TSV lacks.
    fn fill_from_mmdb(
        &self,
        ip: IpAddr,
        asn: &mut u32,
        name: &mut Arc<str>,
        country: &mut Arc<str>,
    ) {
        for db in &self.mmdbs {
            let Ok(found) = db.reader.lookup(ip) else {
                continue;
            };
            if *asn == 0
                && let Ok(Some(a)) = found.decode::<maxminddb::geoip2::Asn<'_>>()
                && let Some(n) = a.autonomous_system_number
            {
                *asn = n;
                *name = Arc::from(a.autonomous_system_organization.unwrap_or(""));
            }
            if country.is_empty()
                && let Ok(Some(c)) = found.decode::<maxminddb::geoip2::Country<'_>>()
                && let Some(code) = c.country.iso_code
                && code.len() == 2
            {
                *country = Arc::from(code.to_ascii_uppercase().as_str());
            }
        }
    }

    /// Looks an address up. `None` when nothing at all is known about it.
    pub fn lookup(&self, ip: IpAddr) -> Option<IpInfo> {
        let x = to_u128(ip.to_canonical());
        let tor_exit = self.tor.binary_search(&x).is_ok();
        // The last range starting at or before x, if it also ends at or after it.
        let i = self.ranges.partition_point(|r| r.start <= x);
        let range = i
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .filter(|r| r.end >= x);
        let (mut asn, mut country, mut as_name) = match range {
            Some(r) => (r.asn, r.country.clone(), r.name.clone()),
            // Nothing more to learn: no strings made for a miss.
            None if self.mmdbs.is_empty() && !tor_exit => return None,
            None => (0, Arc::from(""), Arc::from("")),
        };
        if !self.mmdbs.is_empty() && (asn == 0 || country.is_empty()) {
            self.fill_from_mmdb(ip.to_canonical(), &mut asn, &mut as_name, &mut country);
        }
        if asn == 0 && country.is_empty() && !tor_exit {
            return None;
        }
        Some(IpInfo {
            asn,
            country,
            as_name,
            category: self.categories.get(&asn).copied(),
            tor_exit,
        })
    }

    /// The category of an ASN, if listed.
    pub fn category(&self, asn: u32) -> Option<AsnCategory> {
        self.categories.get(&asn).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
                       3.0.0.0\t3.127.255.255\t16509\tUS\tAMAZON-02\n\
                       5.0.0.0\t5.0.0.255\t0\tNone\tNot routed\n\
                       2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64500\tDE\tEXAMPLE-V6\n";

    #[test]
    fn iptoasn_lookups_categories_and_tor() {
        let mut db = IpIntel::new();
        assert_eq!(db.load_iptoasn("t.tsv", TSV).unwrap(), 3);
        db.load_categories("builtin", BUILTIN_ASN_CATEGORIES)
            .unwrap();
        db.load_tor_exits(
            "tor.txt",
            "ExitNode ABC\nExitAddress 3.1.2.3 2026-11-21 10:00:00\n# x\n198.51.100.9\n",
        )
        .unwrap();
        let a = db.lookup("3.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(
            (a.asn, &*a.country, &*a.as_name),
            (16509, "US", "AMAZON-02")
        );
        assert_eq!(a.category, Some(AsnCategory::Hosting));
        assert!(a.tor_exit);
        let v6 = db.lookup("2001:db8::7".parse().unwrap()).unwrap();
        assert_eq!((v6.asn, &*v6.country), (64500, "DE"));
        assert!(
            db.lookup("5.0.0.1".parse().unwrap()).is_none(),
            "unrouted space is unknown"
        );
        assert!(db.lookup("9.9.9.9".parse().unwrap()).is_none());
        let t = db.lookup("198.51.100.9".parse().unwrap()).unwrap();
        assert!(t.tor_exit && t.asn == 0);
        assert_eq!(
            db.lookup("::ffff:1.0.0.7".parse().unwrap()).unwrap().asn,
            13335
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_place() {
        let mut db = IpIntel::new();
        let errs = db
            .load_iptoasn("t.tsv", "1.0.0.0\t1.0.0.255\n2.0.0.9\t2.0.0.1\t5\tUS\tX\n")
            .unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].to_string().split(':').take(2).collect::<Vec<_>>(),
            ["t.tsv", "1"]
        );
        let errs = db
            .load_categories("c.txt", "AS1 hosting\nAS2 cloud\n")
            .unwrap_err();
        assert_eq!(errs[0].line, 2);
    }
}
