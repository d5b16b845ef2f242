//! Envelope addresses: RFC 5321 4.1.2 paths, with RFC 6531 UTF-8.
//!
//! Owns the grammar of `Path`, `Mailbox`, `Domain` and address literals. Source routes
//! (`<@a,@b:user@c>`) are accepted and dropped, as RFC 5321 C says. A path without its angle
//! brackets (`MAIL FROM:user@host`, as printers and other appliances send) is accepted when
//! it cannot be misread, as Postfix does. Pure parsing: no policy (who may use an address)
//! and no reply codes here.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1: the longest local part, domain and path we accept.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// A mailbox `local@domain`, the local part kept exactly as written (quotes included).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    /// True when either part has non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// The local part without quoting, for matching against user names.
    pub fn local_unquoted(&self) -> String {
        match self
            .local
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
        {
            Some(inner) => {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next()),
                        c => out.push(c),
                    }
                }
                out
            }
            None => self.local.clone(),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of `MAIL FROM:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications.
    Null,
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of `RCPT TO:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<postmaster>` with no domain (RFC 5321 4.1.1.3): always accepted.
    Postmaster,
    Mailbox(Mailbox),
}

impl ForwardPath {
    pub fn is_utf8(&self) -> bool {
        matches!(self, ForwardPath::Mailbox(m) if m.is_utf8())
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Why a path did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// No path, a `<` without its `>`, or a path without brackets that could be misread
    /// (followed by something that is not a parameter, as in `a@b c@d`).
    MissingBrackets,
    /// The path, local part or domain is longer than RFC 5321 allows.
    TooLong,
    /// Anything else that is not RFC 5321 syntax.
    Syntax,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::MissingBrackets => "address must be enclosed in <>",
            AddressError::TooLong => "address too long",
            AddressError::Syntax => "bad address syntax",
        })
    }
}

/// Splits `<path> rest` into the bracketed path and what follows it (parameters), or a bare
/// `path rest` at its first space. Tolerates spaces before the path, as many clients send
/// `MAIL FROM: <a@b>`.
fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start();
    let Some(inner) = arg.strip_prefix('<') else {
        return split_bare_path(arg);
    };
    // A `>` may appear inside a quoted local part, so find the closing bracket by scanning.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    Err(AddressError::MissingBrackets)
}

/// A path without brackets ends at the first space; only parameters may follow it, so that
/// `a@b c@d` or `Name a@b` is refused rather than guessed at. Such a path holds no space, so a
/// quoted local part with one needs the brackets.
fn split_bare_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let (path, rest) = arg.split_at(arg.find(' ').unwrap_or(arg.len()));
    if path.is_empty() || !rest.split(' ').all(|w| w.is_empty() || is_parameter(w)) {
        return Err(AddressError::MissingBrackets);
    }
    Ok((path, rest))
}

/// Has the shape of an RFC 5321 `esmtp-param`: a keyword of letters, digits and `-` (not
/// first), then maybe `=value`. Whether we know the parameter is the command parser's business.
fn is_parameter(word: &str) -> bool {
    let keyword = word.split_once('=').map_or(word, |(keyword, _)| keyword);
    keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
        && keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses `<>` or `<mailbox>` (with an optional source route, brackets optional as
/// `split_path` says) followed by parameters.
pub fn parse_reverse_path(arg: &str) -> Result<(ReversePath, &str), AddressError> {
    let (path, rest) = split_path(arg)?;
    if path.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(parse_mailbox_path(path)?), rest))
}

/// Parses `<postmaster>` or `<mailbox>` (with an optional source route, brackets optional as
/// `split_path` says) and parameters.
pub fn parse_forward_path(arg: &str) -> Result<(ForwardPath, &str), AddressError> {
    let (path, rest) = split_path(arg)?;
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    Ok((ForwardPath::Mailbox(parse_mailbox_path(path)?), rest))
}

/// `[ A-d-l ":" ] Mailbox`, the inside of the angle brackets.
fn parse_mailbox_path(path: &str) -> Result<Mailbox, AddressError> {
    if path.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    let mailbox = if path.starts_with('@') {
        let (route, mailbox) = path.split_once(':').ok_or(AddressError::Syntax)?;
        for hop in route.split(',') {
            let domain = hop.strip_prefix('@').ok_or(AddressError::Syntax)?;
            if !is_domain(domain) {
                return Err(AddressError::Syntax);
            }
        }
        mailbox
    } else {
        path
    };
    parse_mailbox(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )`.
pub fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    let at = s.rfind('@').ok_or(AddressError::Syntax)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if !(is_dot_string(local) || is_quoted_string(local)) {
        return Err(AddressError::Syntax);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(AddressError::Syntax);
    }
    Ok(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

/// RFC 5322 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            // quoted-pairSMTP: backslash and one printable ASCII character.
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return false,
            },
            '"' => return false,
            // qtextSMTP, plus UTF-8 under RFC 6531.
            ' '..='~' => {}
            c if !c.is_ascii() => {}
            _ => return false,
        }
    }
    true
}

