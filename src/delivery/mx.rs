//! Where a domain's mail goes: MX hosts and their addresses, behind a small blocking interface.
//!
//! `hickory-resolver` runs on a current-thread Tokio runtime owned by the `Dns` value; nothing
//! async leaks out. Each delivery thread has its own. Name servers come from /etc/resolv.conf,
//! or `dns_server`, always over UDP and TCP (a truncated answer is retried over TCP). SERVFAIL
//! and time-outs are temporary; NXDOMAIN and a null MX (RFC 7505) are permanent, told apart by
//! the response code and not by "no records" alone.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// RFC 5321 5.1 leaves the count open; Postfix and chasquid stop at 5.
const MAX_MX_HOSTS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    /// IPv6 first, then IPv4.
    pub addrs: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsFailure {
    /// NXDOMAIN, or no MX and no address: the domain cannot receive mail (5.1.2).
    NoSuchDomain(String),
    /// `MX 0 .` (RFC 7505): the domain accepts no mail (5.1.10).
    NullMx,
    /// SERVFAIL, time-out, no reachable name server: try again later (4.4.3).
    Temporary(String),
}

pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver using `server` (UDP and TCP on its port), or the system's configuration.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the DNS runtime: {e}"))?;
        let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = addr.port();
                        c
                    })
                    .collect();
                let name_server = NameServerConfig::new(addr.ip(), true, connections);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = timeout;
        options.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot set up DNS: {e}"))?;
        Ok(Dns { runtime, resolver })
    }

    /// The MX hosts of `domain` in the order to try them: by preference, shuffled within one
    /// preference by `random`; the domain itself when it has no MX (RFC 5321 5.1).
    pub fn mx_hosts(&self, domain: &str, random: u64) -> Result<Vec<MxHost>, DnsFailure> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let records = match self
            .runtime
            .block_on(self.resolver.mx_lookup(fqdn.as_str()))
        {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) => match classify(&e) {
                Negative::NoData => Vec::new(),
                Negative::NoDomain => {
                    return Err(DnsFailure::NoSuchDomain(format!(
                        "{domain}: no such domain (NXDOMAIN)"
                    )))
                }
                Negative::Temporary => {
                    return Err(DnsFailure::Temporary(format!(
                        "MX lookup for {domain}: {e}"
                    )))
                }
            },
        };
        let names = order(records, random)?;
        let implicit = names.is_empty();
        let names = if implicit { vec![fqdn] } else { names };
        let mut hosts = Vec::new();
        // Why the last name gave no host: it has no address (`None`), or the lookup failed.
        let mut temporary: Option<String> = None;
        for name in names.into_iter().take(MAX_MX_HOSTS) {
            match self.addresses(&name) {
                Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost {
                    name: name.trim_end_matches('.').to_string(),
                    addrs,
                }),
                Ok(_) => {}
                Err(e) => temporary = Some(e),
            }
        }
        match (hosts.is_empty(), implicit, temporary) {
            (false, _, _) => Ok(hosts),
            (true, _, Some(why)) => Err(DnsFailure::Temporary(why)),
            (true, true, None) => Err(DnsFailure::NoSuchDomain(format!(
                "{domain} has no MX and no address"
            ))),
            (true, false, None) => Err(DnsFailure::Temporary(format!(
                "no MX host of {domain} has an address"
            ))),
        }
    }

    /// AAAA then A records; an error string only for temporary failures.
    pub fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let mut addrs = Vec::new();
        match self.runtime.block_on(self.resolver.ipv6_lookup(host)) {
            Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if classify(&e) == Negative::Temporary => {
                return Err(format!("AAAA lookup for {host}: {e}"))
            }
            Err(_) => {}
        }
        match self.runtime.block_on(self.resolver.ipv4_lookup(host)) {
            Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })),
            Err(e) if classify(&e) == Negative::Temporary => {
                return Err(format!("A lookup for {host}: {e}"))
            }
            Err(_) => {}
        }
        Ok(addrs)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Negative {
    /// The name exists, with no record of this type.
    NoData,
    NoDomain,
    Temporary,
}

fn classify(e: &NetError) -> Negative {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            Negative::NoDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NoError =>
        {
            Negative::NoData
        }
        _ => Negative::Temporary,
    }
}

/// Sorts MX records by preference, shuffling equal ones; a lone `.` exchange is a null MX.
fn order(mut records: Vec<(u16, String)>, mut random: u64) -> Result<Vec<String>, DnsFailure> {
    if records.iter().any(|(_, name)| name == ".") {
        return Err(DnsFailure::NullMx);
    }
    // Shuffle first (Fisher-Yates with the caller's randomness), then a stable sort.
    for i in (1..records.len()).rev() {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        records.swap(i, (random % (i as u64 + 1)) as usize);
    }
    records.sort_by_key(|(preference, _)| *preference);
    Ok(records.into_iter().map(|(_, name)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_order_is_by_preference_and_shuffled_within_one() {
        let records = vec![
            (20, "c.".to_string()),
            (10, "a.".to_string()),
            (10, "b.".to_string()),
        ];
        let mut firsts = std::collections::HashSet::new();
        for seed in 1..50u64 {
            let order = order(records.clone(), seed * 2_654_435_761).unwrap();
            assert_eq!(order[2], "c.");
            firsts.insert(order[0].clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both preference-10 hosts come first sometimes"
        );
    }

    #[test]
    fn a_dot_exchange_is_a_null_mx() {
        assert_eq!(order(vec![(0, ".".into())], 1), Err(DnsFailure::NullMx));
    }
}
