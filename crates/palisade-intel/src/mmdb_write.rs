//! A small writer of MaxMind DB files (format 2.0, 24-bit records, an IPv6 tree with IPv4 under
//! `::/96`), so tests and operators can build their own small databases instead of downloading
//! GeoLite2 or DB-IP files. It writes maps of strings and integers: enough for the ASN
//! (`autonomous_system_number`, `autonomous_system_organization`) and country
//! (`country.iso_code`) layouts.

use std::net::IpAddr;

/// A data value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A UTF-8 string.
    Str(String),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A map of string keys.
    Map(Vec<(String, Value)>),
}

const EMPTY: u32 = u32::MAX;
const DATA: u32 = 1 << 31;

fn ctrl(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first, ext) = if kind > 7 {
        (0u8, Some(kind - 7))
    } else {
        (kind << 5, None)
    };
    let size_bits = |out: &mut Vec<u8>, first: u8| {
        if size < 29 {
            out.push(first | size as u8);
        } else if size < 29 + 256 {
            out.push(first | 29);
        } else {
            out.push(first | 30);
        }
    };
    size_bits(out, first);
    if let Some(e) = ext {
        out.push(e);
    }
    if (29..29 + 256).contains(&size) {
        out.push((size - 29) as u8);
    } else if size >= 29 + 256 {
        let n = size - 285;
        out.push((n >> 8) as u8);
        out.push(n as u8);
    }
}

fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let tail = bytes.get(skip..).unwrap_or_default();
    ctrl(out, kind, tail.len());
    out.extend_from_slice(tail);
}

fn string(out: &mut Vec<u8>, s: &str) {
    ctrl(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn encode(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => string(out, s),
        Value::U32(n) => uint(out, 6, u64::from(*n)),
        Value::Map(entries) => {
            ctrl(out, 7, entries.len());
            for (k, v) in entries {
                string(out, k);
                encode(out, v);
            }
        }
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        // IPv4 lives under ::/96 in an IPv6 tree.
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Writes a database of `(network, prefix length, value)` entries. Prefix lengths are those of
/// the address family (an IPv4 /24 is written as /120 under `::/96`).
pub fn write(database_type: &str, entries: &[(IpAddr, u8, Value)]) -> Vec<u8> {
    let mut nodes: Vec<[u32; 2]> = vec![[EMPTY, EMPTY]];
    let mut data = Vec::new();
    for (ip, len, value) in entries {
        let offset = data.len() as u32;
        encode(&mut data, value);
        let (addr, len) = match ip {
            IpAddr::V4(_) => (bits(*ip), u32::from(*len) + 96),
            IpAddr::V6(_) => (bits(*ip), u32::from(*len)),
        };
        let mut node = 0usize;
        for i in 0..len.max(1) {
            let bit = ((addr >> (127 - i)) & 1) as usize;
            let last = i + 1 >= len;
            let Some(current) = nodes.get(node).and_then(|n| n.get(bit).copied()) else {
                break;
            };
            if last {
                if let Some(slot) = nodes.get_mut(node).and_then(|n| n.get_mut(bit)) {
                    *slot = DATA | offset;
                }
                break;
            }
            let next = if current == EMPTY || current & DATA != 0 {
                // A new branch (splitting a shorter prefix's data if there was one).
                nodes.push([current, current]);
                let idx = (nodes.len() - 1) as u32;
                if let Some(slot) = nodes.get_mut(node).and_then(|n| n.get_mut(bit)) {
                    *slot = idx;
                }
                idx
            } else {
                current
            };
            node = next as usize;
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::with_capacity(nodes.len() * 6 + data.len() + 256);
    for n in &nodes {
        for r in n {
            let v = if *r == EMPTY {
                node_count
            } else if r & DATA != 0 {
                node_count + 16 + (r & !DATA)
            } else {
                *r
            };
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let mut meta = Vec::new();
    ctrl(&mut meta, 7, 9);
    string(&mut meta, "node_count");
    uint(&mut meta, 6, u64::from(node_count));
    string(&mut meta, "record_size");
    uint(&mut meta, 5, 24);
    string(&mut meta, "ip_version");
    uint(&mut meta, 5, 6);
    string(&mut meta, "database_type");
    string(&mut meta, database_type);
    string(&mut meta, "languages");
    ctrl(&mut meta, 11, 1);
    string(&mut meta, "en");
    string(&mut meta, "binary_format_major_version");
    uint(&mut meta, 5, 2);
    string(&mut meta, "binary_format_minor_version");
    uint(&mut meta, 5, 0);
    string(&mut meta, "build_epoch");
    uint(&mut meta, 9, 1_700_000_000);
    string(&mut meta, "description");
    ctrl(&mut meta, 7, 1);
    string(&mut meta, "en");
    string(&mut meta, "written by palisade for tests");
    out.extend_from_slice(&meta);
    out
}

/// An ASN record as GeoLite2-ASN has it.
pub fn asn(number: u32, organization: &str) -> Value {
    Value::Map(vec![
        ("autonomous_system_number".to_owned(), Value::U32(number)),
        (
            "autonomous_system_organization".to_owned(),
            Value::Str(organization.to_owned()),
        ),
    ])
}

/// A country record as GeoLite2-Country has it.
pub fn country(iso_code: &str) -> Value {
    Value::Map(vec![(
        "country".to_owned(),
        Value::Map(vec![(
            "iso_code".to_owned(),
            Value::Str(iso_code.to_owned()),
        )]),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipinfo::IpIntel;

    /// The reader is the `maxminddb` crate, so a round trip checks the writer against an
    /// independent implementation of the format.
    #[test]
    fn written_databases_read_back() {
        let asn_db = write(
            "GeoLite2-ASN",
            &[
                (
                    "203.0.113.0".parse().unwrap(),
                    24,
                    asn(64496, "EXAMPLE-NET"),
                ),
                ("2001:db8::".parse().unwrap(), 32, asn(64497, "EXAMPLE-V6")),
            ],
        );
        let country_db = write(
            "GeoLite2-Country",
            &[("203.0.113.0".parse().unwrap(), 25, country("NZ"))],
        );
        let mut db = IpIntel::new();
        assert_eq!(db.load_mmdb("asn", asn_db).unwrap(), "GeoLite2-ASN");
        db.load_mmdb("country", country_db).unwrap();
        let a = db.lookup("203.0.113.9".parse().unwrap()).unwrap();
        assert_eq!(
            (a.asn, &*a.as_name, &*a.country),
            (64496, "EXAMPLE-NET", "NZ")
        );
        let b = db.lookup("203.0.113.200".parse().unwrap()).unwrap();
        assert_eq!((b.asn, &*b.country), (64496, ""));
        assert_eq!(
            db.lookup("2001:db8::1".parse().unwrap()).unwrap().asn,
            64497
        );
        assert!(db.lookup("198.51.100.1".parse().unwrap()).is_none());
        assert!(
            IpIntel::new()
                .load_mmdb("junk", b"not a database".to_vec())
                .is_err()
        );
    }
}
