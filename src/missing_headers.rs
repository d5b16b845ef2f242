//! Adds `Date:`, `Message-ID:` and `From:` to a message whose header section lacks them, as
//! Postfix does for local clients (Gmail refuses mail without them). Used for mail from
//! sendmail and for SMTP mail from `relay_networks` clients and authenticated users.
//!
//! Pure: content (CRLF line ends, already unstuffed) goes in by pieces, split anywhere; what
//! to store comes out. The header section is held until its end (the empty line, a line that
//! is not a header field, or the end of the message), at most `MAX_HELD` bytes: past that it
//! is passed on untouched and nothing is added. The missing fields go at the end of the header
//! section. Nothing here reads clocks or files: the values to add are given.

use crate::datetime;
use crate::smtp::address::ReversePath;

/// The most header bytes held while looking for the end of the header section.
pub const MAX_HELD: usize = 64 * 1024;

/// The fields to add when missing: each a complete `Name: value` without its line end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub date: String,
    pub message_id: String,
    pub from: String,
}

impl Defaults {
    /// The usual values: `Date:` of `now`, `Message-ID: <ID@HOST>`, `From:` the envelope
    /// sender (`MAILER-DAEMON@HOST` for `<>`), with `full_name` as `Name <address>`.
    pub fn new(
        now: u64,
        id: &str,
        hostname: &str,
        sender: &ReversePath,
        full_name: Option<&str>,
    ) -> Defaults {
        let address = match sender {
            ReversePath::Null => format!("MAILER-DAEMON@{hostname}"),
            ReversePath::Mailbox(mailbox) => mailbox.to_string(),
        };
        let from = match full_name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => format!("From: {} <{address}>", display_name(name)),
            None => format!("From: {address}"),
        };
        Defaults {
            date: format!("Date: {}", datetime::rfc5322(now)),
            message_id: format!("Message-ID: <{id}@{hostname}>"),
            from,
        }
    }
}

/// A display name as it may stand in a header (RFC 5322 3.2.5 `phrase`): ASCII words as
/// they are, ASCII with specials as a quoted string, anything not ASCII as RFC 2047 encoded
/// words (`=?UTF-8?B?...?=`), so that the header stays 7-bit. Control characters become
/// spaces.
fn display_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if !name.is_ascii() {
        return encoded_words(&name);
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c);
    match name.chars().all(atext) {
        true => name,
        false => format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\"")),
    }
}

/// `text` as RFC 2047 `B` encoded words of at most 75 characters, split between characters
/// and separated by a space (which a reader drops between encoded words).
fn encoded_words(text: &str) -> String {
    // 45 bytes make 60 of base64; with `=?UTF-8?B?` and `?=`, 72.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut piece = String::new();
    for c in text.chars() {
        if piece.len() + c.len_utf8() > MAX_BYTES {
            words.push(format!("=?UTF-8?B?{}?=", base64(piece.as_bytes())));
            piece.clear();
        }
        piece.push(c);
    }
    if !piece.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(piece.as_bytes())));
    }
    words.join(" ")
}

/// Standard base64 with padding (RFC 4648 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

#[derive(Debug)]
pub struct HeaderFill {
    defaults: Defaults,
    /// The header section so far (complete lines and a partial one); `None` once passed on.
    held: Option<Vec<u8>>,
    /// Where the first line not yet looked at starts in `held`.
    scanned: usize,
    has_date: bool,
    has_message_id: bool,
    has_from: bool,
    /// The last complete line was a header field (a continuation line may follow).
    in_field: bool,
}

impl HeaderFill {
    pub fn new(defaults: Defaults) -> HeaderFill {
        HeaderFill {
            defaults,
            held: Some(Vec::new()),
            scanned: 0,
            has_date: false,
            has_message_id: false,
            has_from: false,
            in_field: false,
        }
    }

