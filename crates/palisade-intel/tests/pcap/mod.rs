//! A small pcap/pcapng reader for the conformance tests: Ethernet (with VLAN tags), Linux
//! cooked, raw and loopback link types; IPv4/IPv6; TCP payloads reassembled per direction by
//! sequence number (up to the first gap).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test support: fails loudly on the unexpected"
)]

use std::collections::BTreeMap;
use std::net::IpAddr;

/// (source, source port, destination, destination port).
pub type Flow = (IpAddr, u16, IpAddr, u16);

fn u16_at(b: &[u8], i: usize, le: bool) -> u16 {
    let x = [b[i], b[i + 1]];
    if le {
        u16::from_le_bytes(x)
    } else {
        u16::from_be_bytes(x)
    }
}

fn u32_at(b: &[u8], i: usize, le: bool) -> u32 {
    let x = [b[i], b[i + 1], b[i + 2], b[i + 3]];
    if le {
        u32::from_le_bytes(x)
    } else {
        u32::from_be_bytes(x)
    }
}

/// Link-layer frames of a pcap or pcapng file, with their link type.
pub fn frames(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let magic = u32_at(file, 0, false);
    if magic == 0x0A0D_0D0A {
        // pcapng: blocks of (type, length, body, length).
        let mut i = 0;
        let mut le = true;
        let mut link_types: Vec<u32> = Vec::new();
        while i + 12 <= file.len() {
            if u32_at(file, i, false) == 0x0A0D_0D0A {
                le = u32_at(file, i + 8, true) == 0x1A2B_3C4D;
                link_types.clear();
            }
            let btype = u32_at(file, i, le);
            let len = u32_at(file, i + 4, le) as usize;
            if len < 12 || i + len > file.len() {
                break;
            }
            let body = &file[i + 8..i + len - 4];
            match btype {
                1 => link_types.push(u32::from(u16_at(body, 0, le))),
                6 => {
                    let iface = u32_at(body, 0, le) as usize;
                    let caplen = u32_at(body, 12, le) as usize;
                    let data = &body[20..20 + caplen.min(body.len() - 20)];
                    out.push((link_types.get(iface).copied().unwrap_or(1), data.to_vec()));
                }
                3 => {
                    let data = &body[4..];
                    out.push((link_types.first().copied().unwrap_or(1), data.to_vec()));
                }
                _ => {}
            }
            i += len;
        }
    } else {
        let le = matches!(magic, 0xD4C3_B2A1 | 0x4D3C_B2A1);
        let link = u32_at(file, 20, le);
        let mut i = 24;
        while i + 16 <= file.len() {
            let caplen = u32_at(file, i + 8, le) as usize;
            let start = i + 16;
            if start + caplen > file.len() {
                break;
            }
            out.push((link, file[start..start + caplen].to_vec()));
            i = start + caplen;
        }
    }
    out
}

/// The IP packet inside a frame.
fn ip_payload(link: u32, f: &[u8]) -> Option<&[u8]> {
    match link {
        1 => {
            let mut ethertype = u16_at(f, 12, false);
            let mut off = 14;
            while ethertype == 0x8100 || ethertype == 0x88A8 {
                ethertype = u16_at(f, off + 2, false);
                off += 4;
            }
            matches!(ethertype, 0x0800 | 0x86DD).then(|| &f[off..])
        }
        0 | 108 => f.get(4..),
        101 | 12 | 14 => Some(f),
        113 => f.get(16..),
        276 => f.get(20..),
        _ => None,
    }
}

/// (flow, sequence number, payload) of a TCP segment.
fn tcp(ip: &[u8]) -> Option<(Flow, u32, Vec<u8>)> {
    let (src, dst, proto, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 15) * 4;
            let total = usize::from(u16_at(ip, 2, false)).min(ip.len());
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip[9], ip.get(ihl..total)?)
        }
        6 => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let len = usize::from(u16_at(ip, 4, false));
            let end = (40 + len).min(ip.len());
            (IpAddr::from(s), IpAddr::from(d), ip[6], ip.get(40..end)?)
        }
        _ => return None,
    };
    if proto != 6 || l4.len() < 20 {
        return None;
    }
    let sport = u16_at(l4, 0, false);
    let dport = u16_at(l4, 2, false);
    let seq = u32_at(l4, 4, false);
    let off = usize::from(l4[12] >> 4) * 4;
    let payload = l4.get(off..)?.to_vec();
    Some(((src, sport, dst, dport), seq, payload))
}

/// Reassembled byte streams, per direction.
pub fn streams(file: &[u8]) -> BTreeMap<Flow, Vec<u8>> {
    let mut segs: BTreeMap<Flow, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
    for (link, f) in frames(file) {
        let Some(ip) = ip_payload(link, &f) else {
            continue;
        };
        let Some((flow, seq, payload)) = tcp(ip) else {
            continue;
        };
        if !payload.is_empty() {
            segs.entry(flow).or_default().push((seq, payload));
        }
    }
    segs.into_iter()
        .map(|(flow, mut parts)| {
            // Order by distance from the first segment's sequence number (wrap-safe).
            let base = parts[0].0;
            parts.sort_by_key(|(seq, _)| seq.wrapping_sub(base));
            let mut buf: Vec<u8> = Vec::new();
            let mut next = base;
            for (seq, data) in parts {
                let ahead = seq.wrapping_sub(next) as i32;
                if ahead > 0 {
                    break; // a gap: stop at what is contiguous
                }
                let skip = next.wrapping_sub(seq) as usize;
                if skip < data.len() {
                    buf.extend_from_slice(&data[skip..]);
                    next = seq.wrapping_add(data.len() as u32);
                }
            }
            (flow, buf)
        })
        .collect()
}
