//! Remote delivery with real parts on loopback: a DNS server answering MX, A, null MX,
//! NXDOMAIN and SERVFAIL; scriptable receiving servers; a second Postilion as an MX.

mod common;

use std::fs;

use common::delivery::{mx_sink, queue_test_message, sender, sender_with, wait_for_only_message};
use common::dns::DnsServer;
use common::sink::{tls_config, Sink};
use common::{maildir, wait_until, Server};

#[test]
fn mx_preference_with_fallback_to_the_next_mx() {
    let dns = DnsServer::start();
    let sink = Sink::start("127.0.0.3:0");
    let port = sink.addr.port();
    // Preference 10 has nobody listening; 20 is the sink; 30 is never needed.
    dns.mx("pref.test", 20, "mx2.pref.test");
    dns.mx("pref.test", 10, "mx1.pref.test");
    dns.mx("pref.test", 30, "mx3.pref.test");
    dns.a("mx1.pref.test", "127.0.0.2");
    dns.a("mx2.pref.test", "127.0.0.3");
    dns.a("mx3.pref.test", "127.0.0.5");
    let server = sender("mxpref", &dns, port);
    let id = queue_test_message(&server, "ann@client.test", &["bob@pref.test"], b"hello\r\n");
    server.wait_for_log_with(&[
        &format!("{id}: to=<bob@pref.test>, relay=mx2.pref.test[127.0.0.3]:{port}"),
        "status=sent (250 2.0.0 accepted",
    ]);
    server.wait_for_log(&format!(
        "pref.test: mx1.pref.test[127.0.0.2]:{port} not used"
    ));
    assert!(!server
        .log_lines()
        .iter()
        .any(|l| l.contains("mx3.pref.test")));
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].from.as_str(), got[0].rcpts.as_slice()),
        ("<ann@client.test>", &["bob@pref.test".to_string()][..])
    );
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn a_domain_without_mx_gets_mail_at_its_address() {
    let dns = DnsServer::start();
    let sink = Sink::start("127.0.0.3:0");
    dns.a("plain.test", "127.0.0.3");
    let server = sender("implicit", &dns, sink.addr.port());
    queue_test_message(
        &server,
        "ann@client.test",
        &["carol@plain.test"],
        b"implicit\r\n",
    );
    wait_until("delivery", || sink.messages().len() == 1);
    assert_eq!(sink.messages()[0].rcpts, ["carol@plain.test"]);
}

