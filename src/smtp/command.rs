//! One command line (without its line end) to a `Command`, or a `ParseError` saying why not.
//!
//! Knows the syntax of verbs and parameters only; whether a command may run now, and which
//! reply an error gets, is the session's business.

use super::address::{self, AddressError, ForwardPath, ReversePath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt(ForwardPath),
    Data,
    /// `BDAT size [LAST]` (RFC 3030): the next `size` octets are message content.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// Known verbs we deliberately do not offer (EXPN, TURN, ...).
    NotImplemented(&'static str),
}

/// The ESMTP parameters of MAIL FROM that we understand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870), the client's estimate.
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152); `BODY=7BIT` is the default and leaves this false.
    pub eight_bit: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

impl MailParams {
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a verb we know.
    Unknown,
    /// An HTTP request line: someone pointed a browser or a proxy at us.
    Http,
    /// The verb's arguments are malformed; the text is the usage to show.
    Syntax(&'static str),
    BadSender(AddressError),
    BadRecipient(AddressError),
    /// A MAIL or RCPT parameter we do not support, or a bad value for one.
    UnknownParameter(String),
}

const NOT_IMPLEMENTED: &[&str] = &["EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"];
const HTTP_VERBS: &[&str] = &["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"];

/// A verb this server knows (or knows to refuse), in any case.
pub fn is_verb(word: &[u8]) -> bool {
    const VERBS: &[&str] = &[
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "HELP", "VRFY",
        "STARTTLS", "AUTH",
    ];
    VERBS
        .iter()
        .chain(NOT_IMPLEMENTED)
        .chain(HTTP_VERBS)
        .any(|verb| word.eq_ignore_ascii_case(verb.as_bytes()))
}

/// Parses one command line; `line` has no CR LF.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Unknown)?;
    let (verb, arg) = match line.split_once(' ') {
        Some((verb, arg)) => (verb, arg),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_arg = |usage: &'static str, command: Command| {
        if arg.trim().is_empty() {
            Ok(command)
        } else {
            Err(ParseError::Syntax(usage))
        }
    };
    match verb.as_str() {
        "EHLO" => domain_arg(arg, "EHLO hostname").map(Command::Ehlo),
        "HELO" => domain_arg(arg, "HELO hostname").map(Command::Helo),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg("DATA", Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg("RSET", Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_arg("STARTTLS", Command::StartTls),
        "AUTH" => {
            let mut words = arg.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(mechanism), initial, None) => Ok(Command::Auth {
                    mechanism: mechanism.to_string(),
                    initial: initial.map(str::to_string),
                }),
                _ => Err(ParseError::Syntax("AUTH mechanism [initial-response]")),
            }
        }
        "VRFY" if arg.trim().is_empty() => Err(ParseError::Syntax("VRFY address")),
        "VRFY" => Ok(Command::Vrfy),
        v if HTTP_VERBS.contains(&v) => Err(ParseError::Http),
        v => match NOT_IMPLEMENTED.iter().find(|known| **known == v) {
            Some(known) => Ok(Command::NotImplemented(known)),
            None => Err(ParseError::Unknown),
        },
    }
}

fn domain_arg(arg: &str, usage: &'static str) -> Result<String, ParseError> {
    match arg.split_whitespace().next() {
        Some(name) => Ok(name.to_string()),
        None => Err(ParseError::Syntax(usage)),
    }
}

/// Strips a case-insensitive `FROM:` / `TO:` keyword.
fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| &arg[keyword.len()..])
}

fn parse_mail(arg: &str) -> Result<Command, ParseError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let path = strip_keyword(arg, "FROM:").ok_or(ParseError::Syntax(USAGE))?;
    let (from, rest) = address::parse_reverse_path(path).map_err(ParseError::BadSender)?;
    let mut params = MailParams::default();
    for param in parameters(rest)? {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (param, None),
        };
        let unknown = || ParseError::UnknownParameter(param.to_string());
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                // An absurd number saturates: it is over any limit either way.
                params.size = Some(n.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(body)) if body.eq_ignore_ascii_case("7BIT") => params.eight_bit = false,
            ("BODY", Some(body)) if body.eq_ignore_ascii_case("8BITMIME") => {
                params.eight_bit = true
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 5: a server offering AUTH accepts AUTH= and may ignore it (we do).
            ("AUTH", Some(_)) => {}
            _ => return Err(unknown()),
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_bdat(arg: &str) -> Result<Command, ParseError> {
    const USAGE: &str = "BDAT size [LAST]";
    let mut words = arg.split_whitespace();
    let size = match words.next() {
        Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().map_err(|_| ParseError::Syntax(USAGE))?
        }
        _ => return Err(ParseError::Syntax(USAGE)),
    };
    let last = match (words.next(), words.next()) {
        (None, _) => false,
        (Some(word), None) if word.eq_ignore_ascii_case("LAST") => true,
        _ => return Err(ParseError::Syntax(USAGE)),
    };
    Ok(Command::Bdat { size, last })
}

fn parse_rcpt(arg: &str) -> Result<Command, ParseError> {
    const USAGE: &str = "RCPT TO:<address>";
    let path = strip_keyword(arg, "TO:").ok_or(ParseError::Syntax(USAGE))?;
    let (to, rest) = address::parse_forward_path(path).map_err(ParseError::BadRecipient)?;
    // We offer no RCPT extension (no DSN), so any parameter is unknown.
    if let Some(param) = parameters(rest)?.next() {
        return Err(ParseError::UnknownParameter(param.to_string()));
    }
    Ok(Command::Rcpt(to))
}

