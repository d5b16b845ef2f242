//! The maildrop file: what `sendmail` leaves in `spool/maildrop/` for the daemon to take in.
//!
//! A few lines of its own, each `Field: value` on one line — `Sender:` (`-f`, `<>` for the
//! null sender), `Full-Name:` (`-F`), `Rcpt:` (one per recipient argument), `Extract: yes`
//! (`-t`) — then an empty line, then the message as read (LF or CRLF). Also the pure parts of
//! taking one in: its name (a queue id, strictly checked), addresses as sendmail takes them
//! (`user` is `user@HOSTNAME`), recipients from `To:`/`Cc:`/`Bcc:` with `Bcc:` removed, and
//! line ends made CRLF. No files here: `sendmail.rs` writes, `pickup.rs` reads.

use std::fmt::Write as _;
use std::io::{self, BufRead, Read};

use crate::smtp::address::{self, ForwardPath, Mailbox, ReversePath};

/// The most `Rcpt:` lines and header recipients looked at, whatever `max_recipients` says.
const MAX_LINES: usize = 10_000;

/// The most bytes of the file's own lines (10,000 long recipients fit).
pub const MAX_FIELDS_BYTES: usize = 1 << 20;
/// The longest header section taken: `Bcc:` is removed and `-t` recipients are read from it,
/// so it is read whole, and it is bounded (as `missing_headers::MAX_HELD`).
pub const MAX_HEADER: usize = crate::missing_headers::MAX_HELD;

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
    #[cfg(test)]
    pub fn parse(file: &[u8]) -> Result<(Submission, &[u8]), FormatError> {
        let mut rest = file;
        let submission = Submission::read(&mut rest).map_err(|e| FormatError(e.to_string()))??;
        Ok((submission, rest))
    }

    /// Reads the file's own lines and the empty line after them from `input`, which is left
    /// at the first byte of the message. At most `MAX_FIELDS_BYTES` are read. The outer error
    /// is a failure to read, the inner one bad content.
    pub fn read(input: &mut impl BufRead) -> io::Result<Result<Submission, FormatError>> {
        let mut submission = Submission::default();
        let mut lines = 0;
        let mut read = 0usize;
        let mut line = Vec::new();
        loop {
            line.clear();
            let room = (MAX_FIELDS_BYTES + 1).saturating_sub(read) as u64;
            read += input.by_ref().take(room).read_until(b'\n', &mut line)?;
            if read > MAX_FIELDS_BYTES {
                let why = format!("its own fields are longer than {MAX_FIELDS_BYTES} bytes");
                return Ok(Err(FormatError(why)));
            }
            if let Err(e) = submission.add_line(&line, &mut lines) {
                return Ok(Err(e));
            }
            if line == b"\n" {
                return Ok(Ok(submission));
            }
        }
    }

    /// Takes one line of the file's own (with its LF; the empty line adds nothing).
    fn add_line(&mut self, line: &[u8], lines: &mut usize) -> Result<(), FormatError> {
        let Some(line) = line.strip_suffix(b"\n") else {
            return Err(FormatError("no empty line after its own fields".into()));
        };
        let line =
            std::str::from_utf8(line).map_err(|_| FormatError("a field is not UTF-8".into()))?;
        if line.is_empty() {
            return Ok(());
        }
        *lines += 1;
        if *lines > MAX_LINES {
            return Err(FormatError(format!("more than {MAX_LINES} fields")));
        }
        let (name, value) = line
            .split_once(": ")
            .ok_or_else(|| FormatError(format!("'{}' is not 'Field: value'", shown(line))))?;
        if !one_line(value) {
            return Err(FormatError(format!("{name}: control characters")));
        }
        match name {
            "Sender" if self.sender.is_none() => self.sender = Some(value.into()),
            "Full-Name" if self.full_name.is_none() => self.full_name = Some(value.into()),
            "Rcpt" => self.recipients.push(value.into()),
            "Extract" if value == "yes" => self.extract = true,
            _ => return Err(FormatError(format!("unexpected field '{}'", shown(name)))),
        }
        Ok(())
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
#[cfg(test)]
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut converter = Crlf::default();
    converter.convert(message, &mut out);
    converter.finish(&mut out);
    out
}

/// `crlf` on a stream: pieces in, split anywhere; the same bytes out.
#[derive(Clone, Debug, Default)]
pub struct Crlf {
    /// The last byte in was a CR, not yet written (a LF may follow).
    pending_cr: bool,
    /// Something was written, and the last of it is not a line end.
    open_line: bool,
}

impl Crlf {
    /// Appends the converted `input` to `out`.
    pub fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 2);
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.open_line = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.open_line = false;
                }
                b => {
                    out.push(b);
                    self.open_line = true;
                }
            }
        }
    }

    /// The end of the input: a last line gets its line end.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) || std::mem::take(&mut self.open_line) {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Where the header section of CRLF `content` ends (the empty line, or the first line that
/// is neither a field nor a continuation), once what is there shows it: a last line without
/// its line end counts when it cannot be the start of a field (a byte before its colon that
/// no field name has).
pub fn header_end(content: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut in_field = false;
    while let Some(n) = content[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &content[at..at + n + 2];
        let continued = in_field && (line[0] == b' ' || line[0] == b'\t');
        if !continued {
            if !is_field(line) {
                return Some(at);
            }
            in_field = true;
        }
        at += n + 2;
    }
    let partial = &content[at..];
    let continued = in_field && matches!(partial.first(), Some(b' ' | b'\t'));
    let name = partial.split(|&b| b == b':').next().unwrap_or_default();
    let not_a_name = partial.starts_with(b":") || name.iter().any(|b| !(33..=126).contains(b));
    (!partial.is_empty() && !continued && not_a_name).then_some(at)
}

