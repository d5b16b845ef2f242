//! Delivery status notifications (RFC 3464): a multipart/report with a text part for people,
//! a message/delivery-status part for programs, and the original message's headers. Two
//! kinds: a failure report (a bounce) and a delay warning.
//!
//! Only builds the text; the worker queues it like any other message, from `<>`.

use std::fmt::Write as _;

use crate::datetime;

/// One recipient that could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The address as `user@domain` (postmaster gets our host name).
    pub recipient: String,
    /// RFC 3463 code, like `5.1.1`.
    pub status: String,
    /// The remote server's reply or our own reason, one line.
    pub diagnostic: String,
    /// The server that refused it, when one did.
    pub remote_mta: Option<String>,
}

/// What the notification says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The recipients failed for good (`Action: failed`).
    Failed,
    /// The recipients are still being retried, until the given Unix time (`Action: delayed`).
    Delayed { until: u64 },
}

pub struct Report<'a> {
    pub kind: Kind,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// Who gets the report: the original sender.
    pub to: &'a str,
    pub arrival: u64,
    pub now: u64,
    pub failures: &'a [Failure],
    /// The original message's header section (CRLF line ends).
    pub original_headers: &'a [u8],
}

/// The whole DSN message, CRLF line ends.
pub fn build(r: &Report) -> Vec<u8> {
    let boundary = format!("{}/{}", r.queue_id, r.hostname);
    let mut text = String::with_capacity(2048);
    let subject = match r.kind {
        Kind::Delayed { .. } => "Delayed Mail (still being retried)",
        Kind::Failed => "Undelivered Mail Returned to Sender",
    };
    let (action, explanation) = match r.kind {
        Kind::Failed => (
            "failed",
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. It's attached below."
                .to_string(),
        ),
        Kind::Delayed { until } => (
            "delayed",
            format!(
                "Your message could not be delivered yet to one or more recipients.\r\n\
                 This is only a warning: you do not need to send it again. Delivery\r\n\
                 will be tried until {}.",
                datetime::rfc5322(until)
            ),
        ),
    };
    // Writing into a String cannot fail.
    let _ = write!(
        text,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         {explanation}\r\n\
         \r\n",
        host = r.hostname,
        to = r.to,
        date = datetime::rfc5322(r.now),
        id = r.queue_id,
    );
    for f in r.failures {
        let _ = write!(text, "<{}>: {}\r\n", f.recipient, f.diagnostic);
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Postilion-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        host = r.hostname,
        id = r.queue_id,
        arrival = datetime::rfc5322(r.arrival),
    );
    for f in r.failures {
        let _ = write!(
            text,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
            f.recipient, f.status
        );
        if let Some(mta) = &f.remote_mta {
            let _ = write!(text, "Remote-MTA: dns; {mta}\r\n");
        }
        let _ = write!(text, "Diagnostic-Code: smtp; {}\r\n", f.diagnostic);
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = text.into_bytes();
    out.extend_from_slice(r.original_headers);
    if !r.original_headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_three_parts() {
        let failures = [Failure {
            recipient: "bob@example.test".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <bob@example.test>: User unknown".into(),
            remote_mta: Some("mx.example.test".into()),
        }];
        let dsn = build(&Report {
            kind: Kind::Failed,
            hostname: "mx.test",
            queue_id: "Q1",
            to: "sender@client.test",
            arrival: 0,
            now: 60,
            failures: &failures,
            original_headers: b"Subject: hello\r\nFrom: sender@client.test\r\n",
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"Q1/mx.test\""));
        assert!(text.contains(
            "\r\n--Q1/mx.test\r\nContent-Description: Notification\r\nContent-Type: text/plain"
        ));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n"
        ));
        assert!(text.contains("Final-Recipient: rfc822; bob@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.test\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"));
        assert!(text.ends_with("\r\n--Q1/mx.test--\r\n"));
        assert!(text.lines().all(|l| !l.contains('\n')));
    }
}
