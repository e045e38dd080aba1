//! Addresses as text, exactly as `Display` writes them: IPv4 (nearly every client) composed on
//! the stack, without the formatting machinery or an allocation.

use std::net::IpAddr;

/// An address's text.
pub enum IpText {
    /// Up to `255.255.255.255`, and how many bytes of it are used.
    V4([u8; 15], usize),
    /// IPv6, as `Display` writes it.
    V6(String),
}

impl IpText {
    /// The text of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => {
                let mut text = [0u8; 15];
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
                IpText::V4(text, n)
            }
            IpAddr::V6(a) => IpText::V6(a.to_string()),
        }
    }

    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IpText::V4(text, n) => text.get(..*n).unwrap_or_default(),
            IpText::V6(s) => s.as_bytes(),
        }
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
        for v6 in ["::1", "2001:db8::8a2e:370:7334", "::ffff:1.2.3.4", "::"] {
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