#[test]
fn null_mx_and_nxdomain_bounce_to_the_local_sender() {
    let dns = DnsServer::start();
    dns.null_mx("nomail.test");
    let server = sender("nullmx", &dns, 2525);
    queue_test_message(
        &server,
        "alice@example.test",
        &["x@nomail.test"],
        b"one\r\n",
    );
    queue_test_message(
        &server,
        "alice@example.test",
        &["y@nowhere.test"],
        b"two\r\n",
    );
    wait_until("two bounces", || {
        maildir(&server.mail.join("alice")).len() == 2
    });
    let dsns = maildir(&server.mail.join("alice")).join("\n=====\n");
    assert!(
        dsns.contains("Final-Recipient: rfc822; x@nomail.test\nAction: failed\nStatus: 5.1.10\n"),
        "{dsns}"
    );
    assert!(
        dsns.contains("Final-Recipient: rfc822; y@nowhere.test\nAction: failed\nStatus: 5.1.2\n"),
        "{dsns}"
    );
    assert!(dsns.contains("accepts no mail (null MX)"));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn servfail_defers_and_keeps_the_mail() {
    let dns = DnsServer::start();
    dns.servfail("broken.test");
    let server = sender("servfail", &dns, 2525);
    let id = queue_test_message(&server, "ann@client.test", &["z@broken.test"], b"later\r\n");
    server.wait_for_log_with(&[
        &format!("{id}: to=<z@broken.test>, relay=none"),
        "status=deferred (451 4.4.3",
    ]);
    let env = server.queued_envelope(&id);
    assert!(
        env.contains("Rcpt: <z@broken.test>\nStatus: pending\n"),
        "{env}"
    );
}

#[test]
fn a_temporary_refusal_is_retried_and_delivered_once() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "retry.test");
    sink.set(|b| {
        b.final_replies
            .push_back("451 4.3.0 try again later".into())
    });
    let server = sender("tempfail", &dns, sink.addr.port());
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["d@retry.test"],
        b"retry me\r\n",
    );
    server.wait_for_log_with(&[
        &format!("{id}: to=<d@retry.test>"),
        "status=deferred (451 4.3.0 try again later (in reply to end of DATA))",
    ]);
    server.wait_for_log_with(&[&format!("{id}: to=<d@retry.test>"), "status=sent"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn one_recipient_of_three_refused_the_others_delivered_once_and_a_dsn_for_it() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "multi.test");
    sink.set(|b| {
        b.rcpt.insert(
            "two@multi.test".into(),
            "550 5.1.1 <two@multi.test>: no such user".into(),
        );
    });
    let server = sender("partial", &dns, sink.addr.port());
    queue_test_message(
        &server,
        "alice@example.test",
        &["one@multi.test", "two@multi.test", "three@multi.test"],
        b"three\r\n",
    );
    let dsn = wait_for_only_message(&server.mail.join("alice"));
    assert!(
        dsn.contains("Final-Recipient: rfc822; two@multi.test\nAction: failed\nStatus: 5.1.1\n"),
        "{dsn}"
    );
    assert!(!dsn.contains("one@multi.test\nAction") && !dsn.contains("three@multi.test\nAction"));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    let got = sink.messages();
    assert_eq!(got.len(), 1, "one transaction for the domain");
    assert_eq!(got[0].rcpts, ["one@multi.test", "three@multi.test"]);
}

#[test]
fn connection_dropped_mid_data_is_retried_and_delivered_exactly_once() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "drop.test");
    sink.set(|b| b.drop_in_data = 1);
    let server = sender("dropdata", &dns, sink.addr.port());
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["e@drop.test"],
        b"line one\r\nline two\r\nline three\r\n",
    );
    server.wait_for_log_with(&[
        &format!("{id}: to=<e@drop.test>"),
        "status=deferred (451 4.4.2 lost connection",
    ]);
    server.wait_for_log_with(&[&format!("{id}: to=<e@drop.test>"), "status=sent"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
    assert!(*sink.connections.lock().unwrap() >= 2);
}

#[test]
fn outbound_bytes_are_exactly_what_was_queued_with_crlf_only() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "bytes.test");
    let server = sender("bytes", &dns, sink.addr.port());
    // What the client means (dot-stuffed on the wire by our raw client below).
    let mut body = b".leading dot\r\n..two dots\r\n.\r\nmiddle . dot\r\n".to_vec();
    body.extend_from_slice("8-bit: gr\u{fc}\u{df}e \u{65e5}\u{672c}\r\n".as_bytes());
    body.extend_from_slice(&[b'L'; 2000]);
    body.extend_from_slice(b"\r\nend\r\n");
    let mut stuffed = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    let id = queue_test_message(&server, "ann@client.test", &["f@bytes.test"], &stuffed);
    wait_until("delivery", || sink.messages().len() == 1);
    let got = &sink.messages()[0];
    // The message arrives as queued: our Received: header, then the client's bytes.
    assert!(got.message.starts_with(b"Received: from client.test"));
    assert!(String::from_utf8_lossy(&got.message).contains(&format!("id {id}")));
    assert!(got.message.ends_with(
        &[
            format!("\r\nMessage-ID: <{id}@mx.test>\r\nFrom: ann@client.test\r\n\r\n").as_bytes(),
            &body
        ]
        .concat()
    ));
    // On the wire: dot-stuffed exactly, CRLF line ends only, the one terminator at the end.
    let mut expected_raw = Vec::new();
    for line in got.message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            expected_raw.push(b'.');
        }
        expected_raw.extend_from_slice(line);
    }
    expected_raw.extend_from_slice(b".\r\n");
    assert_eq!(got.raw, expected_raw);
    for (i, &b) in got.raw.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(got.raw[i - 1], b'\r', "bare LF at {i}");
        }
    }
    assert_eq!(
        got.mail_params,
        "SIZE=".to_string() + &got.message.len().to_string()
    );
}

