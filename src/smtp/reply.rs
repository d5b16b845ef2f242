//! Every reply the server sends: basic code, RFC 3463 enhanced code and text, in one table.
//!
//! Nobody else writes "250". RFC 2034 puts an enhanced code on every 2xx, 4xx and 5xx reply
//! except the greeting and the answer to HELO/EHLO; 354 has none either, as in Postfix.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 code (`"5.5.1"`), absent only where RFC 2034 says so.
    pub enhanced: Option<&'static str>,
    /// One entry per reply line; never empty.
    pub lines: Vec<String>,
}

impl Reply {
    fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    fn bare(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply in wire form (`250-first`, ..., `250 last`, CRLF each).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = match self.enhanced {
                Some(enhanced) => format!("{}{sep}{enhanced} {line}\r\n", self.code),
                None => format!("{}{sep}{line}\r\n", self.code),
            };
            out.extend_from_slice(line.as_bytes());
        }
    }

    // --- Connection ---

    pub fn greeting(hostname: &str) -> Reply {
        Reply::bare(220, vec![format!("{hostname} ESMTP Postilion")])
    }
    pub fn ehlo(hostname: &str, peer: &str, extensions: &[String]) -> Reply {
        let mut lines = vec![format!("{hostname} greets {peer}")];
        lines.extend(extensions.iter().cloned());
        Reply::bare(250, lines)
    }
    pub fn helo(hostname: &str) -> Reply {
        Reply::bare(250, vec![hostname.to_string()])
    }
    pub fn closing() -> Reply {
        Reply::new(221, "2.0.0", "Bye")
    }
    pub fn too_many_connections() -> Reply {
        Reply::new(421, "4.7.0", "Error: too many connections, try again later")
    }
    pub fn shutting_down() -> Reply {
        Reply::new(421, "4.3.2", "Service shutting down, try again later")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Error: too many errors")
    }
    pub fn timeout() -> Reply {
        Reply::new(421, "4.4.2", "Error: timeout exceeded")
    }

    // --- Success ---

    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "Ok")
    }
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Ok")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5", "Ok")
    }
    pub fn start_data() -> Reply {
        Reply::bare(354, vec!["End data with <CR><LF>.<CR><LF>".to_string()])
    }
    pub fn chunk_received(size: u64) -> Reply {
        Reply::new(250, "2.0.0", format!("Ok: {size} octets received"))
    }
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }
    pub fn cannot_vrfy() -> Reply {
        Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    pub fn help() -> Reply {
        Reply::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
        )
    }

    // --- Protocol errors ---

    pub fn unknown_command() -> Reply {
        Reply::new(500, "5.5.2", "Error: command not recognized")
    }
    pub fn not_smtp() -> Reply {
        Reply::new(500, "5.5.2", "Error: this is an SMTP server")
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.6", "Error: line too long")
    }
    pub fn syntax(usage: &str) -> Reply {
        Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
    }
    pub fn bad_sender_syntax(why: &str) -> Reply {
        Reply::new(501, "5.1.7", format!("Bad sender address syntax: {why}"))
    }
    pub fn bad_recipient_syntax(why: &str) -> Reply {
        Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {why}"))
    }
    pub fn not_implemented(verb: &str) -> Reply {
        Reply::new(502, "5.5.1", format!("Error: {verb} not implemented"))
    }
    pub fn need_helo() -> Reply {
        Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")
    }
    pub fn need_mail() -> Reply {
        Reply::new(503, "5.5.1", "Error: need MAIL command")
    }
    pub fn nested_mail() -> Reply {
        Reply::new(503, "5.5.1", "Error: nested MAIL command")
    }
    pub fn need_rcpt() -> Reply {
        Reply::new(503, "5.5.1", "Error: need RCPT command")
    }
    pub fn bdat_in_progress() -> Reply {
        Reply::new(503, "5.5.1", "Error: BDAT transaction in progress")
    }
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, "5.5.1", "Error: no valid recipients")
    }
    pub fn unknown_parameter(param: &str) -> Reply {
        Reply::new(555, "5.5.4", format!("Unsupported option: {param}"))
    }

    // --- Policy and limits ---

    pub fn relay_denied(rcpt: &str) -> Reply {
        Reply::new(554, "5.7.1", format!("{rcpt}: Relay access denied"))
    }
    pub fn unknown_user(rcpt: &str) -> Reply {
        Reply::new(
            550,
            "5.1.1",
            format!("{rcpt}: Recipient address rejected: User unknown in local recipient table"),
        )
    }
    pub fn ready_to_start_tls() -> Reply {
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }
    pub fn tls_already_active() -> Reply {
        Reply::new(503, "5.5.1", "Error: TLS already active")
    }
    pub fn transaction_in_progress() -> Reply {
        Reply::new(503, "5.5.1", "Error: MAIL transaction in progress")
    }
    pub fn must_start_tls() -> Reply {
        Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }
    pub fn auth_challenge(text: &str) -> Reply {
        Reply::bare(334, vec![text.to_string()])
    }
    pub fn auth_ok() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Error: authentication failed")
    }
    pub fn auth_throttled() -> Reply {
        Reply::new(
            454,
            "4.7.0",
            "Error: too many failed authentications, try again later",
        )
    }
    pub fn auth_unavailable() -> Reply {
        Reply::new(454, "4.7.0", "Temporary authentication failure")
    }
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    pub fn auth_not_enabled() -> Reply {
        Reply::new(503, "5.5.1", "Error: authentication not enabled")
    }
    pub fn already_authenticated() -> Reply {
        Reply::new(503, "5.5.1", "Error: already authenticated")
    }
    pub fn unknown_mechanism() -> Reply {
        Reply::new(504, "5.5.4", "Unrecognized authentication type")
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0", "Authentication cancelled")
    }
    pub fn bad_sasl_response() -> Reply {
        Reply::new(501, "5.5.2", "Cannot decode response")
    }
    pub fn sender_not_owned(sender: &str, user: &str) -> Reply {
        Reply::new(
            553,
            "5.7.1",
            format!("{sender}: Sender address rejected: not owned by user {user}"),
        )
    }
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, "4.5.3", "Error: too many recipients")
    }
    pub fn message_too_big() -> Reply {
        Reply::new(552, "5.3.4", "Error: message size exceeds fixed limit")
    }
    pub fn smtputf8_required() -> Reply {
        Reply::new(
            553,
            "5.6.7",
            "Error: SMTPUTF8 is required for non-ASCII addresses",
        )
    }
    pub fn bare_newline() -> Reply {
        Reply::new(
            550,
            "5.6.0",
            "Error: bare <CR> or <LF> in message content; lines must end with <CR><LF>",
        )
    }
    pub fn queue_write_error() -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "Error: queue file write error, try again later",
        )
    }
}

