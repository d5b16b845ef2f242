//! Remote delivery of one domain's recipients: the servers to try (the relayhost, or the MX
//! hosts in order) and one SMTP transaction with the first that takes it.

use std::path::Path;

use super::client::{self, Attempt, Timeouts};
use super::mx::{self, Dns, DnsFailure};
use super::{next_random, Context, Outcome, Worker};
use crate::envelope::Envelope;
use crate::smtp::address::ForwardPath;
use crate::tls::{ClientTls, TlsMode};

impl Context {
    /// One transaction per domain: MX hosts in order, each address in turn, until a server
    /// takes the transaction. Returns an outcome per recipient and the relay that answered.
    pub(super) fn deliver_remote(
        &self,
        env: &Envelope,
        domain: &str,
        indexes: &[usize],
        message: &Path,
        worker: &mut Worker,
    ) -> (Vec<Outcome>, String) {
        let all = |outcome: Outcome| vec![outcome; indexes.len()];
        let none = || "none".to_string();
        let random = next_random(&mut worker.random);
        let dns = match worker.dns() {
            Ok(dns) => dns,
            Err(e) => {
                return (
                    all(Outcome::Deferred(format!("451 4.4.3 no DNS resolver: {e}"))),
                    none(),
                )
            }
        };
        let hosts = match self.targets(dns, domain, random) {
            Ok(hosts) => hosts,
            Err(DnsFailure::NullMx) => {
                let why = format!("556 5.1.10 {domain} accepts no mail (null MX)");
                return (all(Outcome::Failed(why)), none());
            }
            Err(DnsFailure::NoSuchDomain(why)) => {
                return (all(Outcome::Failed(format!("550 5.1.2 {why}"))), none())
            }
            Err(DnsFailure::Temporary(why)) => {
                return (all(Outcome::Deferred(format!("451 4.4.3 {why}"))), none())
            }
        };
        let recipients: Vec<ForwardPath> = indexes
            .iter()
            .map(|&i| env.recipients[i].path.clone())
            .collect();
        let message = client::Message {
            from: &env.reverse_path,
            recipients: &recipients,
            path: message,
            size: env.size,
            eight_bit: env.eight_bit,
            smtputf8: env.smtputf8,
        };
        let timeouts = Timeouts {
            connect: self.config.smtp_connect_timeout,
            command: self.config.smtp_command_timeout,
            data: self.config.smtp_data_timeout,
        };
        let mut last = None;
        let tls_config = match self
            .tls
            .get_or_init(|| ClientTls::new().map_err(|e| e.to_string()))
        {
            Ok(tls) => tls,
            Err(e) => {
                return (
                    all(Outcome::Deferred(format!(
                        "451 4.7.0 TLS is not available: {e}"
                    ))),
                    none(),
                )
            }
        };
        let (port, mode) = match &self.config.relayhost {
            // Credentials never travel in clear: TLS is required with them.
            Some((_, port)) if self.relay_credentials.is_some() => match self.config.smtp_tls {
                TlsMode::Verify => (*port, TlsMode::Verify),
                _ => (*port, TlsMode::Encrypt),
            },
            Some((_, port)) => (*port, self.config.smtp_tls),
            None => (self.config.smtp_port, self.config.smtp_tls),
        };
        for host in &hosts {
            for ip in &host.addrs {
                let relay = format!("{}[{ip}]:{port}", host.name);
                let tls = client::Security {
                    mode,
                    config: tls_config.config(mode),
                    server_name: &host.name,
                    implicit: self.config.relayhost.is_some() && port == 465,
                    auth: self
                        .relay_credentials
                        .as_ref()
                        .filter(|_| self.config.relayhost.is_some()),
                };
                let addr = std::net::SocketAddr::new(*ip, port);
                match client::deliver(addr, &self.config.hostname, &message, timeouts, &tls) {
                    Attempt::Done { outcomes, tls } => {
                        let tls = if tls { "yes" } else { "no" };
                        return (outcomes, format!("{relay}, tls={tls}"));
                    }
                    Attempt::NextServer(why) => {
                        log::info!("{domain}: {relay} not used: {why}");
                        last = Some(why);
                    }
                }
            }
        }
        let why = last.unwrap_or_else(|| "no address to try".into());
        let deferred = format!("451 4.4.1 no server for {domain} took the mail: {why}");
        (all(Outcome::Deferred(deferred)), none())
    }

    /// The servers to try for `domain`: the relayhost if there is one, else the MX hosts.
    fn targets(&self, dns: &Dns, domain: &str, random: u64) -> Result<Vec<mx::MxHost>, DnsFailure> {
        let Some((host, _)) = &self.config.relayhost else {
            return dns.mx_hosts(domain, random);
        };
        let addrs = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => dns.addresses(host).map_err(DnsFailure::Temporary)?,
        };
        if addrs.is_empty() {
            return Err(DnsFailure::Temporary(format!(
                "relayhost {host} has no address"
            )));
        }
        Ok(vec![mx::MxHost {
            name: host.clone(),
            addrs,
        }])
    }
}
