//! Who may send where: the relay rule and the local recipient rule, as pure functions.
//!
//! A recipient in a local domain must be a known local name (user or alias); any other
//! domain is accepted only from a relay network (invariant 3: never an open relay). The
//! caller supplies the known names; nothing here reads files.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::address::ForwardPath;

/// An IP network in CIDR form, `127.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("'{s}' is not an IP network (like 192.0.2.0/24 or ::1/128)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{s}' has a bad prefix length (0 to {max})")),
            },
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The facts a recipient decision needs.
pub struct RecipientRules<'a> {
    /// Lower-case domains we deliver for.
    pub local_domains: &'a [String],
    /// Lower-case local user names and alias names.
    pub local_names: &'a HashSet<String>,
    /// The client is in `relay_networks`.
    pub may_relay: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownUser,
    RelayDenied,
}

/// May this recipient be accepted? Postmaster always may (RFC 5321 4.5.1).
pub fn check_recipient(rcpt: &ForwardPath, rules: &RecipientRules) -> Result<(), Refusal> {
    let mailbox = match rcpt {
        ForwardPath::Postmaster => return Ok(()),
        ForwardPath::Mailbox(m) => m,
    };
    let domain = mailbox.domain.to_lowercase();
    if rules.local_domains.contains(&domain) {
        let user = mailbox.local_unquoted().to_lowercase();
        if user == "postmaster" || rules.local_names.contains(&user) {
            Ok(())
        } else {
            Err(Refusal::UnknownUser)
        }
    } else if rules.may_relay {
        Ok(())
    } else {
        Err(Refusal::RelayDenied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_forward_path;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix() {
        assert!(net("127.0.0.0/8").contains("127.9.8.7".parse().unwrap()));
        assert!(!net("127.0.0.0/8").contains("128.0.0.1".parse().unwrap()));
        assert!(net("::1").contains("::1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("203.0.113.5".parse().unwrap()));
        assert!(!net("::1/128").contains("127.0.0.1".parse().unwrap()));
        // An IPv4 client seen through an IPv6 socket still matches the IPv4 network.
        assert!(net("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("example.org".parse::<Network>().is_err());
        assert!("::/129".parse::<Network>().is_err());
    }

    fn check(rcpt: &str, may_relay: bool) -> Result<(), Refusal> {
        let names: HashSet<String> = ["alice".to_string()].into();
        let domains = ["example.org".to_string()];
        let rules = RecipientRules {
            local_domains: &domains,
            local_names: &names,
            may_relay,
        };
        check_recipient(&parse_forward_path(rcpt).unwrap().0, &rules)
    }

    #[test]
    fn local_users_known_or_not() {
        assert_eq!(check("<alice@example.org>", false), Ok(()));
        assert_eq!(check("<ALICE@Example.ORG>", false), Ok(()));
        assert_eq!(check("<bob@example.org>", true), Err(Refusal::UnknownUser));
    }

    #[test]
    fn postmaster_is_always_accepted() {
        assert_eq!(check("<postmaster>", false), Ok(()));
        assert_eq!(check("<Postmaster@example.org>", false), Ok(()));
    }

    #[test]
    fn relay_only_from_relay_networks() {
        assert_eq!(
            check("<x@elsewhere.example>", false),
            Err(Refusal::RelayDenied)
        );
        assert_eq!(check("<x@elsewhere.example>", true), Ok(()));
    }
}
