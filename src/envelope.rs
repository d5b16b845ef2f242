//! The envelope of a queued message and its text form, the `ID.env` file.
//!
//! One `Field: value` a line, `Version: 1` first; each `Rcpt:` line opens a recipient block
//! that the following `Maildir:`, `Status:`, `Attempts:`, `Next-Attempt:`, `Last-Reply:` and
//! `Dsn-Status:` lines belong to (`Reported: yes` once a failure has been reported to the
//! sender). A top-level `Hold: yes` line marks a message the postmaster put on hold
//! (`postilion queue hold`): it is not delivered until released. Plain enough that
//! `cat spool/queue/ID.env` answers "where is my mail?". Owns the format only: reading and
//! writing files is `spool.rs`.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use crate::datetime;
use crate::delivery::outcome::DsnStatus;
use crate::smtp::address::{self, ForwardPath, ReversePath};

pub const VERSION: &str = "1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub reverse_path: ReversePath,
    pub recipients: Vec<Recipient>,
    /// The SMTP client; `None` for messages made here (delivery status notifications).
    pub client: Option<SocketAddr>,
    pub helo: String,
    /// `SMTP`, `ESMTP` or `UTF8SMTP`, as in the Received: header.
    pub protocol: String,
    /// The client said `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// The client said `SMTPUTF8`.
    pub smtputf8: bool,
    /// Unix time of arrival, set when the message is committed.
    pub arrival: u64,
    /// Size of the queued message file in bytes, set when the message is committed.
    pub size: u64,
    /// A delay warning was sent to the sender.
    pub delay_warned: bool,
    /// The login name of the user who sent it over SMTP AUTH.
    pub auth: Option<String>,
    /// Put on hold by the postmaster: not delivered (nor expired) until released.
    pub held: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub path: ForwardPath,
    /// A local recipient resolved to the Maildir of this user (lower-case), to be written
    /// with no further alias expansion; `None` until the recipient was resolved.
    pub maildir: Option<String>,
    pub status: Status,
    pub attempts: u32,
    /// Unix time of the next delivery attempt; 0 is "as soon as possible".
    pub next_attempt: u64,
    pub last_reply: Option<String>,
    /// The RFC 3463 status of the last attempt, for delivery status notifications.
    pub last_status: Option<DsnStatus>,
    /// A failure's delivery status notification is queued (or none was due).
    pub reported: bool,
}

impl Recipient {
    pub fn pending(path: ForwardPath) -> Recipient {
        Recipient {
            path,
            maildir: None,
            status: Status::Pending,
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
            last_status: None,
            reported: false,
        }
    }

    /// Nothing more to do for this recipient.
    pub fn is_done(&self) -> bool {
        match self.status {
            Status::Pending => false,
            Status::Delivered | Status::Expanded => true,
            Status::Failed => self.reported,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    /// A local alias: its targets are recipients of their own in this envelope.
    Expanded,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Expanded => "expanded",
            Status::Failed => "failed",
        }
    }
}

