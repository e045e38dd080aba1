//! Addresses as text, exactly as `Display` writes them, on the stack: IPv4 (nearly every
//! client) composed without the formatting machinery, IPv6 formatted into the same buffer.

use std::io::Write as _;
use std::net::IpAddr;

/// The longest address text: an IPv6 address ending in an IPv4 one
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const MAX: usize = 45;

/// An address's text.
pub struct IpText {
    text: [u8; MAX],
    len: usize,
}

impl IpText {
    /// The text of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = [0u8; MAX];
        let len = match ip {
            IpAddr::V4(a) => {
                let mut n = 0;
                let mut put = |b: u8| {
                    if let Some(slot) = text.get_mut(n) {
                        *slot = b;
                    }
                    n += 1;
                };
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        put(b'.');
                    }
                    if o >= 100 {
                        put(b'0' + o / 100);
                    }
                    if o >= 10 {
                        put(b'0' + o / 10 % 10);
                    }
                    put(b'0' + o % 10);
                }
                n
            }
            IpAddr::V6(a) => {
                let mut rest: &mut [u8] = &mut text;
                // Cannot fail: every IPv6 text fits.
                let _ = write!(rest, "{a}");
                MAX - rest.len()
            }
        };
        Self { text, len }
    }

    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.get(..self.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        // Every octet value in every position, a few thousand pseudo-random addresses, and v6.
        let mut samples: Vec<IpAddr> = (0..=255u8)
            .flat_map(|o| {
                [
                    IpAddr::from([o, 0, 0, 0]),
                    IpAddr::from([1, o, 2, 3]),
                    IpAddr::from([9, 8, o, 7]),
                    IpAddr::from([255, 255, 255, o]),
                ]
            })
            .collect();
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            samples.push(IpAddr::from(x.to_be_bytes()));
        }
        for v6 in [
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            samples.push(v6.parse().unwrap());
        }
        for ip in samples {
            assert_eq!(
                IpText::new(ip).as_bytes(),
                ip.to_string().as_bytes(),
                "{ip}"
            );
        }
    }
}
