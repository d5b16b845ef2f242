//! Credentials for a smarthost (`relayhost_auth_file`) and the base64 that SMTP AUTH needs.
//!
//! The file holds one `username:password` line (`#` comments allowed); the password may
//! contain `:`. Only the delivery side uses it, and only over TLS.

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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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
}