/// Why an envelope file could not be read; the line number is 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// Keeps a value on one line whatever a remote server put in it.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Envelope {
    /// From `<>` to postmaster, pending, arrived at Unix time 1: what tests start from.
    #[cfg(test)]
    pub fn for_tests() -> Envelope {
        Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::pending(ForwardPath::Postmaster)],
            client: None,
            helo: "h".into(),
            protocol: "ESMTP".into(),
            eight_bit: false,
            smtputf8: false,
            arrival: 1,
            size: 0,
            delay_warned: false,
            auth: None,
            held: false,
        }
    }

    pub fn to_text(&self) -> String {
        self.text(true)
    }

    /// The envelope as `ID.msg` carries it, written before the message: without `Size`,
    /// which is the message file's to say.
    pub fn to_text_at_arrival(&self) -> String {
        self.text(false)
    }

    fn text(&self, with_size: bool) -> String {
        let mut out = String::with_capacity(256);
        // Writing into a String cannot fail.
        let _ = writeln!(out, "Version: {VERSION}");
        let _ = writeln!(
            out,
            "Arrival: {} ({})",
            self.arrival,
            datetime::iso8601(self.arrival)
        );
        match self.client {
            Some(client) => writeln!(out, "Client: {client}"),
            None => writeln!(out, "Client: local"),
        }
        .ok();
        let _ = writeln!(out, "Helo: {}", one_line(&self.helo));
        let _ = writeln!(out, "Protocol: {}", self.protocol);
        if let Some(name) = &self.auth {
            let _ = writeln!(out, "Auth: {}", one_line(name));
        }
        let _ = writeln!(out, "From: {}", self.reverse_path);
        let body = if self.eight_bit { "8BITMIME" } else { "7BIT" };
        let _ = writeln!(out, "Body: {body}");
        let _ = writeln!(
            out,
            "SMTPUTF8: {}",
            if self.smtputf8 { "yes" } else { "no" }
        );
        if with_size {
            let _ = writeln!(out, "Size: {}", self.size);
        }
        if self.delay_warned {
            let _ = writeln!(out, "Delay-Warned: yes");
        }
        if self.held {
            let _ = writeln!(out, "Hold: yes");
        }
        for rcpt in &self.recipients {
            let _ = writeln!(out, "Rcpt: {}", rcpt.path);
            if let Some(user) = &rcpt.maildir {
                let _ = writeln!(out, "Maildir: {user}");
            }
            let _ = writeln!(out, "Status: {}", rcpt.status.as_str());
            let _ = writeln!(out, "Attempts: {}", rcpt.attempts);
            if rcpt.next_attempt != 0 {
                let _ = writeln!(
                    out,
                    "Next-Attempt: {} ({})",
                    rcpt.next_attempt,
                    datetime::iso8601(rcpt.next_attempt)
                );
            }
            if let Some(reply) = &rcpt.last_reply {
                let _ = writeln!(out, "Last-Reply: {}", one_line(reply));
            }
            if let Some(status) = &rcpt.last_status {
                let _ = writeln!(out, "Dsn-Status: {status}");
            }
            if rcpt.reported {
                let _ = writeln!(out, "Reported: yes");
            }
        }
        out
    }

    pub fn parse(text: &str) -> Result<Envelope, FormatError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let err = |line: usize, what: String| FormatError { line, what };
        match lines.next() {
            Some((_, line)) if line == format!("Version: {VERSION}") => {}
            Some((n, line)) => return Err(err(n, format!("unknown version line '{line}'"))),
            None => return Err(err(1, "empty file".into())),
        }
        let mut fields = Fields::default();
        let mut recipients: Vec<Recipient> = Vec::new();
        for (n, line) in lines {
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| err(n, format!("not a 'Field: value' line: '{line}'")))?;
            let bad = |what: &str| err(n, format!("bad {key}: {what} '{value}'"));
            let number = || leading_number(value).ok_or_else(|| bad("not a number"));
            let current = recipients.last_mut();
            match (key, current) {
                ("Arrival", _) => fields.arrival = Some(number()?),
                ("Client", _) if value == "local" => fields.client = Some(None),
                ("Client", _) => {
                    fields.client = Some(Some(value.parse().map_err(|_| bad("address"))?))
                }
                ("Helo", _) => fields.helo = Some(value.to_string()),
                ("Protocol", _) => fields.protocol = Some(value.to_string()),
                ("Auth", _) => fields.auth = Some(value.to_string()),
                ("From", _) => {
                    fields.from = Some(
                        whole_path(address::parse_reverse_path(value))
                            .ok_or_else(|| bad("path"))?,
                    )
                }
                ("Body", _) => {
                    fields.eight_bit = Some(match value {
                        "8BITMIME" => true,
                        "7BIT" => false,
                        _ => return Err(bad("body type")),
                    })
                }
                ("SMTPUTF8", _) => {
                    fields.smtputf8 = Some(match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(bad("flag")),
                    })
                }
                ("Size", _) => fields.size = Some(number()?),
                ("Delay-Warned", _) if value == "yes" => fields.delay_warned = true,
                ("Hold", None) if value == "yes" => fields.held = true,
                ("Rcpt", _) => {
                    let path = whole_path(address::parse_forward_path(value))
                        .ok_or_else(|| bad("path"))?;
                    recipients.push(Recipient::pending(path));
                }
                ("Maildir", Some(rcpt)) if is_user_name(value) => {
                    rcpt.maildir = Some(value.to_string())
                }
                ("Status", Some(rcpt)) => {
                    rcpt.status = match value {
                        "pending" => Status::Pending,
                        "delivered" => Status::Delivered,
                        "expanded" => Status::Expanded,
                        "failed" => Status::Failed,
                        _ => return Err(bad("status")),
                    }
                }
                ("Attempts", Some(rcpt)) => {
                    rcpt.attempts = u32::try_from(number()?).map_err(|_| bad("count"))?
                }
                ("Next-Attempt", Some(rcpt)) => rcpt.next_attempt = number()?,
                ("Last-Reply", Some(rcpt)) => rcpt.last_reply = Some(value.to_string()),
                ("Dsn-Status", Some(rcpt)) => {
                    rcpt.last_status = Some(DsnStatus::parse(value).ok_or_else(|| bad("status"))?)
                }
                ("Reported", Some(rcpt)) if value == "yes" => rcpt.reported = true,
                _ => return Err(err(n, format!("unexpected field '{key}'"))),
            }
        }
        let missing = |name: &str| err(0, format!("missing field {name}"));
        if recipients.is_empty() {
            return Err(missing("Rcpt"));
        }
        Ok(Envelope {
            reverse_path: fields.from.ok_or_else(|| missing("From"))?,
            recipients,
            client: fields.client.ok_or_else(|| missing("Client"))?,
            helo: fields.helo.ok_or_else(|| missing("Helo"))?,
            protocol: fields.protocol.ok_or_else(|| missing("Protocol"))?,
            eight_bit: fields.eight_bit.unwrap_or(false),
            smtputf8: fields.smtputf8.unwrap_or(false),
            arrival: fields.arrival.ok_or_else(|| missing("Arrival"))?,
            // The spool measures the message anyway; `Size` is for people reading the file.
            size: fields.size.unwrap_or(0),
            delay_warned: fields.delay_warned,
            auth: fields.auth,
            held: fields.held,
        })
    }
}