impl fmt::Display for Reply {
    /// The reply on one line, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_carries_enhanced_code() {
        assert_eq!(
            wire(&Reply::need_helo()),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
    }

    #[test]
    fn multi_line_uses_dashes_until_last() {
        let reply = Reply::ehlo(
            "mx",
            "[127.0.0.1]",
            &["PIPELINING".into(), "8BITMIME".into()],
        );
        assert_eq!(
            wire(&reply),
            "250-mx greets [127.0.0.1]\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
    }

    #[test]
    fn every_error_reply_has_an_enhanced_code_of_its_class() {
        let all = [
            Reply::closing(),
            Reply::too_many_connections(),
            Reply::too_many_errors(),
            Reply::shutting_down(),
            Reply::timeout(),
            Reply::ok(),
            Reply::queued("X"),
            Reply::cannot_vrfy(),
            Reply::help(),
            Reply::unknown_command(),
            Reply::line_too_long(),
            Reply::syntax("X"),
            Reply::bad_sender_syntax("x"),
            Reply::bad_recipient_syntax("x"),
            Reply::not_implemented("X"),
            Reply::need_helo(),
            Reply::need_mail(),
            Reply::nested_mail(),
            Reply::need_rcpt(),
            Reply::bdat_in_progress(),
            Reply::chunk_received(1),
            Reply::no_valid_recipients(),
            Reply::unknown_parameter("X"),
            Reply::relay_denied("x"),
            Reply::unknown_user("x"),
            Reply::too_many_recipients(),
            Reply::ready_to_start_tls(),
            Reply::tls_already_active(),
            Reply::transaction_in_progress(),
            Reply::must_start_tls(),
            Reply::auth_ok(),
            Reply::auth_failed(),
            Reply::auth_throttled(),
            Reply::auth_needs_tls(),
            Reply::auth_unavailable(),
            Reply::auth_required(),
            Reply::auth_not_enabled(),
            Reply::already_authenticated(),
            Reply::unknown_mechanism(),
            Reply::auth_cancelled(),
            Reply::bad_sasl_response(),
            Reply::sender_not_owned("<a@b>", "u"),
            Reply::message_too_big(),
            Reply::smtputf8_required(),
            Reply::bare_newline(),
            Reply::queue_write_error(),
        ];
        for reply in all {
            let enhanced = reply.enhanced.expect("enhanced code");
            let class = (reply.code / 100).to_string();
            assert!(enhanced.starts_with(&class), "{reply}");
        }
    }
}
