//! Parsers for rates (`100/10s`), durations (`1m`) and byte sizes (`10MiB`).

use crate::clock::Nanos;

const NS_PER: [(&str, u64); 6] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
    ("us", 1_000),
];

/// Parses `500ms`, `2s`, `1m`, `1h`, `1d` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Nanos, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a duration; write a whole number and a unit: 500ms, 10s, 1m, 1h, 1d")
    })?;
    let per = NS_PER
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("`{s}`: unknown duration unit `{unit}`; use ms, s, m, h or d"))?;
    n.checked_mul(per)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// A parsed rate: `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units per period.
    pub count: u64,
    /// The period.
    pub period: Nanos,
}

/// Parses `100/10s`, `5/m`, `1000/1h`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || {
        format!(
            "`{s}` is not a rate; write <count>/<period>, as in \"100/10s\", \"20/1m\" or \"5/s\""
        )
    };
    let (count, period) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let period = period.trim();
    let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(period)?
    } else {
        parse_duration(&format!("1{period}"))?
    };
    if count == 0 {
        return Err(format!(
            "`{s}`: the count must be at least 1 (to refuse everything, use a deny list)"
        ));
    }
    if period == 0 {
        return Err(format!("`{s}`: the period must be longer than zero"));
    }
    if period / count == 0 {
        return Err(format!("`{s}` is faster than one unit per nanosecond"));
    }
    Ok(Rate { count, period })
}

/// Parses a byte size: a plain integer, or with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write bytes or e.g. 64KiB, 10MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "`{s}`: unknown size unit `{u}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a byte rate: `0` (no rule) or a size per second, e.g. `1KiB/s`, `256B/s`.
pub fn parse_byte_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let size = t.strip_suffix("/s").ok_or_else(|| {
        format!("`{t}` is not a rate; write a size per second, e.g. 1KiB/s, or 0 for none")
    })?;
    parse_size(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_byte_rate("1KiB/s"), Ok(1024));
        assert_eq!(parse_byte_rate(" 256B/s "), Ok(256));
        assert_eq!(parse_byte_rate("0"), Ok(0));
        assert!(parse_byte_rate("1KiB").is_err());
        assert!(parse_byte_rate("fast/s").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("2s"), Ok(2_000_000_000));
        assert_eq!(parse_duration("1m"), Ok(60_000_000_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000_000_000));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("100/10s"),
            Ok(Rate {
                count: 100,
                period: 10_000_000_000
            })
        );
        assert_eq!(
            parse_rate("5/m"),
            Ok(Rate {
                count: 5,
                period: 60_000_000_000
            })
        );
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("x/1s").is_err());
        assert!(parse_rate("10/0s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert!(parse_size("10 parsecs").is_err());
    }
}