#[test]
fn a_second_postilion_as_the_mx_puts_mail_in_its_maildir() {
    let dns = DnsServer::start();
    let receiver = Server::start(
        "receiver",
        &[
            "--listen",
            "127.0.0.4:0",
            "--local-domains",
            "remote.test",
            "--delivery-threads",
            "1",
        ],
    );
    fs::create_dir_all(receiver.mail.join("bob")).unwrap();
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.a("mx.remote.test", "127.0.0.4");
    let server = sender("tosecond", &dns, receiver.addr.port());
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["bob@remote.test"],
        b"between two postilions\r\n",
    );
    let text = wait_for_only_message(&receiver.mail.join("bob"));
    assert!(text.starts_with("Return-Path: <ann@client.test>\nDelivered-To: bob@remote.test\nReceived: from mx.test ([127.0.0.1])"), "{text}");
    assert!(text.contains(&format!("id {id}")) && text.ends_with("between two postilions\n"));
    server.wait_for_log_with(&[
        &format!("{id}: to=<bob@remote.test>, relay=mx.remote.test[127.0.0.4]"),
        "status=sent (250 2.0.0 Ok: queued as",
    ]);
}

#[test]
fn starttls_is_used_whenever_offered() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "tls.test");
    sink.set(|b| b.starttls = Some(tls_config("mx.tls.test")));
    let server = sender("starttls", &dns, sink.addr.port());
    let id = queue_test_message(&server, "ann@client.test", &["g@tls.test"], b"secret\r\n");
    server.wait_for_log_with(&[
        &format!("{id}: to=<g@tls.test>, relay=mx.tls.test[127.0.0.3]"),
        "tls=yes",
        "status=sent",
    ]);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "the message did not come over TLS");
    assert!(got[0].message.ends_with(b"secret\r\n"));
}

#[test]
fn encrypt_mode_refuses_a_receiver_without_starttls() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "plaintext.test");
    let server = sender_with(
        "encrypt",
        &dns,
        sink.addr.port(),
        &["--smtp-tls", "encrypt"],
    );
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["h@plaintext.test"],
        b"not in clear\r\n",
    );
    server.wait_for_log_with(&[
        &format!("{id}: to=<h@plaintext.test>"),
        "status=deferred",
        "does not offer STARTTLS",
    ]);
    assert!(sink.messages().is_empty());
    // Once the receiver offers STARTTLS, the retry goes through, encrypted.
    sink.set(|b| b.starttls = Some(tls_config("mx.plaintext.test")));
    wait_until("delivery over TLS", || sink.messages().len() == 1);
    assert!(sink.messages()[0].tls);
}

#[test]
fn verify_mode_refuses_a_self_signed_certificate() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "selfsigned.test");
    sink.set(|b| b.starttls = Some(tls_config("mx.selfsigned.test")));
    let server = sender_with("verify", &dns, sink.addr.port(), &["--smtp-tls", "verify"]);
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["i@selfsigned.test"],
        b"checked\r\n",
    );
    let line =
        server.wait_for_log_with(&[&format!("{id}: to=<i@selfsigned.test>"), "status=deferred"]);
    assert!(line.contains("TLS with 127.0.0.3"), "{line}");
    assert!(sink.messages().is_empty());
}

/// A sender whose remote mail all goes to `relayhost`, authenticating with relay-user. The
/// test smarthosts have self-signed certificates: the check is relaxed explicitly.
fn smarthost_sender(name: &str, relayhost: &str, password: &str) -> (Server, common::TempDir) {
    smarthost_sender_with(name, relayhost, password, &["--relayhost-tls-verify", "no"])
}

