//! The prefilter's deny entries as every end reads them: one parser, so that a prefix the
//! control plane accepts in a `PrefilterDenyList` is one the agent and `membrane prefilter
//! add` accept too, and a prefix with host bits set is refused everywhere alike.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses one deny entry: `ADDRESS/LENGTH` (IPv4 or IPv6) or a bare address (its host
/// prefix). An entry with host bits set is refused, naming the prefix meant, rather than
/// widened or narrowed silently. The error says what is wrong, without the entry itself
/// (the caller names it with its place).
pub fn parse_entry(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<IpNet>()
            .map_err(|e| format!("not a CIDR ({e})"))?
    } else {
        IpNet::from(
            s.parse::<IpAddr>()
                .map_err(|_| "not a CIDR or an address".to_string())?,
        )
    };
    if net.trunc() != net {
        return Err(format!("host bits set (the prefix is {})", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_or_say_why_not() {
        assert_eq!(parse_entry("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_entry(" 10.1.2.3 ").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_entry("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_entry("10.1.2.3/8").unwrap_err(),
            "host bits set (the prefix is 10.0.0.0/8)"
        );
        assert!(parse_entry("10.0.0.0/33")
            .unwrap_err()
            .starts_with("not a CIDR"));
        assert_eq!(parse_entry("ten").unwrap_err(), "not a CIDR or an address");
    }
}