#[derive(Default)]
struct Fields {
    arrival: Option<u64>,
    client: Option<Option<SocketAddr>>,
    helo: Option<String>,
    protocol: Option<String>,
    from: Option<ReversePath>,
    eight_bit: Option<bool>,
    smtputf8: Option<bool>,
    size: Option<u64>,
    delay_warned: bool,
    auth: Option<String>,
    held: bool,
}

/// A path that fills the whole value (no parameters after it).
fn whole_path<P>(parsed: Result<(P, &str), address::AddressError>) -> Option<P> {
    match parsed {
        Ok((path, "")) => Some(path),
        _ => None,
    }
}

/// A Maildir user: one path component, never `.`/`..` or anything with a `/`.
fn is_user_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// `1764021507 (2026-...)` → 1764021507: the number, then optional text for humans.
fn leading_number(value: &str) -> Option<u64> {
    value.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn sample() -> Envelope {
        Envelope {
            reverse_path: ReversePath::Mailbox(Mailbox {
                local: "\"odd one\"".into(),
                domain: "example.org".into(),
            }),
            recipients: vec![
                Recipient::pending(ForwardPath::Postmaster),
                Recipient {
                    path: ForwardPath::Mailbox(Mailbox {
                        local: "bob".into(),
                        domain: "[192.0.2.1]".into(),
                    }),
                    maildir: Some("bob".into()),
                    status: Status::Failed,
                    attempts: 3,
                    next_attempt: 1_800_000_000,
                    last_reply: Some("550 5.1.1 no such user".into()),
                    last_status: Some(DsnStatus::new(5, 1, 1)),
                    reported: true,
                },
            ],
            client: Some("[::1]:2525".parse().unwrap()),
            helo: "client.example".into(),
            protocol: "ESMTP".into(),
            eight_bit: true,
            smtputf8: false,
            arrival: 1_764_021_507,
            size: 1234,
            delay_warned: true,
            auth: Some("alice".into()),
            held: false,
        }
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let text = env.to_text();
        assert!(text.starts_with("Version: 1\nArrival: 1764021507 (2025-11-24T21:58:27Z)\n"));
        assert_eq!(Envelope::parse(&text), Ok(env));
    }

    #[test]
    fn local_messages_have_no_client_address() {
        let mut env = sample();
        env.client = None;
        let text = env.to_text();
        assert!(text.contains("Client: local\n"));
        assert_eq!(Envelope::parse(&text), Ok(env));
    }

    #[test]
    fn hold_is_a_top_level_line_and_round_trips() {
        let mut env = sample();
        env.held = true;
        let text = env.to_text();
        assert!(text.contains("\nDelay-Warned: yes\nHold: yes\nRcpt: <postmaster>\n"));
        assert_eq!(Envelope::parse(&text), Ok(env));
        assert!(!sample().to_text().contains("Hold:"));
        // Inside a recipient block it is not an envelope's hold.
        let text = sample()
            .to_text()
            .replace("Attempts: 3\n", "Attempts: 3\nHold: yes\n");
        assert!(Envelope::parse(&text).is_err());
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let mut env = sample();
        env.recipients[1].last_reply = Some("450 try later\nStatus: delivered".into());
        let parsed = Envelope::parse(&env.to_text()).unwrap();
        assert_eq!(parsed.recipients[1].status, Status::Failed);
    }

    #[test]
    fn unknown_version_and_garbage_are_errors() {
        assert!(Envelope::parse("Version: 2\n").is_err());
        assert!(Envelope::parse("").is_err());
        assert!(Envelope::parse("\u{0}\u{1}binary").is_err());
        let text = sample().to_text().replace("Size: 1234", "Size: lots");
        assert_eq!(Envelope::parse(&text).unwrap_err().line, 10);
        let text = sample()
            .to_text()
            .replace("Status: pending", "Colour: blue");
        assert!(Envelope::parse(&text).is_err());
    }
}
