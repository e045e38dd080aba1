//! Sets of IP networks with logarithmic membership tests.
//!
//! Networks are stored as merged, sorted ranges of integers, separately for IPv4 and IPv6, so a
//! membership test is one binary search and the set's size does not depend on how the operator
//! wrote it (overlapping and adjacent entries collapse).

use std::net::IpAddr;

use ipnet::IpNet;

/// An immutable set of IP networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    entries: usize,
}

impl IpSet {
    /// Builds a set from networks. Host bits below the prefix are ignored.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut entries = 0;
        for net in nets {
            entries += 1;
            match net {
                IpNet::V4(n) => {
                    let n = n.trunc();
                    v4.push((u32::from(n.network()), u32::from(n.broadcast())));
                }
                IpNet::V6(n) => {
                    let n = n.trunc();
                    v6.push((u128::from(n.network()), u128::from(n.broadcast())));
                }
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
            entries,
        }
    }

    /// Whether the address falls into any network of the set. IPv4-mapped IPv6 addresses are
    /// tested as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// How many networks the set was built from (before merging).
    pub fn entries(&self) -> usize {
        self.entries
    }
}

fn merge<T: Copy + Ord + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.succ_saturating() => {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => out.push((lo, hi)),
        }
    }
    out.shrink_to_fit();
    out
}

fn find<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only candidate.
    let idx = ranges.partition_point(|&(lo, _)| lo <= x);
    match idx.checked_sub(1).and_then(|i| ranges.get(i)) {
        Some(&(_, hi)) => x <= hi,
        None => false,
    }
}

mod num_like {
    pub trait Succ {
        fn succ_saturating(self) -> Self;
    }
    impl Succ for u32 {
        fn succ_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> IpSet {
        IpSet::new(items.iter().map(|s| s.parse::<IpNet>().unwrap()))
    }

    #[test]
    fn membership_at_range_edges() {
        let s = set(&["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]);
        for (ip, want) in [
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.77", true),
            ("192.168.2.1", false),
            ("2001:db8:ffff::1", true),
            ("2001:db9::", false),
            ("::ffff:10.1.2.3", true),
        ] {
            assert_eq!(s.contains(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/24", "10.0.0.7/32"]);
        assert_eq!(s.v4.len(), 1);
        assert_eq!(s.entries(), 4);
        assert!(s.contains("10.0.0.255".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_ignored() {
        let s = set(&["10.1.2.3/16"]);
        assert!(s.contains("10.1.200.1".parse().unwrap()));
    }

    #[test]
    fn full_ranges_do_not_overflow() {
        let s = set(&["0.0.0.0/0", "::/0"]);
        assert!(s.contains("255.255.255.255".parse().unwrap()));
        assert!(s.contains("ffff::1".parse().unwrap()));
    }
}