/// RFC 5322 2.2: a name of printable US-ASCII but the colon, then a colon.
fn is_field(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(n) => n > 0 && line[..n].iter().all(|&b| (33..=126).contains(&b)),
        None => false,
    }
}

/// Why a submission's recipients cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RecipientError {
    /// None given, or none valid.
    NoneValid,
    /// More than `max_recipients` (the limit).
    TooMany(usize),
}

impl std::fmt::Display for RecipientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecipientError::NoneValid => f.write_str("no valid recipient"),
            RecipientError::TooMany(max) => {
                write!(f, "more than max_recipients ({max}) recipients")
            }
        }
    }
}

/// The recipients of a submission, as sendmail and the daemon both count them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recipients {
    /// Valid and distinct, in order: the arguments, then (with `-t`) the header's.
    pub valid: Vec<ForwardPath>,
    /// Why each invalid one is: `'ADDRESS': reason`.
    pub invalid: Vec<String>,
}

/// The recipients of `submission`, with `in_header` (from `extract_recipients`) added for
/// `-t` (as Postfix: arguments and header both), checked against `max_recipients`.
pub fn recipients(
    submission: &Submission,
    in_header: &[String],
    hostname: &str,
    max_recipients: usize,
) -> Result<Recipients, RecipientError> {
    let mut asked: Vec<&str> = submission.recipients.iter().map(String::as_str).collect();
    if submission.extract {
        asked.extend(in_header.iter().map(String::as_str));
    }
    let mut found = Recipients::default();
    for arg in asked {
        match recipient(arg, hostname) {
            Ok(path) if !found.valid.contains(&path) => found.valid.push(path),
            Ok(_) => {}
            Err(e) => found.invalid.push(e),
        }
        if found.valid.len() > max_recipients {
            // Counted no further: it is refused anyway.
            return Err(RecipientError::TooMany(max_recipients));
        }
    }
    match found.valid.is_empty() {
        true => Err(RecipientError::NoneValid),
        false => Ok(found),
    }
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
        assert_eq!(crlf(b"a\r"), b"a\r\n");
        assert_eq!(crlf(b"\r\r\n"), b"\r\n\r\n");
    }

    #[test]
    fn crlf_in_pieces_is_crlf_whole() {
        let input = b"a\r\nb\rc\n\r\r\nd\n\ne\r";
        for step in 1..=input.len() {
            let mut converter = Crlf::default();
            let mut out = Vec::new();
            for piece in input.chunks(step) {
                converter.convert(piece, &mut out);
            }
            converter.finish(&mut out);
            assert_eq!(out, crlf_whole(input), "pieces of {step}");
        }
    }

    /// The plain definition, byte by byte.
    fn crlf_whole(input: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(input)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        let mut out = text.replace('\n', "\r\n").into_bytes();
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn the_header_section_ends_at_the_empty_line_or_the_first_other_line() {
        assert_eq!(header_end(b"A: 1\r\n b\r\n\r\nbody\r\n"), Some(10));
        assert_eq!(header_end(b"A: 1\r\nbody\r\n"), Some(6));
        assert_eq!(header_end(b" x\r\n"), Some(0));
        assert_eq!(
            header_end(b"A: 1\r\nB: 2"),
            None,
            "no complete line says so"
        );
        assert_eq!(header_end(b"A: 1\r\n a long folded"), None);
        assert_eq!(header_end(b"A: 1\r\nnot a field, and long"), Some(6));
        assert_eq!(header_end(b"A: 1\r\n: no name"), Some(6));
        assert_eq!(header_end(b""), None);
    }

    #[test]
    fn recipients_are_checked_counted_and_deduplicated() {
        let mut submission = Submission {
            recipients: vec!["bob".into(), "bob@mx.test".into()],
            ..Submission::default()
        };
        let header = ["<a b@c>".to_string(), "carol@x.test".to_string()];
        let found = recipients(&submission, &header, "mx.test", 5).unwrap();
        assert_eq!(found.valid.len(), 1, "without -t the header is not read");
        submission.extract = true;
        let found = recipients(&submission, &header, "mx.test", 5).unwrap();
        assert_eq!(found.valid.len(), 2);
        assert_eq!(found.invalid.len(), 1);
        assert!(
            found.invalid[0].starts_with("'<a b@c>'"),
            "{:?}",
            found.invalid
        );
        assert_eq!(
            recipients(&submission, &header, "mx.test", 1),
            Err(RecipientError::TooMany(1))
        );
        let only_bad = Submission {
            extract: true,
            ..Submission::default()
        };
        assert_eq!(
            recipients(&only_bad, &header[..1], "mx.test", 5),
            Err(RecipientError::NoneValid)
        );
    }

    #[test]
    fn own_fields_past_their_bound_are_refused() {
        let mut file = Vec::new();
        while file.len() <= MAX_FIELDS_BYTES {
            file.extend_from_slice(format!("Rcpt: {}@example.test\n", "a".repeat(200)).as_bytes());
        }
        file.extend_from_slice(b"\nx\n");
        assert!(Submission::parse(&file).is_err());
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
