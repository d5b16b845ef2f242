//! SMTP AUTH exchanges (RFC 4954) for PLAIN (RFC 4616) and LOGIN: base64 responses in,
//! challenges or a name and password out. Pure: whether the password is right is decided
//! elsewhere, and no password ever reaches a log or a `Debug` print.

use std::fmt;

use super::reply::Reply;
use crate::auth::{base64, base64_decode, parse_plain};

/// A password on its way to being checked; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

/// What the client is to get next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// `334 <text>`: the exchange goes on; the next line is a response.
    Challenge(String),
    /// The credentials, to be checked.
    Credentials { name: String, password: Password },
    /// The exchange is over: this refusal.
    Refused(Reply),
}

/// An exchange in progress: what the next response line answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    PlainResponse,
    LoginUser,
    LoginPassword(String),
}

/// `AUTH mechanism [initial-response]`: the first step, and the exchange if it goes on.
pub fn start(mechanism: &str, initial: Option<&str>) -> (Step, Option<Exchange>) {
    let exchange = match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => Exchange::PlainResponse,
        "LOGIN" => Exchange::LoginUser,
        _ => return (Step::Refused(Reply::unknown_mechanism()), None),
    };
    match initial {
        // RFC 4954 4: "=" is an empty initial response.
        Some(response) => respond(exchange, response),
        None => (exchange.challenge(), Some(exchange)),
    }
}

/// The client's response line to the last challenge.
pub fn respond(exchange: Exchange, line: &str) -> (Step, Option<Exchange>) {
    if line == "*" {
        return (Step::Refused(Reply::auth_cancelled()), None);
    }
    let decoded = match line {
        "=" => Some(Vec::new()),
        _ => base64_decode(line),
    };
    let Some(decoded) = decoded else {
        return (Step::Refused(Reply::bad_sasl_response()), None);
    };
    match exchange {
        Exchange::PlainResponse => match parse_plain(&decoded) {
            Some(plain) => match plain.login() {
                Some(name) => {
                    let name = name.to_string();
                    let password = Password(plain.password);
                    (Step::Credentials { name, password }, None)
                }
                // Acting as someone else (an authzid) is not offered.
                None => (Step::Refused(Reply::auth_failed()), None),
            },
            None => (Step::Refused(Reply::bad_sasl_response()), None),
        },
        Exchange::LoginUser => match String::from_utf8(decoded) {
            Ok(user) if !user.is_empty() => {
                let next = Exchange::LoginPassword(user);
                (next.challenge(), Some(next))
            }
            _ => (Step::Refused(Reply::bad_sasl_response()), None),
        },
        Exchange::LoginPassword(name) => match String::from_utf8(decoded) {
            Ok(password) => {
                let password = Password(password);
                (Step::Credentials { name, password }, None)
            }
            Err(_) => (Step::Refused(Reply::bad_sasl_response()), None),
        },
    }
}

impl Exchange {
    fn challenge(&self) -> Step {
        Step::Challenge(match self {
            Exchange::PlainResponse => String::new(),
            Exchange::LoginUser => base64(b"Username:"),
            Exchange::LoginPassword(_) => base64(b"Password:"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(name: &str, password: &str) -> Step {
        Step::Credentials {
            name: name.into(),
            password: Password(password.into()),
        }
    }

    #[test]
    fn plain_with_and_without_an_initial_response() {
        let response = base64(b"\0alice\0s3cret");
        assert_eq!(
            start("plain", Some(&response)),
            (credentials("alice", "s3cret"), None)
        );
        let (step, exchange) = start("PLAIN", None);
        assert_eq!(step, Step::Challenge(String::new()));
        assert_eq!(
            respond(exchange.unwrap(), &response),
            (credentials("alice", "s3cret"), None)
        );
        // Acting for another identity is refused; so is garbage.
        let other = base64(b"bob\0alice\0s3cret");
        assert!(matches!(start("PLAIN", Some(&other)).0, Step::Refused(r) if r.code == 535));
        assert!(matches!(start("PLAIN", Some("!!")).0, Step::Refused(r) if r.code == 501));
        assert!(matches!(start("PLAIN", Some("=")).0, Step::Refused(r) if r.code == 501));
    }

    #[test]
    fn login_asks_for_the_name_then_the_password() {
        let (step, exchange) = start("LOGIN", None);
        assert_eq!(step, Step::Challenge("VXNlcm5hbWU6".into()));
        let (step, exchange) = respond(exchange.unwrap(), &base64(b"alice"));
        assert_eq!(step, Step::Challenge("UGFzc3dvcmQ6".into()));
        assert_eq!(
            respond(exchange.unwrap(), &base64(b"pw")),
            (credentials("alice", "pw"), None)
        );
        // A name given at once skips the first question.
        let (step, _) = start("LOGIN", Some(&base64(b"alice")));
        assert_eq!(step, Step::Challenge("UGFzc3dvcmQ6".into()));
    }

    #[test]
    fn cancel_unknown_mechanism_and_no_password_in_debug() {
        let (_, exchange) = start("LOGIN", None);
        assert!(matches!(respond(exchange.unwrap(), "*").0, Step::Refused(r) if r.code == 501));
        assert!(matches!(start("CRAM-MD5", None).0, Step::Refused(r) if r.code == 504));
        let text = format!("{:?}", credentials("alice", "s3cret"));
        assert!(!text.contains("s3cret"), "{text}");
    }
}
