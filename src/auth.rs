//! Credentials for a smarthost (`relayhost_auth_file`), the base64 that SMTP AUTH needs, and
//! the SASL PLAIN message (RFC 4616) a client sends us.
//!
//! The file holds one `username:password` line (`#` comments allowed); the password may
//! contain `:`. Only the delivery side uses it, and only over TLS. The SASL helpers are pure:
//! what to reply, and the `=` and `*` of RFC 4954, are the session's business.

use std::fmt;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Never print a password, not even in a debug log.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, ********)", self.user)
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|why| format!("{}: {why}", path.display()))
    }

    fn parse(text: &str) -> Result<Credentials, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or("no 'username:password' line")?;
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err("expected 'username:password'".into()),
        }
    }

    /// The RFC 4616 PLAIN response: base64 of NUL user NUL password.
    pub fn plain(&self) -> String {
        base64(format!("\0{}\0{}", self.user, self.password).as_bytes())
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Decodes standard base64 with padding, strictly (RFC 4648 section 4, as RFC 4954 requires):
/// no white space, no missing or misplaced `=`, no set bits left over in the last character.
/// So each byte string has exactly one encoding, the one `base64` makes. `""` decodes to
/// nothing; the lone `=` of an empty AUTH response is for the caller to recognise.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        ALPHABET.iter().position(|&a| a == c).map(|v| v as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.chunks_exact(4);
    let last = quads.len().saturating_sub(1);
    for (i, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && i != last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - padding] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * padding;
        let [_, b0, b1, b2] = n.to_be_bytes();
        match padding {
            0 => out.extend_from_slice(&[b0, b1, b2]),
            // The bits below the last whole byte must be zero (canonical encoding).
            1 if b2 == 0 => out.extend_from_slice(&[b0, b1]),
            2 if b1 == 0 && b2 == 0 => out.push(b0),
            _ => return None,
        }
    }
    Some(out)
}

/// A decoded SASL PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// The identity to act as, when the client names one.
    pub authzid: Option<String>,
    /// The login name.
    pub authcid: String,
    pub password: String,
}

/// Never print a password, not even in a debug log.
impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plain({:?}, {}, ********)", self.authzid, self.authcid)
    }
}

impl Plain {
    /// The login name, if the client does not ask to act as somebody else: no authzid, or
    /// the authcid itself (in any case). We offer no proxy authorization.
    pub fn login(&self) -> Option<&str> {
        match &self.authzid {
            Some(authzid) if !authzid.eq_ignore_ascii_case(&self.authcid) => None,
            _ => Some(&self.authcid),
        }
    }
}

/// Parses a decoded PLAIN message: three UTF-8 parts split by NUL, the authzid possibly
/// empty, authcid and password not. Anything else (a missing part, a fourth one, so a NUL
/// in the password, bad UTF-8) is `None`.
pub fn parse_plain(message: &[u8]) -> Option<Plain> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.split('\0');
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    Some(Plain {
        authzid: (!authzid.is_empty()).then(|| authzid.to_string()),
        authcid: authcid.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors_of_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn credentials_file() {
        let c = Credentials::parse("# smarthost\n\nrelay-user:pa:ss:word\n").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("relay-user", "pa:ss:word")
        );
        assert_eq!(c.plain(), base64(b"\0relay-user\0pa:ss:word"));
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(Credentials::parse("nocolon\n").is_err());
        assert!(Credentials::parse("# only a comment\n").is_err());
        assert!(Credentials::parse(":password\n").is_err());
    }

    #[test]
    fn base64_decodes_the_vectors_of_rfc_4648_and_every_length() {
        let cases = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ];
        for (encoded, plain) in cases {
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        for len in 0..all.len() {
            let bytes = &all[255 - len..];
            assert_eq!(base64_decode(&base64(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn base64_decoding_is_strict() {
        let bad = [
            "Zg",       // no padding
            "Zg=",      // short padding
            "Zg===",    // too long
            "Z===",     // three padding characters
            "Zm9v\r\n", // line break
            " Zm9v",    // space
            "Zm 9",     // space inside
            "Zg==Zm9v", // padding in the middle
            "Zm=v",     // padding not at the end
            "Zh==",     // bits set below the last byte
            "Zm9=",     // same, one padding character
            "Zm9v-_==", // URL-safe alphabet
            "=",        // the empty response of RFC 4954 is the caller's to spot
            "====",
            "Zm9vä===",
            "Zmä",
        ];
        for text in bad {
            assert_eq!(base64_decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn plain_has_three_parts() {
        let p = parse_plain(b"\0alice\0s3cret pass").unwrap();
        assert_eq!(p.authzid, None);
        assert_eq!(p.authcid, "alice");
        assert_eq!(p.password, "s3cret pass");
        assert_eq!(p.login(), Some("alice"));

        let p = parse_plain("Alice\0alice\0pässwörd".as_bytes()).unwrap();
        assert_eq!(p.authzid.as_deref(), Some("Alice"));
        assert_eq!(p.password, "pässwörd");
        assert_eq!(p.login(), Some("alice"), "authzid = authcid is no proxy");

        let p = parse_plain(b"bob\0alice\0pw").unwrap();
        assert_eq!(p.login(), None, "acting as somebody else is refused");

        // What a client's encoder makes, decoded and parsed back.
        let creds = Credentials {
            user: "alice".into(),
            password: "pa:ss".into(),
        };
        let decoded = base64_decode(&creds.plain()).unwrap();
        assert_eq!(parse_plain(&decoded).unwrap().password, "pa:ss");
    }

    #[test]
    fn plain_refuses_missing_parts_and_extra_nuls() {
        let bad: [&[u8]; 10] = [
            b"",
            b"alice",
            b"\0alice",
            b"\0alice\0",         // no password
            b"\0\0s3cret",        // no authcid
            b"alice\0s3cret",     // one NUL only
            b"\0alice\0s3\0cret", // NUL in the password
            b"\0alice\0s3cret\0",
            b"\0\0\0",
            b"\0alice\0\xff\xfe", // not UTF-8
        ];
        for message in bad {
            assert_eq!(parse_plain(message), None, "{message:?}");
        }
    }

    #[test]
    fn plain_debug_hides_the_password() {
        let p = parse_plain(b"\0alice\0hunter2").unwrap();
        let shown = format!("{p:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
