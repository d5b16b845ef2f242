//! The maildrop file: what `sendmail` leaves in `spool/maildrop/` for the daemon to take in.
//!
//! A few lines of its own, each `Field: value` on one line — `Sender:` (`-f`, `<>` for the
//! null sender), `Full-Name:` (`-F`), `Rcpt:` (one per recipient argument), `Extract: yes`
//! (`-t`) — then an empty line, then the message as read (LF or CRLF). Also the pure parts of
//! taking one in: its name (a queue id, strictly checked), addresses as sendmail takes them
//! (`user` is `user@HOSTNAME`), recipients from `To:`/`Cc:`/`Bcc:` with `Bcc:` removed, and
//! line ends made CRLF. No files here: `sendmail.rs` writes, `pickup.rs` reads.

use std::fmt::Write as _;

use crate::smtp::address::{self, ForwardPath, Mailbox, ReversePath};

/// The most `Rcpt:` lines and header recipients looked at, whatever `max_recipients` says.
const MAX_LINES: usize = 10_000;

/// What a sendmail invocation asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submission {
    /// `-f`, as given (checked by the daemon).
    pub sender: Option<String>,
    /// `-F`.
    pub full_name: Option<String>,
    /// The arguments, as given.
    pub recipients: Vec<String>,
    /// `-t`: recipients from the header too.
    pub extract: bool,
}

/// Why a maildrop file cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl Submission {
    /// The file's own lines and the empty line after them. Values must be one line each
    /// (`one_line` says which are).
    pub fn header_text(&self) -> String {
        let mut out = String::new();
        if let Some(sender) = &self.sender {
            let _ = writeln!(out, "Sender: {sender}");
        }
        if let Some(name) = &self.full_name {
            let _ = writeln!(out, "Full-Name: {name}");
        }
        for rcpt in &self.recipients {
            let _ = writeln!(out, "Rcpt: {rcpt}");
        }
        if self.extract {
            out.push_str("Extract: yes\n");
        }
        out.push('\n');
        out
    }

    /// Reads a maildrop file: the submission and the message after it.
    pub fn parse(file: &[u8]) -> Result<(Submission, &[u8]), FormatError> {
        let mut submission = Submission::default();
        let mut rest = file;
        let mut lines = 0;
        loop {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| FormatError("no empty line after its own fields".into()))?;
            let line = std::str::from_utf8(&rest[..end])
                .map_err(|_| FormatError("a field is not UTF-8".into()))?;
            rest = &rest[end + 1..];
            if line.is_empty() {
                return Ok((submission, rest));
            }
            lines += 1;
            if lines > MAX_LINES {
                return Err(FormatError(format!("more than {MAX_LINES} fields")));
            }
            let (name, value) = line
                .split_once(": ")
                .ok_or_else(|| FormatError(format!("'{}' is not 'Field: value'", shown(line))))?;
            if !one_line(value) {
                return Err(FormatError(format!("{name}: control characters")));
            }
            match name {
                "Sender" if submission.sender.is_none() => submission.sender = Some(value.into()),
                "Full-Name" if submission.full_name.is_none() => {
                    submission.full_name = Some(value.into())
                }
                "Rcpt" => submission.recipients.push(value.into()),
                "Extract" if value == "yes" => submission.extract = true,
                _ => return Err(FormatError(format!("unexpected field '{}'", shown(name)))),
            }
        }
    }
}