    /// Takes the next piece of content; appends to `out` what can be stored now.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(held) = &mut self.held else {
            out.extend_from_slice(input);
            return;
        };
        held.extend_from_slice(input);
        let mut ended = None;
        while let Some(end) = held[self.scanned..].iter().position(|&b| b == b'\n') {
            let (start, stop) = (self.scanned, self.scanned + end + 1);
            if stop > MAX_HELD {
                break;
            }
            match classify(&held[start..stop]) {
                Line::Field(name) => {
                    let name = name.to_ascii_lowercase();
                    self.has_date |= name == b"date";
                    self.has_message_id |= name == b"message-id";
                    self.has_from |= name == b"from";
                    self.in_field = true;
                }
                Line::Continuation if self.in_field => {}
                Line::Empty => {
                    ended = Some((start, false));
                    break;
                }
                Line::Continuation | Line::Other => {
                    ended = Some((start, true));
                    break;
                }
            }
            self.scanned = stop;
        }
        match ended {
            Some((at, separate)) => self.end_headers(at, separate, out),
            None if held.len() > MAX_HELD || self.scanned > MAX_HELD => {
                // Too long a header section: left as it is.
                out.append(held);
                self.held = None;
            }
            None => {}
        }
    }

    /// The end of the message: a header section still held gets what it lacks.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(held) = &mut self.held {
            if held.len() > self.scanned && !held.ends_with(b"\n") {
                held.extend_from_slice(b"\r\n");
            }
            let end = held.len();
            self.end_headers(end, false, out);
        }
    }

    /// The header section ends at `at` in the held bytes: writes it, the missing fields, an
    /// empty line when the body starts without one (`separate`), and the rest held.
    fn end_headers(&mut self, at: usize, separate: bool, out: &mut Vec<u8>) {
        let Some(held) = self.held.take() else {
            return;
        };
        out.extend_from_slice(&held[..at]);
        let d = &self.defaults;
        for (has, field) in [
            (self.has_date, &d.date),
            (self.has_message_id, &d.message_id),
            (self.has_from, &d.from),
        ] {
            if !has {
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if separate {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&held[at..]);
    }
}

enum Line<'a> {
    /// `Name:` then anything; the name.
    Field(&'a [u8]),
    /// Starts with a space or tab.
    Continuation,
    Empty,
    /// Not a header line: the body started without an empty line.
    Other,
}

fn classify(line: &[u8]) -> Line<'_> {
    if line == b"\r\n" || line == b"\n" {
        return Line::Empty;
    }
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Line::Continuation;
    }
    // RFC 5322 2.2: printable US-ASCII except the colon, then a colon.
    match line.iter().position(|&b| b == b':') {
        Some(n) if n > 0 && line[..n].iter().all(|&b| (33..=126).contains(&b)) => {
            Line::Field(&line[..n])
        }
        _ => Line::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            date: "Date: D".into(),
            message_id: "Message-ID: <I@h>".into(),
            from: "From: f@h".into(),
        }
    }

    /// Feeds `input` cut into pieces of `step` bytes.
    fn fill(input: &[u8], step: usize) -> Vec<u8> {
        let mut f = HeaderFill::new(defaults());
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            f.feed(piece, &mut out);
        }
        f.finish(&mut out);
        out
    }

    fn every_split(input: &[u8], expected: &[u8]) {
        for step in 1..=input.len() + 1 {
            assert_eq!(
                String::from_utf8_lossy(&fill(input, step)),
                String::from_utf8_lossy(expected),
                "pieces of {step}"
            );
        }
    }

    #[test]
    fn defaults_name_the_sender() {
        use crate::smtp::address::Mailbox;
        let ann = ReversePath::Mailbox(Mailbox {
            local: "ann".into(),
            domain: "x.test".into(),
        });
        let d = Defaults::new(0, "ID", "mx.test", &ann, Some("Ann Example"));
        assert_eq!(d.date, "Date: Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(d.message_id, "Message-ID: <ID@mx.test>");
        assert_eq!(d.from, "From: Ann Example <ann@x.test>");
        let d = Defaults::new(0, "ID", "mx.test", &ann, Some("Doe, \"J\""));
        assert_eq!(d.from, "From: \"Doe, \\\"J\\\"\" <ann@x.test>");
        let d = Defaults::new(0, "ID", "mx.test", &ann, Some("J. Doe"));
        assert_eq!(d.from, "From: \"J. Doe\" <ann@x.test>");
        let d = Defaults::new(0, "ID", "mx.test", &ann, Some("Jörg"));
        assert_eq!(d.from, "From: =?UTF-8?B?SsO2cmc=?= <ann@x.test>");
        let d = Defaults::new(0, "ID", "mx.test", &ReversePath::Null, None);
        assert_eq!(d.from, "From: MAILER-DAEMON@mx.test");
    }

    #[test]
    fn long_non_ascii_names_are_split_into_encoded_words() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let name = "é".repeat(40);
        let encoded = display_name(&name);
        assert!(encoded.is_ascii());
        let words: Vec<&str> = encoded.split(' ').collect();
        assert_eq!(words.len(), 2, "{encoded}");
        assert!(words
            .iter()
            .all(|w| w.len() <= 75 && w.starts_with("=?UTF-8?B?")));
    }

    #[test]
    fn all_three_are_added_at_the_end_of_the_header_section() {
        every_split(
            b"Subject: hi\r\n\r\nbody\r\n",
            b"Subject: hi\r\nDate: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n\r\nbody\r\n",
        );
    }

    #[test]
    fn present_fields_are_kept_in_any_case_and_not_added() {
        let input = b"DATE: x\r\nmessage-id: <a@b>\r\nFROM: a@b\r\n\r\nbody\r\n";
        every_split(input, input);
        every_split(
            b"From: a@b\r\nSubject: s\r\n\tfolded\r\n\r\nFrom: not a header\r\n",
            b"From: a@b\r\nSubject: s\r\n\tfolded\r\nDate: D\r\nMessage-ID: <I@h>\r\n\r\nFrom: not a header\r\n",
        );
    }

    #[test]
    fn a_body_without_an_empty_line_gets_one() {
        every_split(
            b"Subject: x\r\njust text\r\n",
            b"Subject: x\r\nDate: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n\r\njust text\r\n",
        );
        every_split(
            b"no headers at all\r\n",
            b"Date: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n\r\nno headers at all\r\n",
        );
        // A continuation line first is not a header.
        every_split(
            b" indented\r\n",
            b"Date: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n\r\n indented\r\n",
        );
    }

    #[test]
    fn a_message_of_headers_only_or_empty_gets_them_at_the_end() {
        every_split(
            b"Subject: x\r\n",
            b"Subject: x\r\nDate: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n",
        );
        every_split(b"", b"Date: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n");
        // A last line without its line end gets one.
        every_split(
            b"Subject: x",
            b"Subject: x\r\nDate: D\r\nMessage-ID: <I@h>\r\nFrom: f@h\r\n",
        );
    }

    #[test]
    fn a_header_section_past_the_limit_is_passed_on_untouched() {
        let mut input = Vec::new();
        while input.len() <= MAX_HELD {
            input.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        input.extend_from_slice(b"\r\nbody\r\n");
        assert_eq!(fill(&input, 4096), input);
        assert_eq!(fill(&input, 1), input);
    }
}
