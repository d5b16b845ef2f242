//! Configuration: one table of keys, read from defaults, then a `key = value` file, then
//! flags (`local_domains` is `--local-domains`), and checked into a typed `Config`.
//!
//! Every error names the key and where its value came from (file:line or flag), in one line.
//! Nothing here opens sockets or the spool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::smtp::address;
use crate::smtp::data::BareNewline;
use crate::smtp::policy::Network;
use crate::tls::TlsMode;

pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Keys whose flag may be given alone, meaning `yes` (`--allow-root`); with a value it is
/// written `--allow-root=no`.
pub const SWITCHES: &[&str] = &["allow_root"];

/// Every setting. `hostname`'s empty default means "the system's host name".
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    Key { name: "listen", default: "127.0.0.1:2525", help: "addresses to listen on, comma-separated: [ROLE@]IP:PORT or [ROLE@][IPv6]:PORT, ROLE smtp (the default), submission or submissions" },
    Key { name: "tls_cert", default: "", help: "the server's certificate chain, PEM (e.g. Let's Encrypt's fullchain.pem); empty: no TLS offered" },
    Key { name: "tls_key", default: "", help: "the private key of tls_cert, PEM (e.g. Let's Encrypt's privkey.pem)" },
    Key { name: "users_file", default: "", help: "users for SMTP AUTH, one 'name:hash' line each (postilion passwd makes them)" },
    Key { name: "smtp_auth", default: "no", help: "offer AUTH on the smtp role too (it is always offered on submission and submissions), over TLS only" },
    Key { name: "sender_login_match", default: "yes", help: "an authenticated user may use only its own addresses in MAIL FROM" },
    Key { name: "submission_tls_tickets", default: "yes", help: "send TLS 1.3 session tickets on the submission roles (never on smtp: some servers then abort STARTTLS)" },
    Key { name: "spool", default: "./spool", help: "spool directory (tmp/, queue/, corrupt/, maildrop/)" },
    Key { name: "hostname", default: "", help: "our host name in the greeting and Received: headers (default: the system's)" },
    Key { name: "local_domains", default: "localhost", help: "domains delivered locally, comma-separated (the host name is always one)" },
    Key { name: "relay_networks", default: "127.0.0.0/8, ::1/128", help: "client networks that may send to any domain" },
    Key { name: "mailbox_root", default: "./mail", help: "local users are the directories here (each USER/ a Maildir)" },
    Key { name: "aliases", default: "", help: "aliases file in /etc/aliases form (empty: none)" },
    Key { name: "user", default: "postilion", help: "started as root, run as this user (from /etc/passwd) once the listeners are bound" },
    Key { name: "allow_root", default: "no", help: "started as root, stay root instead of switching to user (for a checkout or a test); the flag alone means yes" },
    Key { name: "trusted_senders", default: "root", help: "login names whose sendmail -f is used as the envelope sender (the daemon's own user always is); others send as login@hostname" },
    Key { name: "message_size_limit", default: "25M", help: "largest message in bytes (K, M, G suffixes)" },
    Key { name: "max_recipients", default: "100", help: "recipients per message" },
    Key { name: "max_connections", default: "100", help: "simultaneous SMTP connections" },
    Key { name: "max_connections_per_ip", default: "50", help: "simultaneous SMTP connections from one client address (IPv6: one /64)" },
    Key { name: "command_timeout", default: "5m", help: "idle time allowed waiting for a command (RFC 5321 4.5.3.2.7)" },
    Key { name: "data_timeout", default: "3m", help: "idle time allowed inside DATA (RFC 5321 4.5.3.2.5/6)" },
    Key { name: "bare_newline", default: "normalize", help: "bare CR or LF in message content: normalize (to CRLF) or reject" },
    Key { name: "delivery_threads", default: "8", help: "messages delivered at once; 0 pauses delivery (mail waits in queue/)" },
    Key { name: "retry_schedule", default: "5m, 10m, 20m, 40m, 1h, 2h, 4h", help: "delays between delivery attempts; the last one repeats" },
    Key { name: "max_queue_lifetime", default: "5d", help: "how long undeliverable mail is retried before it bounces" },
    Key { name: "smtp_port", default: "25", help: "port of remote MX hosts" },
    Key { name: "dns_server", default: "", help: "DNS server as IP:PORT for MX lookups (empty: /etc/resolv.conf)" },
    Key { name: "smtp_tls", default: "may", help: "STARTTLS to remote servers: none, may (when offered), encrypt (always), verify (and check the certificate)" },
    Key { name: "relayhost", default: "", help: "send all remote mail to this smarthost, host:port (465: implicit TLS; else STARTTLS)" },
    Key { name: "relayhost_auth_file", default: "", help: "file with one 'username:password' line for AUTH at the relayhost (only over TLS)" },
    Key { name: "relayhost_tls_verify", default: "yes", help: "with relayhost_auth_file: check the relayhost's certificate before sending the password (no: only encrypt)" },
    Key { name: "smtp_connect_timeout", default: "30s", help: "time allowed to connect to a remote server" },
    Key { name: "smtp_command_timeout", default: "5m", help: "time allowed for each remote reply (RFC 5321 4.5.3.2.1-4)" },
    Key { name: "smtp_data_timeout", default: "10m", help: "time allowed to send a message and get the final reply (4.5.3.2.5-6)" },
    Key { name: "smtp_transaction_timeout", default: "30m", help: "time allowed for delivering to one domain, every server tried, connect to last reply (plus 1s per 10 KiB of message)" },
    Key { name: "delay_warning_time", default: "0", help: "warn the sender once when mail has waited this long (0: never)" },
    Key { name: "queue_scan_interval", default: "1m", help: "how often queue/ is scanned for files other programs put there" },
    Key { name: "shutdown_timeout", default: "30s", help: "on SIGTERM/SIGINT, how long transactions and deliveries in flight may take to finish" },
];