fn smarthost_sender_with(
    name: &str,
    relayhost: &str,
    password: &str,
    extra: &[&str],
) -> (Server, common::TempDir) {
    let secrets = common::TempDir::new(&format!("{name}-secrets"));
    let auth_file = secrets.0.join("relay_auth");
    fs::write(
        &auth_file,
        format!("# smarthost login\nrelay-user:{password}\n"),
    )
    .unwrap();
    let auth_file = auth_file.to_string_lossy().into_owned();
    let dns = DnsServer::start(); // no records: the relayhost is used, not MX
    let mut args = vec![
        "--relayhost",
        relayhost,
        "--relayhost-auth-file",
        &auth_file,
    ];
    args.extend_from_slice(extra);
    let server = sender_with(name, &dns, 1, &args);
    (server, secrets)
}

#[test]
fn a_password_goes_only_to_a_smarthost_whose_certificate_checks_out() {
    let sink = auth_sink("127.0.0.3:0");
    sink.set(|b| b.starttls = Some(tls_config("smarthost.test")));
    let relayhost = sink.addr.to_string();
    let (server, _secrets) = smarthost_sender_with("verifyrelay", &relayhost, "s3cret:pw", &[]);
    let id = queue_test_message(&server, "ann@client.test", &["n@anywhere.test"], b"x\r\n");
    let line =
        server.wait_for_log_with(&[&format!("{id}: to=<n@anywhere.test>"), "status=deferred"]);
    assert!(
        line.contains("TLS with") && line.contains("failed"),
        "{line}"
    );
    assert!(sink.messages().is_empty());
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("authentication as")),
        "the password must not be offered to an unchecked server"
    );
}

fn auth_sink(addr: &str) -> Sink {
    let sink = Sink::start(addr);
    sink.set(|b| b.auth = Some(("relay-user".into(), "s3cret:pw".into())));
    sink
}

#[test]
fn smarthost_with_auth_over_starttls() {
    let sink = auth_sink("127.0.0.3:0");
    sink.set(|b| b.starttls = Some(tls_config("smarthost.test")));
    let relayhost = sink.addr.to_string();
    let (server, _secrets) = smarthost_sender("smarthost", &relayhost, "s3cret:pw");
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["j@anywhere.test", "k@elsewhere.test"],
        b"via the smarthost\r\n",
    );
    wait_until("both domains relayed", || sink.messages().len() == 2);
    for got in sink.messages() {
        assert!(
            got.tls && got.auth.as_deref() == Some("relay-user"),
            "{got:?}"
        );
    }
    server.wait_for_log_with(&[
        &format!("{id}: to=<j@anywhere.test>, relay=127.0.0.3[127.0.0.3]:"),
        "tls=yes",
        "status=sent",
    ]);
    assert!(
        !server.log_lines().iter().any(|l| l.contains("s3cret")),
        "the password must never be logged"
    );
}

#[test]
fn smarthost_on_port_465_speaks_tls_from_the_start() {
    let listener = std::net::TcpListener::bind("127.0.0.6:465");
    if listener.is_err() {
        eprintln!("SKIPPED: cannot bind 127.0.0.6:465 (not root?)");
        return;
    }
    drop(listener);
    let sink = auth_sink("127.0.0.6:465");
    sink.set(|b| b.implicit_tls = Some(tls_config("smarthost.test")));
    let (server, _secrets) = smarthost_sender("smarthost465", "127.0.0.6:465", "s3cret:pw");
    queue_test_message(
        &server,
        "ann@client.test",
        &["l@anywhere.test"],
        b"wrapped\r\n",
    );
    wait_until("relayed", || sink.messages().len() == 1);
    assert!(sink.messages()[0].tls && sink.messages()[0].auth.is_some());
}

