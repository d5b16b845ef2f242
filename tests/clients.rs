//! Real SMTP clients against the real binary: lettre, Python's smtplib, and raw pipelining.
//! The queued file must be the sent message, byte for byte, after our Received: header (the
//! messages have the Date:, Message-ID: and From: that would otherwise be added).

mod common;

use std::process::Command;

use common::{queue_id, split_received, Client, Server, COMPLETE};
use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};

/// A message with the awkward parts: dot lines, 8-bit text, a long line, empty lines.
fn tricky_message() -> Vec<u8> {
    let mut m = b"From: Ann <ann@client.test>\r\nTo: alice@example.test\r\nSubject: tricky\r\n\
        Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <tricky@client.test>\r\n\r\n"
        .to_vec();
    m.extend_from_slice(b".starts with a dot\r\n..two dots\r\n.\r\n");
    m.extend_from_slice("8-bit: gr\u{fc}\u{df}e, \u{65e5}\u{672c}\r\n".as_bytes());
    m.extend_from_slice(&[b'x'; 900]);
    m.extend_from_slice(b"\r\n\r\n\r\nlast line");
    m
}

#[test]
fn lettre_message_is_queued_byte_for_byte() {
    let server = Server::start("lettre", &[]);
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(server.addr.port())
        .build();
    let envelope = Envelope::new(
        Some("ann@client.test".parse().unwrap()),
        vec!["alice@example.test".parse().unwrap()],
    )
    .unwrap();
    let message = tricky_message();
    let response = mailer.send_raw(&envelope, &message).expect("lettre send");
    assert_eq!(response.code().to_string(), "250");
    let first = response.first_line().unwrap().to_string();
    assert!(first.starts_with("2.0.0 Ok: queued as "), "{first}");
    let id = first.rsplit(' ').next().unwrap();

    let (received, body) = split_received(&server.queued_message(id));
    // lettre ends DATA with CRLF.CRLF after the message, so the message it sent is M + CRLF.
    let mut sent = message.clone();
    sent.extend_from_slice(b"\r\n");
    assert_eq!(body, sent);
    assert!(
        received.contains(&format!("by mx.test (Postilion) with ESMTP id {id}")),
        "{received}"
    );
    assert!(
        received.contains("\r\n\tfor <alice@example.test>;"),
        "{received}"
    );

    let env = server.queued_envelope(id);
    assert!(env.starts_with("Version: 1\n"), "{env}");
    assert!(env.contains("From: <ann@client.test>\n"));
    assert!(env.contains("Rcpt: <alice@example.test>\nStatus: pending\n"));
    server.wait_for_log(&format!(
        "{id}: from=<ann@client.test> to=<alice@example.test>"
    ));
}

#[test]
fn python_smtplib_message_is_queued_byte_for_byte() {
    let server = Server::start("smtplib", &[]);
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
msg = b"Subject: from python\r\nDate: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <py@client.test>\r\nFrom: sender@client.test\r\n\r\n.dot line\r\nline two\r\n"
with smtplib.SMTP("127.0.0.1", port) as s:
    s.ehlo("python.client.test")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("enhancedstatuscodes")
    assert int(s.esmtp_features["size"]) == 26214400
    code, reply = s.mail("sender@client.test")
    assert code == 250, reply
    for rcpt in ["alice@example.test", "postmaster"]:
        code, reply = s.rcpt(rcpt)
        assert code == 250, reply
    code, reply = s.rcpt("nobody@example.test")
    assert code == 550 and reply.startswith(b"5.1.1"), reply
    code, reply = s.data(msg)
    assert code == 250, reply
    print(reply.decode().rsplit(" ", 1)[1])
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.addr.port().to_string())
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let (received, body) = split_received(&server.queued_message(&id));
    assert_eq!(
        body,
        b"Subject: from python\r\nDate: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <py@client.test>\r\nFrom: sender@client.test\r\n\r\n.dot line\r\nline two\r\n"
    );
    assert!(
        received.starts_with("Received: from python.client.test ([127.0.0.1])\r\n"),
        "{received}"
    );
    // Two recipients: none is named in the header.
    assert!(!received.contains("for <"), "{received}");
    let env = server.queued_envelope(&id);
    assert!(env.contains("Rcpt: <alice@example.test>\n") && env.contains("Rcpt: <postmaster>\n"));
    assert!(!env.contains("nobody"));
}

#[test]
fn pipelined_batch_in_one_write_is_answered_in_order() {
    let server = Server::start("pipeline", &[]);
    let mut c = Client::hello(server.addr);
    c.send(
        "MAIL FROM:<p@client.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<ghost@example.test>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n",
    );
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("550 5.1.1");
    c.expect("250 2.1.5");
    c.expect("354 ");
    // Message, next transaction and QUIT in one write too.
    c.send(format!("Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nSubject: two\r\n{COMPLETE}\r\n.\r\nQUIT\r\n"));
    let first = queue_id(&c.expect("250 2.0.0"));
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354 ");
    let second = queue_id(&c.expect("250 2.0.0"));
    c.expect("221 2.0.0");
    assert!(c.closed_by_server());
    assert_ne!(first, second);
    assert_eq!(server.queue_files(".msg").len(), 2);
    let (_, body) = split_received(&server.queued_message(&second));
    assert_eq!(body, format!("Subject: two\r\n{COMPLETE}\r\n").as_bytes());
}