#[derive(Debug)]
pub struct Config {
    pub listen: Vec<Listen>,
    /// Certificate chain and key files; both or neither.
    pub tls: Option<TlsFiles>,
    pub submission_tls_tickets: bool,
    pub users_file: Option<PathBuf>,
    pub smtp_auth: bool,
    pub sender_login_match: bool,
    pub spool: PathBuf,
    pub hostname: String,
    /// Lower-case; always includes `hostname`.
    pub local_domains: Vec<String>,
    pub relay_networks: Vec<Network>,
    pub mailbox_root: PathBuf,
    pub aliases: Option<PathBuf>,
    /// Who to run as when started as root (a name in `/etc/passwd`).
    pub user: String,
    /// Started as root, stay root.
    pub allow_root: bool,
    /// Logins whose `sendmail -f` is used; `user` is always one.
    pub trusted_senders: Vec<String>,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_newline: BareNewline,
    pub delivery_threads: usize,
    /// Never empty.
    pub retry_schedule: Vec<Duration>,
    pub max_queue_lifetime: Duration,
    /// `None`: no delay warnings.
    pub delay_warning_time: Option<Duration>,
    pub queue_scan_interval: Duration,
    pub shutdown_timeout: Duration,
    pub smtp_port: u16,
    pub dns_server: Option<SocketAddr>,
    pub smtp_tls: TlsMode,
    /// Host and port of the smarthost.
    pub relayhost: Option<(String, u16)>,
    pub relayhost_auth_file: Option<PathBuf>,
    pub relayhost_tls_verify: bool,
    pub smtp_connect_timeout: Duration,
    pub smtp_command_timeout: Duration,
    pub smtp_data_timeout: Duration,
    pub smtp_transaction_timeout: Duration,
}

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Mail from the world for our domains (port 25); STARTTLS offered when there is a
    /// certificate.
    Smtp,
    /// People's own mail (port 587): STARTTLS, then AUTH, before MAIL.
    Submission,
    /// As `Submission`, with TLS from the first byte (port 465, RFC 8314).
    Submissions,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub role: Role,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[ROLE@]IP:PORT`.
fn listen_entry(entry: &str) -> Result<Listen, String> {
    let (role, addr) = match entry.split_once('@') {
        Some(("smtp", addr)) => (Role::Smtp, addr),
        Some(("submission", addr)) => (Role::Submission, addr),
        Some(("submissions", addr)) => (Role::Submissions, addr),
        Some((role, _)) => {
            return Err(format!(
                "'{role}' is not a role (smtp, submission or submissions)"
            ))
        }
        None => (Role::Smtp, entry),
    };
    let addr = addr.parse().map_err(|_| {
        format!("'{entry}' is not [ROLE@]IP:PORT (like 127.0.0.1:2525, submission@[::1]:587)")
    })?;
    Ok(Listen { role, addr })
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
pub enum Source {
    Default,
    File(PathBuf, usize),
    Flag,
}

#[derive(Debug)]
pub struct ConfigError {
    pub source: Source,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = self.key.replace('_', "-");
        match &self.source {
            Source::Default => write!(f, "{}: {}", self.key, self.message),
            Source::File(path, line) if self.key.is_empty() => {
                write!(f, "{}:{line}: {}", path.display(), self.message)
            }
            Source::File(path, line) => {
                write!(
                    f,
                    "{}:{line}: {}: {}",
                    path.display(),
                    self.key,
                    self.message
                )
            }
            Source::Flag => write!(f, "--{flag}: {}", self.message),
        }
    }
}

/// Raw values by key, each with its source, before checking.
pub struct RawConfig {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Default for RawConfig {
    fn default() -> Self {
        let values = KEYS
            .iter()
            .map(|k| (k.name, (k.default.to_string(), Source::Default)))
            .collect();
        RawConfig { values }
    }
}

fn find_key(name: &str) -> Option<&'static str> {
    KEYS.iter().find(|k| k.name == name).map(|k| k.name)
}

impl RawConfig {
    /// Reads `key = value` lines; `#` starts a comment line.
    pub fn read_file(&mut self, path: &std::path::Path, text: &str) -> Result<(), ConfigError> {
        for (i, line) in text.lines().enumerate() {
            let source = Source::File(path.into(), i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError {
                    source,
                    key: String::new(),
                    message: format!("expected 'key = value', found '{line}'"),
                });
            };
            let key = key.trim();
            let Some(name) = find_key(key) else {
                return Err(ConfigError {
                    source,
                    key: String::new(),
                    message: format!("unknown key '{key}'"),
                });
            };
            self.values.insert(name, (value.trim().to_string(), source));
        }
        Ok(())
    }

    /// Sets a value given as `--flag-name value`.
    pub fn set_flag(&mut self, name: &'static str, value: String) {
        self.values.insert(name, (value, Source::Flag));
    }

    /// Checks every value into a `Config`. `system_hostname` is used when `hostname` is empty.
    pub fn build(&self, system_hostname: &str) -> Result<Config, ConfigError> {
        let hostname = match self.get("hostname", |v| {
            if v.is_empty() || address::is_domain(v) {
                Ok(v.to_string())
            } else {
                Err(format!("'{v}' is not a host name"))
            }
        })? {
            name if name.is_empty() => system_hostname.to_string(),
            name => name,
        };
        let mut local_domains = self.get("local_domains", |v| {
            list(v)
                .map(|d| match address::is_domain(d) {
                    true => Ok(d.to_lowercase()),
                    false => Err(format!("'{d}' is not a domain")),
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        if !local_domains.contains(&hostname.to_lowercase()) {
            local_domains.push(hostname.to_lowercase());
        }
        if self
            .values
            .get("relayhost_auth_file")
            .is_some_and(|(v, _)| !v.is_empty())
            && self
                .values
                .get("relayhost")
                .is_some_and(|(v, _)| v.is_empty())
        {
            let (_, source) = &self.values["relayhost_auth_file"];
            return Err(ConfigError {
                source: source.clone(),
                key: "relayhost_auth_file".into(),
                message: "is only used with relayhost, which is not set".into(),
            });
        }
        let listen = self.get("listen", |v| {
            let listen = list(v).map(listen_entry).collect::<Result<Vec<_>, _>>()?;
            if listen.is_empty() {
                return Err("at least one address is needed".into());
            }
            Ok(listen)
        })?;
        let file = |key: &str| self.get(key, |v| Ok((!v.is_empty()).then(|| PathBuf::from(v))));
        let tls = match (file("tls_cert")?, file("tls_key")?) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(self.error("tls_cert", "needs tls_key too")),
            (None, Some(_)) => return Err(self.error("tls_key", "needs tls_cert too")),
        };
        let users_file = file("users_file")?;
        let smtp_auth = self.get("smtp_auth", yes_no)?;
        if let Some(listener) = listen.iter().find(|l| l.role != Role::Smtp) {
            let needs = match (&tls, &users_file) {
                (None, _) => Some("tls_cert and tls_key"),
                (_, None) => Some("users_file"),
                _ => None,
            };
            if let Some(needs) = needs {
                let why = format!("the {} role needs {needs}", listener.role.name());
                return Err(self.error("listen", &why));
            }
        }
        if smtp_auth && (users_file.is_none() || tls.is_none()) {
            return Err(self.error("smtp_auth", "needs users_file, tls_cert and tls_key"));
        }
        Ok(Config {
            listen,
            tls,
            submission_tls_tickets: self.get("submission_tls_tickets", yes_no)?,
            users_file,
            smtp_auth,
            sender_login_match: self.get("sender_login_match", yes_no)?,
            spool: self.get("spool", path)?,
            hostname,
            local_domains,
            relay_networks: self.get("relay_networks", |v| list(v).map(str::parse).collect())?,
            mailbox_root: self.get("mailbox_root", path)?,
            aliases: self.get("aliases", |v| Ok((!v.is_empty()).then(|| PathBuf::from(v))))?,
            user: self.get("user", user_name)?,
            allow_root: self.get("allow_root", yes_no)?,
            trusted_senders: {
                let mut names: Vec<String> =
                    self.get("trusted_senders", |v| list(v).map(user_name).collect())?;
                let user: String = self.get("user", user_name)?;
                if !names.contains(&user) {
                    names.push(user);
                }
                names
            },
            message_size_limit: self.get("message_size_limit", size)?,
            max_recipients: self.get("max_recipients", count)?,
            max_connections: self.get("max_connections", count)?,
            max_connections_per_ip: self.get("max_connections_per_ip", count)?,
            command_timeout: self.get("command_timeout", duration)?,
            data_timeout: self.get("data_timeout", duration)?,
            bare_newline: self.get("bare_newline", |v| match v {
                "normalize" => Ok(BareNewline::Normalize),
                "reject" => Ok(BareNewline::Reject),
                _ => Err(format!("'{v}' is not 'normalize' or 'reject'")),
            })?,
            delivery_threads: self.get("delivery_threads", |v| {
                v.parse()
                    .map_err(|_| format!("'{v}' is not a whole number"))
            })?,
            retry_schedule: self.get("retry_schedule", |v| {
                let delays = list(v).map(duration).collect::<Result<Vec<_>, _>>()?;
                match delays.is_empty() {
                    true => Err("at least one delay is needed".into()),
                    false => Ok(delays),
                }
            })?,
            max_queue_lifetime: self.get("max_queue_lifetime", duration)?,
            delay_warning_time: self.get("delay_warning_time", |v| match v {
                "0" => Ok(None),
                _ => duration(v).map(Some),
            })?,
            queue_scan_interval: self.get("queue_scan_interval", duration)?,
            shutdown_timeout: self.get("shutdown_timeout", duration)?,
            smtp_port: self.get("smtp_port", |v| match v.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("'{v}' is not a port number")),
            })?,
            dns_server: self.get("dns_server", |v| match v {
                "" => Ok(None),
                _ => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("'{v}' is not IP:PORT (like 127.0.0.1:53)")),
            })?,
            smtp_tls: self.get("smtp_tls", str::parse)?,
            relayhost: self.get("relayhost", relayhost)?,
            relayhost_auth_file: self.get("relayhost_auth_file", |v| {
                Ok((!v.is_empty()).then(|| PathBuf::from(v)))
            })?,
            relayhost_tls_verify: self.get("relayhost_tls_verify", yes_no)?,
            smtp_connect_timeout: self.get("smtp_connect_timeout", duration)?,
            smtp_command_timeout: self.get("smtp_command_timeout", duration)?,
            smtp_data_timeout: self.get("smtp_data_timeout", duration)?,
            smtp_transaction_timeout: self.get("smtp_transaction_timeout", duration)?,
        })
    }

    /// An error about `key`, from where its value came.
    fn error(&self, key: &str, message: &str) -> ConfigError {
        ConfigError {
            source: self
                .values
                .get(key)
                .map_or(Source::Default, |(_, s)| s.clone()),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn get<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let Some((value, source)) = self.values.get(key) else {
            unreachable!("every key has a default");
        };
        parse(value).map_err(|message| ConfigError {
            source: source.clone(),
            key: key.to_string(),
            message,
        })
    }

    /// The effective configuration, as a file that would give it.
    pub fn effective(&self, config: &Config) -> String {
        let mut out = String::new();
        for key in KEYS {
            let value = match key.name {
                "hostname" => config.hostname.clone(),
                "local_domains" => config.local_domains.join(", "),
                _ => self
                    .values
                    .get(key.name)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default(),
            };
            out.push_str(&format!("{} = {}\n", key.name, value));
        }
        out
    }
}