/// At most 60 characters of `text` for a log line, control characters shown as `?`.
fn shown(text: &str) -> String {
    text.chars()
        .take(60)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A value fit for a field of the file: no control characters (no line end in it).
pub fn one_line(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// A maildrop name is a queue id as `spool.rs` makes them: `SECS.MMICROSPPIDQNRHEX8`, digits
/// where digits belong. Anything else (dot names being written, a name a user made up) is not
/// taken.
pub fn is_valid_name(name: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
    }
    let Some((secs, rest)) = name.split_once(".M") else {
        return false;
    };
    let Some((micros, rest)) = rest.split_once('P') else {
        return false;
    };
    let Some((pid, rest)) = rest.split_once('Q') else {
        return false;
    };
    let Some((counter, nonce)) = rest.split_once('R') else {
        return false;
    };
    digits(secs)
        && micros.len() == 6
        && digits(micros)
        && digits(pid)
        && digits(counter)
        && nonce.len() == 8
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An address as sendmail takes it: `user@domain`, `<user@domain>`, or a bare `user`, which
/// is `user@hostname`.
pub fn mailbox(arg: &str, hostname: &str) -> Result<Mailbox, String> {
    let trimmed = arg.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed);
    let full = match inner.contains('@') {
        true => inner.to_string(),
        false => format!("{inner}@{hostname}"),
    };
    address::parse_mailbox(&full).map_err(|e| format!("'{}': {e}", shown(arg)))
}

/// A recipient: as `mailbox`.
pub fn recipient(arg: &str, hostname: &str) -> Result<ForwardPath, String> {
    mailbox(arg, hostname).map(ForwardPath::Mailbox)
}

/// A `-f` value: `<>` or empty is the null sender, else as `mailbox`.
pub fn sender(arg: &str, hostname: &str) -> Result<ReversePath, String> {
    match arg.trim() {
        "" | "<>" => Ok(ReversePath::Null),
        _ => mailbox(arg, hostname).map(ReversePath::Mailbox),
    }
}

/// The message with every line end CRLF (a bare CR or LF becomes one) and a last line end.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// For `-t`: the addresses in `To:`, `Cc:` and `Bcc:` of a CRLF message's header section,
/// and the message without its `Bcc:` fields.
pub fn extract_recipients(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut addresses = Vec::new();
    let mut kept = Vec::with_capacity(message.len());
    let mut rest = message;
    // The field being read: its name (lower-case) and unfolded value.
    let mut field: Option<(String, String)> = None;
    let mut dropping = false;
    let finish = |field: &mut Option<(String, String)>, addresses: &mut Vec<String>| {
        if let Some((name, value)) = field.take() {
            if matches!(name.as_str(), "to" | "cc" | "bcc") && addresses.len() < MAX_LINES {
                addresses.extend(address_list(&value));
            }
        }
    };
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |n| n + 2);
        let line = &rest[..end];
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if let Some((_, value)) = &mut field {
                value.push(' ');
                value.push_str(text.trim());
                if !dropping {
                    kept.extend_from_slice(line);
                }
                rest = &rest[end..];
                continue;
            }
        }
        finish(&mut field, &mut addresses);
        match text.split_once(':') {
            Some((name, value))
                if !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b)) =>
            {
                let name = name.to_ascii_lowercase();
                dropping = name == "bcc";
                field = Some((name, value.trim().to_string()));
                if !dropping {
                    kept.extend_from_slice(line);
                }
                rest = &rest[end..];
            }
            // The empty line, or the body without one: the header section is over.
            _ => break,
        }
    }
    finish(&mut field, &mut addresses);
    kept.extend_from_slice(rest);
    (addresses, kept)
}

