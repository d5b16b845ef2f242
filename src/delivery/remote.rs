//! Remote delivery of one domain's recipients: the servers to try (the relayhost, or the MX
//! hosts in order) and one SMTP transaction with the first that takes it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{self, Attempt, Connection, Timeouts};
use super::mx::{self, Dns, DnsFailure};
use super::outcome::{DsnStatus, Outcome};
use super::{next_random, Context, Job, Worker};
use crate::smtp::address::ForwardPath;
use crate::tls::{ClientTls, TlsMode};

/// What one domain's delivery came to.
pub(super) struct RemoteAttempt {
    /// One per recipient, in the order asked; none when a stop came first.
    pub outcomes: Vec<Outcome>,
    /// The server that answered, for the log.
    pub relay: String,
    /// Still open: to be closed once the outcomes are recorded.
    pub connection: Option<Connection>,
}

impl Context {
    /// One transaction per domain: MX hosts in order, each address in turn, until a server
    /// takes the transaction.
    pub(super) fn deliver_remote(
        &self,
        job: &Job,
        domain: &str,
        indexes: &[usize],
        worker: &mut Worker,
    ) -> RemoteAttempt {
        let all = |outcome: Outcome| RemoteAttempt {
            outcomes: vec![outcome; indexes.len()],
            relay: "none".into(),
            connection: None,
        };
        let random = next_random(&mut worker.random);
        let dns = match worker.dns() {
            Ok(dns) => dns,
            Err(e) => {
                let why = format!("451 4.4.3 no DNS resolver: {e}");
                return all(Outcome::deferred(DsnStatus::new(4, 4, 3), why));
            }
        };
        let hosts = match self.targets(dns, domain, random) {
            Ok(hosts) => hosts,
            Err(DnsFailure::NullMx) => {
                let why = format!("556 5.1.10 {domain} accepts no mail (null MX)");
                return all(Outcome::failed(DsnStatus::new(5, 1, 10), why));
            }
            Err(DnsFailure::NoSuchDomain(why)) => {
                let why = format!("550 5.1.2 {why}");
                return all(Outcome::failed(DsnStatus::new(5, 1, 2), why));
            }
            Err(DnsFailure::Temporary(why)) => {
                let why = format!("451 4.4.3 {why}");
                return all(Outcome::deferred(DsnStatus::new(4, 4, 3), why));
            }
        };
        let recipients: Vec<ForwardPath> = indexes
            .iter()
            .map(|&i| job.env.recipients[i].path.clone())
            .collect();
        let message = client::Message {
            from: &job.env.reverse_path,
            recipients: &recipients,
            file: &job.message,
            size: job.env.size,
            eight_bit: job.env.eight_bit,
            smtputf8: job.env.smtputf8,
        };
        // The time for all servers of the domain: one slow MX (or five) cannot hold a delivery
        // thread for longer, and a big message gets more (10 KiB/s), so a slow link can
        // still carry it.
        let budget =
            self.config.smtp_transaction_timeout + Duration::from_secs(job.env.size / 10_240);
        let timeouts = Timeouts {
            connect: self.config.smtp_connect_timeout,
            command: self.config.smtp_command_timeout,
            data: self.config.smtp_data_timeout,
            end: Instant::now() + budget,
        };
        let mut last = None;
        let tls_config = match self
            .tls
            .get_or_init(|| ClientTls::new().map_err(|e| e.to_string()))
        {
            Ok(tls) => tls,
            Err(e) => {
                let why = format!("451 4.7.0 TLS is not available: {e}");
                return all(Outcome::deferred(DsnStatus::new(4, 7, 0), why));
            }
        };
        let (port, mode) = match &self.config.relayhost {
            // A password goes only to the smarthost itself: its certificate is checked,
            // unless relayhost_tls_verify = no says to encrypt without checking.
            Some((_, port)) if self.relay_credentials.is_some() => {
                match (self.config.smtp_tls, self.config.relayhost_tls_verify) {
                    (TlsMode::Verify, _) | (_, true) => (*port, TlsMode::Verify),
                    _ => (*port, TlsMode::Encrypt),
                }
            }
            Some((_, port)) => (*port, self.config.smtp_tls),
            None => (self.config.smtp_port, self.config.smtp_tls),
        };
        for host in &hosts {
            for ip in &host.addrs {
                if self.stopping.load(Ordering::Relaxed) {
                    // No new transaction once a stop began: the domain waits, untried.
                    return RemoteAttempt {
                        outcomes: Vec::new(),
                        relay: String::new(),
                        connection: None,
                    };
                }
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
                    Attempt::Done {
                        outcomes,
                        tls,
                        connection,
                    } => {
                        let tls = if tls { "yes" } else { "no" };
                        return RemoteAttempt {
                            outcomes,
                            relay: format!("{relay}, tls={tls}"),
                            connection,
                        };
                    }
                    Attempt::NextServer(why) => {
                        log::info!("{domain}: {relay} not used: {why}");
                        last = Some(why);
                    }
                }
            }
        }
        let why = last.unwrap_or_else(|| "no address to try".into());
        let why = format!("451 4.4.1 no server for {domain} took the mail: {why}");
        all(Outcome::deferred(DsnStatus::new(4, 4, 1), why))
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
