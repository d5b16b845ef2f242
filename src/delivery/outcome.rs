//! What became of one delivery attempt, as data (Postfix's `DSN_BUF` idea): the action, the
//! RFC 3463 status and one clean line of text for people. `Outcome::from_reply` is the one
//! classifier of remote replies; local failures name their status where they happen. Every
//! decision (deliver, defer, bounce, which DSN status) reads the typed fields, never the text.

use std::fmt;

/// The most characters of remote text kept in an outcome (and so in envelopes, logs, DSNs).
const MAX_TEXT: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Delivered,
    /// A local alias: its targets became recipients of their own (RFC 3464 `expanded`).
    Expanded,
    Deferred,
    Failed,
}

/// An RFC 3463 enhanced status code, `class.subject.detail`, such as 5.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsnStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl DsnStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> DsnStatus {
        DsnStatus {
            class,
            subject,
            detail,
        }
    }

    /// `4.4.7` and the like; `None` for anything else (RFC 3463: 1-3 digits each part).
    pub fn parse(text: &str) -> Option<DsnStatus> {
        let mut parts = text.split('.');
        let class = match parts.next()? {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let mut number = || -> Option<u16> {
            let part = parts.next()?;
            let ok = (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| part.parse().ok()).flatten()
        };
        let (subject, detail) = (number()?, number()?);
        match parts.next() {
            None => Some(DsnStatus::new(class, subject, detail)),
            Some(_) => None,
        }
    }
}

impl fmt::Display for DsnStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The outcome of one recipient's attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    pub status: DsnStatus,
    /// The reply (`550 5.1.1 ... (in reply to RCPT TO:<...>)`) or our own reason: one line.
    pub text: String,
}

impl Outcome {
    pub fn delivered(text: impl AsRef<str>) -> Outcome {
        Outcome::new(Action::Delivered, DsnStatus::new(2, 0, 0), text)
    }

    pub fn expanded(text: impl AsRef<str>) -> Outcome {
        Outcome::new(Action::Expanded, DsnStatus::new(2, 0, 0), text)
    }

    /// A temporary failure with its status, e.g. 4.3.0 for a Maildir that cannot be written.
    pub fn deferred(status: DsnStatus, text: impl AsRef<str>) -> Outcome {
        Outcome::new(Action::Deferred, status, text)
    }

    /// A permanent failure with its status, e.g. 5.1.1 for an unknown user.
    pub fn failed(status: DsnStatus, text: impl AsRef<str>) -> Outcome {
        Outcome::new(Action::Failed, status, text)
    }

    fn new(action: Action, status: DsnStatus, text: impl AsRef<str>) -> Outcome {
        Outcome {
            action,
            status,
            text: clean_line(text.as_ref()),
        }
    }

    /// The classifier of remote replies: 2xx delivers, 5xx fails, anything else defers (a
    /// 1xx or 3xx where a final answer belongs is a broken server: try again later). The
    /// status is the reply's enhanced code when it has one of the right class.
    pub fn from_reply(code: u16, text: &str, context: &str) -> Outcome {
        let (action, class) = match code / 100 {
            2 => (Action::Delivered, 2),
            5 => (Action::Failed, 5),
            _ => (Action::Deferred, 4),
        };
        let status = text
            .split_whitespace()
            .next()
            .and_then(DsnStatus::parse)
            .filter(|s| s.class == class)
            .unwrap_or(DsnStatus::new(class, 0, 0));
        Outcome::new(
            action,
            status,
            format!("{code} {text} (in reply to {context})"),
        )
    }
}

/// One line of printable text, whatever a remote server sent: control characters (CR, LF,
/// NUL, ...) become spaces, runs of spaces one, and the length is bounded.
pub fn clean_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT + 3));
    let mut kept = 0;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if kept == MAX_TEXT {
            out.push_str("...");
            return out;
        }
        out.push(c);
        kept += 1;
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified_by_code_and_enhanced_status() {
        let o = Outcome::from_reply(550, "5.1.1 no such user", "RCPT TO:<a@b>");
        assert_eq!(o.action, Action::Failed);
        assert_eq!(o.status, DsnStatus::new(5, 1, 1));
        assert_eq!(o.text, "550 5.1.1 no such user (in reply to RCPT TO:<a@b>)");
        let o = Outcome::from_reply(451, "4.3.0 later", "x");
        assert_eq!(
            (o.action, o.status),
            (Action::Deferred, DsnStatus::new(4, 3, 0))
        );
        let o = Outcome::from_reply(250, "2.0.0 ok", "x");
        assert_eq!(o.action, Action::Delivered);
        // A 3xx where a final reply belongs is a broken server: defer, never deliver.
        let o = Outcome::from_reply(354, "go ahead", "end of DATA");
        assert_eq!(
            (o.action, o.status),
            (Action::Deferred, DsnStatus::new(4, 0, 0))
        );
        // An enhanced code of the wrong class, or none, gives the class default.
        let o = Outcome::from_reply(550, "4.1.1 odd", "x");
        assert_eq!(o.status, DsnStatus::new(5, 0, 0));
        let o = Outcome::from_reply(554, "rejected", "x");
        assert_eq!(o.status, DsnStatus::new(5, 0, 0));
    }

    #[test]
    fn status_codes_parse_strictly() {
        assert_eq!(DsnStatus::parse("4.4.7"), Some(DsnStatus::new(4, 4, 7)));
        assert_eq!(DsnStatus::parse("5.1.10"), Some(DsnStatus::new(5, 1, 10)));
        assert_eq!(DsnStatus::new(5, 1, 10).to_string(), "5.1.10");
        for bad in [
            "", "5", "5.1", "3.1.1", "5.x.1", "5.1.1.1", "5.1.1000", "5..1",
        ] {
            assert_eq!(DsnStatus::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_text_becomes_one_bounded_line() {
        assert_eq!(clean_line("a\r\nb\0c\t d  "), "a b c d");
        let long = "x".repeat(400_000);
        let line = clean_line(&long);
        assert!(line.len() <= MAX_TEXT + 3 && line.ends_with("..."));
        let o = Outcome::from_reply(550, &format!("5.7.1 {long}"), "x");
        assert!(o.text.len() <= MAX_TEXT + 3);
        assert_eq!(o.status, DsnStatus::new(5, 7, 1));
    }
}