/// The addresses of an RFC 5322 address list: `a@b, Name <c@d>, "x, y" <e@f>, group: g@h;`,
/// comments dropped. Not checked here.
fn address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut text, mut angle) = (String::new(), None::<String>);
    let (mut quoted, mut comment, mut escaped) = (false, 0usize, false);
    let mut push = |text: &mut String, angle: &mut Option<String>| {
        let address = match angle.take() {
            Some(inside) => inside,
            None => text.trim().to_string(),
        };
        text.clear();
        if !address.is_empty() {
            out.push(address);
        }
    };
    fn put(c: char, angle: &mut Option<String>, text: &mut String) {
        match angle {
            Some(inside) => inside.push(c),
            None => text.push(c),
        }
    }
    for c in value.chars() {
        if escaped {
            escaped = false;
            if comment == 0 {
                put(c, &mut angle, &mut text);
            }
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 => {
                escaped = true;
                if quoted {
                    put(c, &mut angle, &mut text);
                }
            }
            '"' if comment == 0 => {
                quoted = !quoted;
                put(c, &mut angle, &mut text);
            }
            _ if quoted => put(c, &mut angle, &mut text),
            '(' => comment += 1,
            ')' if comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '<' if angle.is_none() => angle = Some(String::new()),
            // The display name is dropped: what was inside the brackets is the address.
            '>' if angle.is_some() => text = angle.take().unwrap_or_default(),
            // A group's name.
            ':' if angle.is_none() => text.clear(),
            ',' | ';' if angle.is_none() => push(&mut text, &mut angle),
            c => put(c, &mut angle, &mut text),
        }
    }
    push(&mut text, &mut angle);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_reads_back_as_written() {
        let submission = Submission {
            sender: Some("<>".into()),
            full_name: Some("Ann Example".into()),
            recipients: vec!["bob".into(), "carol@example.test".into()],
            extract: true,
        };
        let mut file = submission.header_text().into_bytes();
        file.extend_from_slice(b"Subject: x\n\nbody\n");
        let (read, message) = Submission::parse(&file).unwrap();
        assert_eq!(read, submission);
        assert_eq!(message, b"Subject: x\n\nbody\n");
        let plain = Submission::default().header_text();
        assert_eq!(plain, "\n");
        assert_eq!(Submission::parse(b"\nm").unwrap().1, b"m");
    }

    #[test]
    fn bad_files_are_refused() {
        for file in [
            &b"Rcpt: a"[..],
            b"Rcpt a\n\n",
            b"X-Other: 1\n\n",
            b"Sender: a\nSender: b\n\n",
            b"Extract: no\n\n",
            b"Rcpt: \xff\n\n",
            b"Rcpt: a\rb\n\n",
        ] {
            assert!(Submission::parse(file).is_err(), "{file:?}");
        }
    }

    #[test]
    fn only_queue_ids_are_names() {
        assert!(is_valid_name("1764270000.M123456P4242Q0R0123abcd"));
        for bad in [
            ".1764270000.M123456P4242Q0R0123abcd.tmp",
            "1764270000.M123456P4242Q0R0123abcd.env",
            "1764270000.M12345P4242Q0R0123abcd",
            "1764270000.M123456P4242Q0R0123ABCD",
            "x.M123456P1Q0R0123abcd",
            "../queue/1.M123456P1Q0R0123abcd",
            "1.M123456P1Q0R0123abc",
            "",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn bare_users_get_the_host_name() {
        let m = mailbox("alice", "mx.test").unwrap();
        assert_eq!(m.to_string(), "alice@mx.test");
        assert_eq!(
            mailbox("<bob@example.test>", "mx.test")
                .unwrap()
                .to_string(),
            "bob@example.test"
        );
        assert!(mailbox("a b@c", "h").is_err());
        assert!(mailbox("", "h").is_err());
        assert_eq!(sender("<>", "h"), Ok(ReversePath::Null));
        assert_eq!(sender("", "h"), Ok(ReversePath::Null));
    }

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(crlf(b""), b"");
    }

    #[test]
    fn recipients_come_from_to_cc_and_bcc_and_bcc_goes() {
        let message = b"From: me\r\nTo: Ann <ann@example.test>, bob\r\nCC: \"Doe, C\" <c@x.test> (a comment),\r\n\td@x.test\r\nBcc: hidden@x.test,\r\n more@x.test\r\nSubject: Bcc: not this\r\n\r\nTo: body@x.test\r\n";
        let (addresses, kept) = extract_recipients(message);
        assert_eq!(
            addresses,
            [
                "ann@example.test",
                "bob",
                "c@x.test",
                "d@x.test",
                "hidden@x.test",
                "more@x.test"
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&kept),
            "From: me\r\nTo: Ann <ann@example.test>, bob\r\nCC: \"Doe, C\" <c@x.test> (a comment),\r\n\td@x.test\r\nSubject: Bcc: not this\r\n\r\nTo: body@x.test\r\n"
        );
    }

    #[test]
    fn groups_and_empty_lists() {
        assert_eq!(
            address_list("team: a@x.test, B <b@x.test>;, c@x.test"),
            ["a@x.test", "b@x.test", "c@x.test"]
        );
        assert!(address_list("undisclosed-recipients:;").is_empty());
        assert!(address_list("").is_empty());
    }
}