#[test]
fn wrong_order_and_bad_syntax_over_the_wire() {
    let server = Server::start("order", &[]);
    let mut c = Client::connect(server.addr);
    c.expect("220 mx.test ESMTP");
    c.send("MAIL FROM:<a@client.test>\r\n");
    c.expect("503 5.5.1");
    c.send("EHLO client.test\r\n");
    c.expect("250 ");
    c.send("RCPT TO:<alice@example.test>\r\n");
    c.expect("503 5.5.1");
    c.send("MAIL FROM:<not an address>\r\n");
    c.expect("501 5.1.7");
    c.send("MAIL FROM:<a@client.test> FROB=1\r\n");
    c.expect("555 5.5.4");
    c.send("MAIL FROM:<a@client.test> SIZE=999999999\r\n");
    c.expect("552 5.3.4");
    c.send("XYZZY\r\n");
    c.expect("500 5.5.2");
    c.send("VRFY alice\r\n");
    c.expect("252 2.5.0");
    c.send("HELP\r\n");
    c.expect("214 2.0.0");
    c.send("MAIL FROM:<@route.test:a@client.test>\r\n");
    c.expect("250 2.1.0");
    c.send("RCPT TO:<\"odd user\"@[127.0.0.1]>\r\n");
    c.expect("250 2.1.5");
    c.send("QUIT\r\n");
    c.expect("221 2.0.0");
    server.wait_for_log("reject: XYZZY: 500 5.5.2");
}

#[test]
fn addresses_without_angle_brackets_as_appliances_send_them() {
    let server = Server::start("bare", &[]);
    let mut c = Client::connect(server.addr);
    c.expect("220 ");
    c.send("HELO scanner\r\n");
    c.expect("250 ");
    c.send("MAIL FROM:scanner@office.test\r\n");
    c.expect("250 2.1.0");
    c.send("RCPT TO:alice@example.test\r\n");
    c.expect("250 2.1.5");
    c.send("DATA\r\n");
    c.expect("354 ");
    c.send("Subject: scan\r\n\r\npage 1\r\n.\r\n");
    let id = queue_id(&c.expect("250 2.0.0"));
    let env = server.queued_envelope(&id);
    assert!(env.contains("From: <scanner@office.test>\n"), "{env}");
    assert!(env.contains("Rcpt: <alice@example.test>\n"), "{env}");
    // ESMTP parameters after a bare address, and what stays refused.
    c.send("EHLO ups.test\r\n");
    c.expect("250 ");
    c.send("MAIL FROM:ups@office.test SIZE=100\r\n");
    c.expect("250 2.1.0");
    c.send("RCPT TO:alice@example.test bob@example.test\r\n");
    c.expect("501 5.1.3");
    c.send("RSET\r\n");
    c.expect("250 2.0.0");
    c.send("MAIL FROM:\r\n");
    c.expect("501 5.1.7");
    c.send("MAIL FROM:a@b c@d\r\n");
    c.expect("501 5.1.7");
}

#[test]
fn relay_is_denied_outside_relay_networks() {
    // Loopback is not in this relay network, so we are an outsider.
    let server = Server::start("relay", &["--relay-networks", "192.0.2.0/24"]);
    let mut c = Client::hello(server.addr);
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<postmaster>\r\n");
    c.expect("250 2.1.0");
    let denied = c.expect("554 5.7.1");
    assert!(denied.contains("<victim@elsewhere.test>: Relay access denied"));
    c.expect("250 2.1.5");
    c.expect("250 2.1.5");
    server.wait_for_log("reject: RCPT TO:<victim@elsewhere.test>: 554 5.7.1");
}

#[test]
fn new_local_user_is_known_without_restart() {
    let server = Server::start("newuser", &[]);
    let mut c = Client::hello(server.addr);
    c.command("MAIL FROM:<>");
    assert!(c
        .command("RCPT TO:<carol@example.test>")
        .starts_with("550 5.1.1"));
    std::fs::create_dir(server.mail.join("carol")).unwrap();
    let mut c = Client::hello(server.addr);
    c.command("MAIL FROM:<>");
    assert!(c
        .command("RCPT TO:<carol@example.test>")
        .starts_with("250 2.1.5"));
}

#[test]
fn listens_on_ipv4_and_ipv6_at_once() {
    let server = Server::start("dualstack", &["--listen", "127.0.0.1:0, [::1]:0"]);
    let v6 = server.ipv6_addr();
    for addr in [server.addr, v6] {
        let mut c = Client::hello(addr);
        let reply = c.send_message(
            "a@client.test",
            &["someone@remote.test"],
            b"Subject: v\r\n\r\nx\r\n",
        );
        let (received, _) = split_received(&server.queued_message(&queue_id(&reply)));
        let literal = if addr.is_ipv6() {
            "([IPv6:::1])"
        } else {
            "([127.0.0.1])"
        };
        assert!(received.contains(literal), "{received}");
    }
}

#[test]
fn bdat_chunks_as_exchange_sends_them() {
    let server = Server::start("bdat", &[]);
    let mut c = Client::hello(server.addr);
    // Pipelined: envelope and the first chunk (with bare LFs, as Microsoft sends) in one write.
    let first = b"Subject: chunked\nDate: Mon, 1 Dec 2025 10:00:00 +0000\nMessage-ID: <c@x.test>\nFrom: ex@client.test\n\n.line one\n";
    let second = b"line two\r\n";
    let mut batch =
        b"MAIL FROM:<ex@client.test> BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\n".to_vec();
    batch.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
    batch.extend_from_slice(first);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    batch.extend_from_slice(second);
    c.send(&batch);
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect(&format!("250 2.0.0 Ok: {} octets received", first.len()));
    let id = queue_id(&c.expect("250 2.0.0 Ok: queued as"));
    let (_, body) = split_received(&server.queued_message(&id));
    assert_eq!(
        body,
        b"Subject: chunked\r\nDate: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <c@x.test>\r\nFrom: ex@client.test\r\n\r\n.line one\r\nline two\r\n"
    );
    assert!(server.queued_envelope(&id).contains("Body: 8BITMIME\n"));
}