fn yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("'{value}' is not 'yes' or 'no'")),
    }
}

/// A name as `/etc/passwd` can hold it: not empty, no `:`, no white space or control.
fn user_name(value: &str) -> Result<String, String> {
    let bad = |c: char| c == ':' || c.is_whitespace() || c.is_control();
    match value.is_empty() || value.contains(bad) {
        true => Err(format!("'{value}' is not a user name")),
        false => Ok(value.to_string()),
    }
}

/// `host`, `host:port`, `[host]:port` or `[IPv6]:port`; the port defaults to 25.
fn relayhost(value: &str) -> Result<Option<(String, u16)>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let bad = || format!("'{value}' is not host:port (like smtp.example.org:587)");
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        }
        None if value.matches(':').count() == 1 => {
            let (host, port) = value.split_once(':').ok_or_else(bad)?;
            (host, Some(port))
        }
        None => (value, None),
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
        None => 25,
    };
    if !(address::is_domain(host) || host.parse::<std::net::IpAddr>().is_ok()) {
        return Err(bad());
    }
    Ok(Some((host.to_string(), port)))
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn path(value: &str) -> Result<PathBuf, String> {
    match value.is_empty() {
        true => Err("a path is needed".into()),
        false => Ok(PathBuf::from(value)),
    }
}