/// `sub-domain *("." sub-domain)`, each label letters, digits and inner hyphens (or UTF-8).
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(ok_char)
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[1.2.3.4]`, `[IPv6:...]` or a general literal `[tag:text]`.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    match inner.split_once(':') {
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => addr.parse::<Ipv6Addr>().is_ok(),
        Some((tag, text)) => {
            is_domain(tag)
                && tag.is_ascii()
                && !text.is_empty()
                && text
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'[' && b != b']')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn null_reverse_path() {
        assert_eq!(parse_reverse_path("<>"), Ok((ReversePath::Null, "")));
        assert_eq!(
            parse_reverse_path("<> SIZE=10"),
            Ok((ReversePath::Null, " SIZE=10"))
        );
    }

    #[test]
    fn plain_and_spaced_paths() {
        let want = ReversePath::Mailbox(mailbox("a.b", "example.org"));
        assert_eq!(
            parse_reverse_path("<a.b@example.org>"),
            Ok((want.clone(), ""))
        );
        assert_eq!(parse_reverse_path(" <a.b@example.org>"), Ok((want, "")));
    }

    #[test]
    fn source_route_is_dropped() {
        let (path, _) = parse_forward_path("<@relay.one,@relay.two:joe@example.org>").unwrap();
        assert_eq!(path, ForwardPath::Mailbox(mailbox("joe", "example.org")));
        assert!(parse_forward_path("<@:joe@example.org>").is_err());
    }

    #[test]
    fn quoted_local_part_may_hold_spaces_at_and_brackets() {
        let (path, rest) = parse_forward_path(r#"<"john \"q\" doe@>"@example.org> X"#).unwrap();
        let ForwardPath::Mailbox(m) = path else {
            panic!("not a mailbox")
        };
        assert_eq!(m.local, r#""john \"q\" doe@>""#);
        assert_eq!(m.local_unquoted(), r#"john "q" doe@>"#);
        assert_eq!(rest, " X");
    }

    #[test]
    fn address_literals() {
        assert!(parse_mailbox("u@[127.0.0.1]").is_ok());
        assert!(parse_mailbox("u@[IPv6:::1]").is_ok());
        assert!(parse_mailbox("u@[IPv6:2001:db8::1]").is_ok());
        assert!(parse_mailbox("u@[999.0.0.1]").is_err());
        assert!(parse_mailbox("u@[IPv6:zz]").is_err());
    }

    #[test]
    fn postmaster_without_domain_any_case() {
        assert_eq!(
            parse_forward_path("<PostMaster>"),
            Ok((ForwardPath::Postmaster, ""))
        );
        assert!(parse_reverse_path("<postmaster>").is_err());
    }

    #[test]
    fn bare_paths_are_accepted_when_unambiguous() {
        let want = ForwardPath::Mailbox(mailbox("scanner", "office.example"));
        assert_eq!(
            parse_forward_path("scanner@office.example"),
            Ok((want.clone(), ""))
        );
        assert_eq!(
            parse_forward_path(" scanner@office.example "),
            Ok((want, " "))
        );
        assert_eq!(
            parse_forward_path("PostMaster"),
            Ok((ForwardPath::Postmaster, ""))
        );
        let (path, rest) = parse_reverse_path("ups@[192.0.2.9] SIZE=100 BODY=8BITMIME").unwrap();
        assert_eq!(path, ReversePath::Mailbox(mailbox("ups", "[192.0.2.9]")));
        assert_eq!(rest, " SIZE=100 BODY=8BITMIME");
        // A parameter we do not know still has a parameter's shape: the command refuses it.
        assert_eq!(
            parse_reverse_path("a@b FOO-BAR=x@y"),
            Ok((ReversePath::Mailbox(mailbox("a", "b")), " FOO-BAR=x@y"))
        );
    }

    #[test]
    fn ambiguous_bare_paths_are_refused() {
        for bad in [
            "",
            " ",
            "a@b c@d",
            "a@b SIZE=1 c@d",
            "Name a@b",
            "a b@c",
            "a@b =x",
            "a@b -X",
        ] {
            assert_eq!(
                parse_reverse_path(bad),
                Err(AddressError::MissingBrackets),
                "{bad:?}"
            );
        }
        for bad in [
            "\"a b\"@c",
            "a@b>",
            "a<b@c>",
            "a@b,c@d",
            "a@b\tSIZE=1",
            "@a:b",
            "a",
        ] {
            assert!(parse_forward_path(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn malformed_addresses() {
        for bad in [
            "<a@b",
            "<a@b c@d",
            "<a>",
            "<@b>",
            "<a@>",
            "<a..b@c>",
            "<.a@c>",
            "<a@-b.c>",
            "<a@b..c>",
            "<a b@c>",
            "<a@b c>",
            "<\"unterminated@c>",
        ] {
            assert!(parse_forward_path(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(
            parse_reverse_path("<a@b"),
            Err(AddressError::MissingBrackets)
        );
    }

    #[test]
    fn lengths_are_bounded() {
        let long_local = format!("<{}@example.org>", "a".repeat(65));
        assert_eq!(parse_forward_path(&long_local), Err(AddressError::TooLong));
        let long_path = format!("<a@{}.org>", "b.".repeat(130));
        assert_eq!(parse_forward_path(&long_path), Err(AddressError::TooLong));
    }

    #[test]
    fn utf8_addresses_parse_and_are_flagged() {
        let (path, _) = parse_forward_path("<jörg@bücher.example>").unwrap();
        assert!(path.is_utf8());
        let (path, _) = parse_forward_path("<joerg@example.org>").unwrap();
        assert!(!path.is_utf8());
    }
}
