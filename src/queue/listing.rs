//! What `postilion queue list` (`mailq`) and `queue show` print, from envelopes already read:
//! text only, no files. The list is shaped like Postfix's `postqueue -p`: a header, then per
//! message its id, size, arrival time and age, sender and `(held)`, and each recipient not yet
//! done with its state, attempts, next attempt and last reply; `-- N Kbytes in M Requests.` at
//! the end, or `Mail queue is empty`. Whatever came from outside (headers, replies) is shown
//! with its control characters made visible (`visible`): nothing printed drives the terminal.

use std::fmt::Write as _;

use crate::datetime;
use crate::envelope::{Envelope, Recipient, Status};
use crate::smtp::address::ReversePath;

/// `42s`, `5m`, `3h`, `2d`: how long ago (or how far ahead) `then` is from `now`.
pub fn age(then: u64, now: u64) -> String {
    let seconds = now.abs_diff(then);
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7_199 => format!("{}m", seconds / 60),
        7_200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// The sender as Postfix shows it: `MAILER-DAEMON` for `<>`.
fn sender(env: &Envelope) -> String {
    match &env.reverse_path {
        ReversePath::Null => "MAILER-DAEMON".into(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

/// A recipient's state in a few words: `pending, 2 attempts, next at ... (in 5m)`.
fn state(rcpt: &Recipient, now: u64) -> String {
    let mut text = match rcpt.status {
        Status::Pending => "pending".to_string(),
        Status::Failed => "failed, to be reported to the sender".to_string(),
        Status::Delivered => "delivered".to_string(),
        Status::Expanded => "expanded (an alias)".to_string(),
    };
    let plural = if rcpt.attempts == 1 { "" } else { "s" };
    let _ = write!(text, ", {} attempt{plural}", rcpt.attempts);
    if rcpt.status == Status::Pending {
        match rcpt.next_attempt {
            next if next <= now => text.push_str(", next attempt now"),
            next => {
                let _ = write!(
                    text,
                    ", next attempt {} (in {})",
                    datetime::iso8601(next),
                    age(next, now)
                );
            }
        }
    }
    text
}

/// The `mailq` listing of `messages` (id and envelope, oldest first); `maildrop` is the
/// number of messages still waiting in `maildrop/`.
pub fn list(messages: &[(String, Envelope)], maildrop: usize, now: u64) -> String {
    let mut out = String::new();
    if messages.is_empty() {
        out.push_str("Mail queue is empty\n");
        if maildrop > 0 {
            let _ = writeln!(out, "{maildrop} message(s) waiting in maildrop/");
        }
        return out;
    }
    let width = messages.iter().map(|(id, _)| id.len()).max().unwrap_or(10);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:<29} Sender/Recipient",
        "-Queue ID-", "--Size--", "----Arrival Time (age)----"
    );
    let mut total: u64 = 0;
    for (id, env) in messages {
        total = total.saturating_add(env.size);
        let arrival = format!(
            "{} ({})",
            datetime::iso8601(env.arrival),
            age(env.arrival, now)
        );
        let held = if env.held { "  (held)" } else { "" };
        let _ = writeln!(
            out,
            "{id:<width$} {:>8} {arrival:<29} {}{held}",
            env.size,
            sender(env)
        );
        for rcpt in env.recipients.iter().filter(|r| !r.is_done()) {
            let _ = writeln!(out, "    {}  {}", rcpt.path, state(rcpt, now));
            if let Some(reply) = &rcpt.last_reply {
                let _ = writeln!(out, "        ({reply})");
            }
        }
        out.push('\n');
    }
    if maildrop > 0 {
        let _ = writeln!(out, "{maildrop} message(s) waiting in maildrop/");
    }
    let requests = if messages.len() == 1 {
        "Request"
    } else {
        "Requests"
    };
    let _ = writeln!(
        out,
        "-- {} Kbytes in {} {requests}.",
        total.div_ceil(1024),
        messages.len()
    );
    visible(&out)
}

/// `queue show ID`: the envelope's fields in words, then the message's header (or the whole
/// message) as queued.
pub fn show(id: &str, env: &Envelope, message: &str, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Queue ID:   {id}");
    let _ = writeln!(
        out,
        "Arrival:    {} ({} ago)",
        datetime::iso8601(env.arrival),
        age(env.arrival, now)
    );
    let _ = writeln!(out, "Size:       {} bytes", env.size);
    let _ = writeln!(out, "Sender:     {}", env.reverse_path);
    let client = env.client.map_or("local".into(), |c| c.to_string());
    let _ = writeln!(
        out,
        "Client:     {client} (HELO {}, {})",
        env.helo, env.protocol
    );
    if let Some(name) = &env.auth {
        let _ = writeln!(out, "Auth:       {name}");
    }
    if env.held {
        let _ = writeln!(out, "On hold:    yes (postilion queue release {id})");
    }
    for rcpt in &env.recipients {
        let _ = writeln!(out, "Recipient:  {}", rcpt.path);
        let _ = writeln!(out, "    {}", state(rcpt, now));
        if let Some(reply) = &rcpt.last_reply {
            let _ = writeln!(out, "    last reply: {reply}");
        }
    }
    out.push('\n');
    out.push_str(message);
    if !message.ends_with('\n') {
        out.push('\n');
    }
    visible(&out)
}

/// `text` with every control character but tab and the line ends (LF, and CR before LF)
/// written out as `cat -v` does, so that an escape sequence in a header or a reply is shown,
/// not obeyed: `^[` for ESC, `^?` for DEL, `^M` for a lone CR, `<U+009B>` for a C1 control.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' | '\n' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => out.push(c),
            '\u{7f}' => out.push_str("^?"),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            c if c.is_control() => {
                let _ = write!(out, "<U+{:04X}>", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The header of a message: everything before the first empty line.
pub fn header(message: &str) -> &str {
    match message.find("\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => match message.find("\n\n") {
            Some(end) => &message[..end + 1],
            None => message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{ForwardPath, Mailbox};

    fn envelope() -> Envelope {
        let mut deferred = Recipient::pending(ForwardPath::Mailbox(Mailbox {
            local: "x".into(),
            domain: "remote.example".into(),
        }));
        deferred.attempts = 2;
        deferred.next_attempt = 1_000_600;
        deferred.last_reply = Some("451 4.3.0 try later (in reply to RCPT TO)".into());
        let mut done = Recipient::pending(ForwardPath::Postmaster);
        done.status = Status::Delivered;
        Envelope {
            reverse_path: ReversePath::Mailbox(Mailbox {
                local: "a".into(),
                domain: "example.org".into(),
            }),
            recipients: vec![done, deferred],
            arrival: 1_000_000,
            size: 2000,
            ..Envelope::for_tests()
        }
    }

    #[test]
    fn empty_queue() {
        assert_eq!(list(&[], 0, 5), "Mail queue is empty\n");
        assert!(list(&[], 2, 5).contains("2 message(s) waiting in maildrop/"));
    }

    #[test]
    fn a_deferred_message_shows_sender_recipient_state_and_reply() {
        let text = list(&[("1.M1".into(), envelope())], 0, 1_000_300);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("-Queue ID-"));
        assert!(lines[1].starts_with("1.M1 "));
        assert!(lines[1].contains(" 2000 1970-01-12T13:46:40Z (5m)"));
        assert!(lines[1].ends_with("a@example.org"));
        assert_eq!(
            lines[2],
            "    <x@remote.example>  pending, 2 attempts, next attempt \
             1970-01-12T13:56:40Z (in 5m)"
        );
        assert_eq!(
            lines[3],
            "        (451 4.3.0 try later (in reply to RCPT TO))"
        );
        assert!(
            !text.contains("postmaster"),
            "done recipients are not listed"
        );
        assert_eq!(lines.last(), Some(&"-- 2 Kbytes in 1 Request."));
    }

    #[test]
    fn held_and_bounce_senders_are_marked() {
        let mut env = envelope();
        env.held = true;
        env.reverse_path = ReversePath::Null;
        let text = list(&[("1.M1".into(), env.clone()), ("2.M2".into(), env)], 1, 0);
        assert!(text.contains("MAILER-DAEMON  (held)"));
        assert!(text.contains("1 message(s) waiting in maildrop/\n-- 4 Kbytes in 2 Requests."));
    }

    #[test]
    fn show_gives_fields_and_the_header_only() {
        let message = "Subject: hi\r\nFrom: a@example.org\r\n\r\nsecret body\r\n";
        let text = show("1.M1", &envelope(), header(message), 1_000_060);
        assert!(text.contains("Queue ID:   1.M1\n"));
        assert!(text.contains("Sender:     <a@example.org>\n"));
        assert!(text.contains("Recipient:  <postmaster>\n    delivered, 0 attempts\n"));
        assert!(text.contains("last reply: 451 4.3.0 try later"));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("secret body"));
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            visible("Subject: \x1b[2Jhi\tthere\x07\r\nX: a\rb\x7f\u{9b}\n"),
            "Subject: ^[[2Jhi\tthere^G\r\nX: a^Mb^?<U+009B>\n"
        );
        let message = "Subject: \x1b]0;pwned\x07\r\n\r\n";
        let shown = show("1.M1", &envelope(), header(message), 1_000_060);
        assert!(shown.contains("Subject: ^[]0;pwned^G\r\n"), "{shown}");
        assert!(!shown.contains('\x1b'));
        let mut env = envelope();
        env.recipients[1].last_reply = Some("451 \x1b[31mred".into());
        let listed = list(&[("1.M1".into(), env)], 0, 0);
        assert!(listed.contains("(451 ^[[31mred)") && !listed.contains('\x1b'));
    }

    #[test]
    fn a_huge_size_does_not_overflow_the_total() {
        let mut env = envelope();
        env.size = u64::MAX;
        let text = list(&[("1.M1".into(), env.clone()), ("2.M2".into(), env)], 0, 0);
        assert!(text.contains("Kbytes in 2 Requests."), "{text}");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(100, 142), "42s");
        assert_eq!(age(0, 300), "5m");
        assert_eq!(age(0, 3 * 3600), "3h");
        assert_eq!(age(0, 3 * 86_400), "3d");
        assert_eq!(age(600, 0), "10m");
    }
}
