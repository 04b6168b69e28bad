//! Numbers and addresses written as text on the request path, without
//! `core::fmt`: every forwarded request writes the client's address two or
//! three times (its `X-Forwarded-For`, `Forwarded` and access line) and a
//! timestamp or two, and the formatting machinery cost more than the rest of
//! building those headers. The output is exactly what `Display` writes
//! (tests compare the two over generated inputs).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// Append the decimal digits of `n`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Append `n` in decimal, with a `-` when negative.
pub fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Append an IPv4 address in dotted-decimal (`Display`'s form).
pub fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u64(out, u64::from(octet));
    }
}

/// An address as `Display` writes it (IPv6 through `core::fmt`: its
/// compression rules are not worth a second copy, and it is the rare case).
pub fn ip(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    match ip {
        IpAddr::V4(v4) => push_ipv4(&mut out, v4),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    /// A small deterministic generator (xorshift), so failures repeat.
    fn numbers(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn numbers_read_as_display_writes_them() {
        let edges = [0, 1, 9, 10, 99, 100, 255, 1_000_000, u64::MAX, u64::MAX - 1];
        for n in edges.into_iter().chain(numbers(7).take(5_000)) {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
            // Small values as well as large ones.
            let small = n % 1_000;
            let mut s = String::from("x=");
            push_u64(&mut s, small);
            assert_eq!(s, format!("x={small}"));
        }
        for n in [0, -1, 1, i64::MIN, i64::MAX, -1_700_000_000] {
            let mut s = String::new();
            push_i64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    /// `forward` writes a client address that parsed as IPv4 back as it
    /// was sent; that is only right while the parser takes nothing but the
    /// form `Display` writes (no leading zeros, no short or hex forms).
    #[test]
    fn an_ipv4_address_that_parses_is_written_back_as_it_was() {
        let odd = [
            "01.2.3.4",
            "1.2.3.04",
            "127.1",
            "0x7f.0.0.1",
            "1.2.3.4.",
            " 1.2.3.4",
            "1.2.3.256",
        ];
        for s in odd {
            assert!(s.parse::<Ipv4Addr>().is_err(), "{s}");
        }
        let generated = numbers(3).take(20_000).map(|n| {
            let parts: Vec<String> = (0..4)
                .map(|i| match (n >> (i * 16)) % 5 {
                    0 => format!("0{}", (n >> (i * 8)) % 100),
                    _ => ((n >> (i * 8)) % 300).to_string(),
                })
                .collect();
            parts.join(".")
        });
        let mut parsed = 0;
        for s in generated {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                let mut back = String::new();
                push_ipv4(&mut back, ip);
                assert_eq!(back, s);
                parsed += 1;
            }
        }
        assert!(parsed > 1_000, "only {parsed} generated addresses parsed");
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        let fixed = [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 0, 100, 9)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "::ffff:1.2.3.4".parse().unwrap(),
            "2001:db8::8a2e:370:7334".parse().unwrap(),
        ];
        let generated = numbers(11).take(5_000).flat_map(|n| {
            [
                IpAddr::V4(Ipv4Addr::from(n as u32)),
                IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64 | u128::from(n >> 7))),
            ]
        });
        for a in fixed.into_iter().chain(generated) {
            assert_eq!(ip(a), a.to_string());
        }
    }
}
