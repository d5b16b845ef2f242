//! The `Received:` trace header (RFC 5321 4.4) that the spool puts first in every message.

use crate::datetime;
use crate::envelope::Envelope;

/// `Received: from HELO ([IP]) [(using TLS...)] by HOST (Postilion) with PROTO id ID
/// [for <RCPT>]; DATE`, folded, CRLF-terminated. `now` is a Unix time; `tls` what the
/// connection's TLS agreed on, as Postfix shows it.
pub fn header(
    envelope: &Envelope,
    hostname: &str,
    id: &str,
    now: u64,
    tls: Option<&str>,
) -> String {
    let helo: String = envelope
        .helo
        .chars()
        .take(255)
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '?'
            } else {
                c
            }
        })
        .collect();
    let literal = match envelope.client.map(|c| c.ip().to_canonical()) {
        Some(ip) if ip.is_ipv6() => format!("[IPv6:{ip}]"),
        Some(ip) => format!("[{ip}]"),
        None => "localhost".to_string(),
    };
    // One recipient is named, as Postfix does; several would leak each other's addresses.
    let recipient = match envelope.recipients.as_slice() {
        [only] => format!("\r\n\tfor {}", only.path),
        _ => String::new(),
    };
    let tls = tls.map_or(String::new(), |tls| format!("\r\n\t(using {tls})"));
    // That someone logged in, never who or with what.
    let tls = match envelope.auth {
        Some(_) => format!("{tls}\r\n\t(authenticated)"),
        None => tls,
    };
    format!(
        "Received: from {helo} ({literal}){tls}\r\n\tby {hostname} (Postilion) with {} id {id}{recipient};\r\n\t{}\r\n",
        envelope.protocol,
        datetime::rfc5322(now)
    )
}

/// `Received: by HOST (Postilion, from userid UID) id ID; DATE` for mail taken from the
/// maildrop, as Postfix's pickup writes it: the uid is the file owner's, the one fact about
/// its origin that the sender cannot make up.
pub fn local_header(hostname: &str, uid: u32, id: &str, now: u64) -> String {
    format!(
        "Received: by {hostname} (Postilion, from userid {uid})\r\n\tid {id};\r\n\t{}\r\n",
        datetime::rfc5322(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Recipient;
    use crate::smtp::address::{ForwardPath, ReversePath};

    #[test]
    fn header_form() {
        let env = Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::pending(ForwardPath::Postmaster)],
            client: Some("[::1]:4000".parse().unwrap()),
            helo: "client (evil)\r\nX: y".into(),
            protocol: "ESMTP".into(),
            eight_bit: false,
            smtputf8: false,
            arrival: 0,
            size: 0,
            delay_warned: false,
            held: false,
            auth: None,
        };
        assert_eq!(
            header(&env, "mx.example", "ID1", 0, None),
            "Received: from client ?evil???X: y ([IPv6:::1])\r\n\tby mx.example (Postilion) with ESMTP id ID1\r\n\tfor <postmaster>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn local_header_form() {
        assert_eq!(
            local_header("mx.example", 1000, "ID1", 0),
            "Received: by mx.example (Postilion, from userid 1000)\r\n\tid ID1;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