#[test]
fn credentials_never_go_over_plaintext_and_a_wrong_password_defers() {
    let sink = auth_sink("127.0.0.3:0");
    let relayhost = sink.addr.to_string();
    let (server, _secrets) = smarthost_sender("noauthplain", &relayhost, "s3cret:pw");
    let id = queue_test_message(&server, "ann@client.test", &["m@anywhere.test"], b"x\r\n");
    server.wait_for_log_with(&[
        &format!("{id}: to=<m@anywhere.test>"),
        "status=deferred",
        "does not offer STARTTLS",
    ]);
    assert!(sink.messages().is_empty());

    let sink = auth_sink("127.0.0.3:0");
    sink.set(|b| b.starttls = Some(tls_config("smarthost.test")));
    let relayhost = sink.addr.to_string();
    let (server, _secrets) = smarthost_sender("badpassword", &relayhost, "wrong");
    let id = queue_test_message(&server, "ann@client.test", &["n@anywhere.test"], b"x\r\n");
    server.wait_for_log_with(&[
        &format!("{id}: to=<n@anywhere.test>"),
        "status=deferred",
        "authentication as relay-user failed: 535",
    ]);
    assert!(sink.messages().is_empty());
}

#[test]
fn killed_while_delivering_then_restarted_sends_nothing_twice_and_loses_nothing() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "slow.test");
    sink.set(|b| b.hold_final = true);
    let dir = std::sync::Arc::new(common::TempDir::new("killdeliver"));
    let (dns_addr, port) = (dns.addr.to_string(), sink.addr.port().to_string());
    let args = [
        "--delivery-threads",
        "1",
        "--retry-schedule",
        "1s",
        "--dns-server",
        &dns_addr,
        "--smtp-port",
        &port,
        "--smtp-data-timeout",
        "60s",
    ];
    let mut server = Server::start_in(&dir.0, &args, Some(std::sync::Arc::clone(&dir)));
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test", "o@slow.test"],
        b"once only\r\n",
    );
    let alice = server.mail.join("alice");
    wait_until("local delivery", || maildir(&alice).len() == 1);
    // The remote server has the whole message and has not answered: kill -9 now.
    wait_until("the remote transaction in flight", || {
        *sink.held.lock().unwrap() == 1
    });
    server.kill();
    let env = fs::read_to_string(dir.0.join(format!("spool/queue/{id}.env"))).unwrap();
    assert!(
        env.contains("Rcpt: <alice@example.test>\nMaildir: alice\nStatus: delivered\n"),
        "{env}"
    );
    assert!(
        env.contains("Rcpt: <o@slow.test>\nStatus: pending\n"),
        "{env}"
    );

    sink.set(|b| b.hold_final = false);
    let server = Server::start_in(&dir.0, &args, Some(std::sync::Arc::clone(&dir)));
    wait_until("the remote recipient delivered after the restart", || {
        sink.messages().len() == 1
    });
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(maildir(&alice).len(), 1, "alice must not get a second copy");
    assert_eq!(sink.messages()[0].rcpts, ["o@slow.test"]);
}

#[test]
fn an_expired_bounce_is_dropped_and_never_bounced() {
    let dns = DnsServer::start();
    dns.servfail("down.test");
    let server = sender_with("expirebounce", &dns, 2525, &["--max-queue-lifetime", "1s"]);
    let id = queue_test_message(
        &server,
        "",
        &["p@down.test"],
        b"a bounce nobody can take\r\n",
    );
    server.wait_for_log(&format!(
        "{id}: undeliverable mail from <> to <p@down.test> dropped"
    ));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    let attempts = server
        .log_lines_with(&[&format!("{id}: to=<p@down.test>")])
        .len();
    assert_eq!(attempts, 3, "expiry needs three attempts, not one");
    assert!(maildir(&server.mail.join("postmaster")).is_empty());
    assert!(!server.log_lines().iter().any(|l| l.contains("to=<>")));
}