fn count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{value}' is not a positive whole number")),
    }
}

/// Bytes, with an optional K, M or G (binary) suffix.
fn size(value: &str) -> Result<u64, String> {
    let (digits, unit) = match value.to_ascii_uppercase().strip_suffix(['K', 'M', 'G']) {
        Some(d) => (
            d.to_string(),
            value.as_bytes()[value.len() - 1].to_ascii_uppercase(),
        ),
        None => (value.to_string(), b' '),
    };
    let factor: u64 = match unit {
        b'K' => 1 << 10,
        b'M' => 1 << 20,
        b'G' => 1 << 30,
        _ => 1,
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{value}' is not a size (like 26214400, 25M or 512K)"))
}

/// Seconds, with an optional s, m, h or d suffix.
fn duration(value: &str) -> Result<Duration, String> {
    let (digits, factor) = match value.chars().last() {
        Some('s') => (&value[..value.len() - 1], 1),
        Some('m') => (&value[..value.len() - 1], 60),
        Some('h') => (&value[..value.len() - 1], 3600),
        Some('d') => (&value[..value.len() - 1], 86_400),
        _ => (value, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{value}' is not a duration (like 300, 90s, 5m or 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(file: &str) -> Result<Config, String> {
        let mut raw = RawConfig::default();
        raw.read_file(Path::new("test.conf"), file)
            .map_err(|e| e.to_string())?;
        raw.build("host.example").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = build("").unwrap();
        assert_eq!(
            c.listen,
            [Listen {
                role: Role::Smtp,
                addr: "127.0.0.1:2525".parse().unwrap()
            }]
        );
        assert_eq!(c.tls, None);
        assert_eq!(c.message_size_limit, 25 << 20);
        assert_eq!(
            (
                c.max_recipients,
                c.max_connections,
                c.max_connections_per_ip
            ),
            (100, 100, 50)
        );
        assert_eq!(c.hostname, "host.example");
        assert_eq!(c.delivery_threads, 8);
        assert_eq!((c.user.as_str(), c.allow_root), ("postilion", false));
        assert_eq!(c.retry_schedule.len(), 7);
        assert_eq!(c.retry_schedule[4], Duration::from_secs(3600));
        assert_eq!(c.max_queue_lifetime, Duration::from_secs(5 * 86_400));
        assert_eq!(c.local_domains, ["localhost", "host.example"]);
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert_eq!(c.data_timeout, Duration::from_secs(180));
        assert!(c
            .relay_networks
            .iter()
            .any(|n| n.contains("127.0.0.1".parse().unwrap())));
        assert!(c
            .relay_networks
            .iter()
            .any(|n| n.contains("::1".parse().unwrap())));
        assert!(!c
            .relay_networks
            .iter()
            .any(|n| n.contains("192.0.2.1".parse().unwrap())));
    }

    #[test]
    fn file_values_and_comments() {
        let c = build("# a comment\n\nlisten = 127.0.0.1:0, [::1]:0\nmessage_size_limit = 512K\nlocal_domains = Example.ORG\n").unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.message_size_limit, 512 * 1024);
        assert_eq!(c.local_domains, ["example.org", "host.example"]);
    }

    #[test]
    fn flag_wins_over_file() {
        let mut raw = RawConfig::default();
        raw.read_file(Path::new("f"), "max_recipients = 5\n")
            .unwrap();
        raw.set_flag("max_recipients", "7".into());
        assert_eq!(raw.build("h").unwrap().max_recipients, 7);
    }

    #[test]
    fn errors_name_place_and_key() {
        assert_eq!(
            build("\nfrobnicate = 1").unwrap_err(),
            "test.conf:2: unknown key 'frobnicate'"
        );
        assert_eq!(
            build("max_recipients = lots").unwrap_err(),
            "test.conf:1: max_recipients: 'lots' is not a positive whole number"
        );
        assert!(build("listen = localhost:25")
            .unwrap_err()
            .starts_with("test.conf:1: listen:"));
        assert!(build("relay_networks = 10.0.0.0/99")
            .unwrap_err()
            .contains("relay_networks"));
        assert!(build("bare_newline = accept")
            .unwrap_err()
            .contains("bare_newline"));
        assert!(build("retry_schedule = 1m, soon")
            .unwrap_err()
            .contains("retry_schedule: 'soon'"));
        assert!(build("retry_schedule =")
            .unwrap_err()
            .contains("at least one delay"));
        assert!(build("user = mail server")
            .unwrap_err()
            .contains("user: 'mail server' is not a user name"));
        assert!(build("user =").unwrap_err().contains("user: '' is not"));
        assert!(build("allow_root = sure")
            .unwrap_err()
            .contains("allow_root: 'sure' is not 'yes' or 'no'"));
        assert!(build("just words")
            .unwrap_err()
            .contains("expected 'key = value'"));
        let mut raw = RawConfig::default();
        raw.set_flag("command_timeout", "soon".into());
        assert_eq!(
            raw.build("h").unwrap_err().to_string(),
            "--command-timeout: 'soon' is not a duration (like 300, 90s, 5m or 1h)"
        );
    }

    #[test]
    fn relayhosts() {
        assert_eq!(relayhost(""), Ok(None));
        assert_eq!(
            relayhost("smtp.example.org:587"),
            Ok(Some(("smtp.example.org".into(), 587)))
        );
        assert_eq!(
            relayhost("smtp.example.org"),
            Ok(Some(("smtp.example.org".into(), 25)))
        );
        assert_eq!(
            relayhost("[192.0.2.1]:465"),
            Ok(Some(("192.0.2.1".into(), 465)))
        );
        assert_eq!(relayhost("[::1]:587"), Ok(Some(("::1".into(), 587))));
        assert!(relayhost("smtp.example.org:http").is_err());
        assert!(relayhost("bad_host:25").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("1000"), Ok(1000));
        assert_eq!(size("2m"), Ok(2 << 20));
        assert!(size("0").is_err() && size("99999999999G").is_err() && size("").is_err());
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(duration("-1").is_err());
    }

    #[test]
    fn effective_config_reads_back_the_same() {
        let mut raw = RawConfig::default();
        raw.set_flag("max_connections", "9".into());
        let config = raw.build("h.example").unwrap();
        let text = raw.effective(&config);
        assert!(text.contains("max_connections = 9\n"));
        assert!(text.contains("hostname = h.example\n"));
        let mut again = RawConfig::default();
        again.read_file(Path::new("x"), &text).unwrap();
        assert_eq!(again.build("other").unwrap().max_connections, 9);
    }
}