/// The space-separated `keyword[=value]` list after a path.
fn parameters(rest: &str) -> Result<impl Iterator<Item = &str>, ParseError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::Syntax("address must be followed by a space"));
    }
    Ok(rest.split(' ').filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn mail(from: &str) -> Result<Command, ParseError> {
        parse(format!("MAIL FROM:{from}").as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"noop anything at all"), Ok(Command::Noop));
    }

    #[test]
    fn helo_needs_a_name() {
        assert_eq!(parse(b"EHLO"), Err(ParseError::Syntax("EHLO hostname")));
        assert_eq!(parse(b"HELO "), Err(ParseError::Syntax("HELO hostname")));
    }

    #[test]
    fn mail_with_parameters() {
        let Ok(Command::Mail { from, params }) =
            mail("<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("did not parse")
        };
        assert_eq!(
            from,
            ReversePath::Mailbox(Mailbox {
                local: "a".into(),
                domain: "b.example".into()
            })
        );
        assert_eq!(params.size, Some(1000));
        assert!(params.eight_bit && params.smtputf8);
    }

    #[test]
    fn mail_keyword_is_case_insensitive_and_tolerates_a_space() {
        assert!(matches!(parse(b"mail from: <>"), Ok(Command::Mail { .. })));
    }

    #[test]
    fn mail_without_from_is_syntax_error() {
        assert_eq!(
            parse(b"MAIL <a@b>"),
            Err(ParseError::Syntax("MAIL FROM:<address>"))
        );
        assert_eq!(
            parse(b"MAIL"),
            Err(ParseError::Syntax("MAIL FROM:<address>"))
        );
    }

    #[test]
    fn bare_addresses_take_parameters_too() {
        let Ok(Command::Mail { from, params }) = mail("user@host.example SIZE=100") else {
            panic!("did not parse")
        };
        assert_eq!(from.to_string(), "<user@host.example>");
        assert_eq!(params.size, Some(100));
        assert!(matches!(
            parse(b"rcpt to:alice@example.org"),
            Ok(Command::Rcpt(_))
        ));
        assert_eq!(
            parse(b"RCPT TO:a@b NOTIFY=NEVER"),
            Err(ParseError::UnknownParameter("NOTIFY=NEVER".into()))
        );
    }

    #[test]
    fn missing_or_ambiguous_bare_addresses_are_refused() {
        for bad in ["", " ", "a@b c@d", "a@b SIZE=1 c@d", "Ann a@b", "<a@b"] {
            assert_eq!(
                mail(bad),
                Err(ParseError::BadSender(AddressError::MissingBrackets)),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(b"RCPT TO:a@b c@d"),
            Err(ParseError::BadRecipient(AddressError::MissingBrackets))
        );
        assert!(matches!(mail("\"a b\"@c"), Err(ParseError::BadSender(_))));
    }

    #[test]
    fn unknown_or_bad_parameters() {
        assert_eq!(
            mail("<> FOO=1"),
            Err(ParseError::UnknownParameter("FOO=1".into()))
        );
        assert_eq!(
            mail("<> SIZE=abc"),
            Err(ParseError::UnknownParameter("SIZE=abc".into()))
        );
        assert_eq!(
            mail("<> BODY=BINARYMIME"),
            Err(ParseError::UnknownParameter("BODY=BINARYMIME".into()))
        );
        assert_eq!(
            parse(b"RCPT TO:<a@b> NOTIFY=NEVER"),
            Err(ParseError::UnknownParameter("NOTIFY=NEVER".into()))
        );
    }

    #[test]
    fn huge_size_saturates() {
        let Ok(Command::Mail { params, .. }) = mail("<> SIZE=99999999999999999999999") else {
            panic!("did not parse")
        };
        assert_eq!(params.size, Some(u64::MAX));
    }

    #[test]
    fn bad_addresses_are_named_by_side() {
        assert!(matches!(mail("<a b@c>"), Err(ParseError::BadSender(_))));
        assert!(matches!(
            parse(b"RCPT TO:<a@>"),
            Err(ParseError::BadRecipient(_))
        ));
        assert_eq!(
            parse(b"RCPT FROM:<a@b>"),
            Err(ParseError::Syntax("RCPT TO:<address>"))
        );
    }

    #[test]
    fn data_and_rset_take_no_argument() {
        assert_eq!(parse(b"DATA"), Ok(Command::Data));
        assert_eq!(parse(b"DATA x"), Err(ParseError::Syntax("DATA")));
        assert_eq!(parse(b"RSET x"), Err(ParseError::Syntax("RSET")));
    }

    #[test]
    fn bdat_size_and_last() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            &b"BDAT"[..],
            b"BDAT x",
            b"BDAT -1",
            b"BDAT 1 FIRST",
            b"BDAT 1 LAST x",
            b"BDAT 99999999999999999999999",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::Syntax("BDAT size [LAST]")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_http_and_unimplemented() {
        assert_eq!(parse(b"FROB"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::Unknown));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(ParseError::Http));
        assert_eq!(parse(b"EXPN staff"), Ok(Command::NotImplemented("EXPN")));
        assert_eq!(parse(b"VRFY"), Err(ParseError::Syntax("VRFY address")));
        assert_eq!(parse(b"VRFY root"), Ok(Command::Vrfy));
    }
}
