//! Helpers for the delivery tests: a sending server wired to the test DNS server, MX records
//! and receiving sinks for a domain, the standard test message, and waits for mail to arrive
//! in a Maildir.

use std::path::Path;

use super::dns::DnsServer;
use super::sink::Sink;
use super::{maildir, queue_message, wait_until, Server};

/// Local delivery on, retries and queue scans every second: what the delivery tests need.
pub const DELIVER: &[&str] = &[
    "--delivery-threads",
    "2",
    "--retry-schedule",
    "1s",
    "--queue-scan-interval",
    "1s",
];

/// The flags of a sending server wired to `dns`, delivering to port `port` of the MX hosts:
/// two delivery threads, retries every second, short SMTP time-outs. A flag in `extra`
/// replaces the one here (flags come in `--name value` pairs); the others are added.
pub fn sender_args(dns: &DnsServer, port: u16, extra: &[&str]) -> Vec<String> {
    let base = [
        "--delivery-threads",
        "2",
        "--retry-schedule",
        "1s",
        "--dns-server",
        &dns.addr.to_string(),
        "--smtp-port",
        &port.to_string(),
        "--smtp-connect-timeout",
        "2s",
        "--smtp-command-timeout",
        "5s",
        "--smtp-data-timeout",
        "5s",
    ];
    base.chunks(2)
        .filter(|pair| !extra.contains(&pair[0]))
        .flatten()
        .map(|s| s.to_string())
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

/// A sending server in a new temp dir with `sender_args(dns, port, extra)`.
pub fn sender_with(name: &str, dns: &DnsServer, port: u16, extra: &[&str]) -> Server {
    let args = sender_args(dns, port, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(name, &args)
}

/// A sending server in a new temp dir, wired to `dns`, delivering to port `port`.
pub fn sender(name: &str, dns: &DnsServer, port: u16) -> Server {
    sender_with(name, dns, port, &[])
}

/// Makes `mx.DOMAIN`, at 127.0.0.3, the one MX (preference 10) of `domain`.
pub fn add_mx(dns: &DnsServer, domain: &str) {
    dns.mx(domain, 10, &format!("mx.{domain}"));
    dns.a(&format!("mx.{domain}"), "127.0.0.3");
}

/// A sink at 127.0.0.3 that is the MX of `domain`.
pub fn mx_sink(dns: &DnsServer, domain: &str) -> Sink {
    let sink = Sink::start("127.0.0.3:0");
    add_mx(dns, domain);
    sink
}

/// Sends the standard test message, `Subject: test` over `body`, and returns its queue id.
pub fn queue_test_message(server: &Server, from: &str, to: &[&str], body: &[u8]) -> String {
    let mut data = b"Subject: test\r\n\r\n".to_vec();
    data.extend_from_slice(body);
    queue_message(server, from, to, &data)
}

/// Waits for at least `count` messages in a Maildir's new/; returns them all, read, oldest
/// first.
pub fn wait_for_mail(user_dir: &Path, count: usize) -> Vec<String> {
    wait_until(
        &format!("{count} message(s) in {}", user_dir.display()),
        || maildir(user_dir).len() >= count,
    );
    maildir(user_dir)
}

/// Waits for exactly one message in a Maildir's new/, and returns it.
pub fn wait_for_only_message(user_dir: &Path) -> String {
    wait_until(&format!("a message in {}", user_dir.display()), || {
        maildir(user_dir).len() == 1
    });
    maildir(user_dir).remove(0)
}
