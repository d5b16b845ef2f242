//! TLS on the receiving side with real handshakes: an rcgen certificate in PEM files, Python's
//! smtplib with `starttls()`, a rustls client that checks the certificate, `openssl s_client`
//! for session tickets, and clients that misbehave during the handshake.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

use common::tls::{
    command, handshake, reply, starttls, tls_server, try_starttls, write_certificate,
};
use common::{queue_id, wait_until, DEADLINE};

#[test]
fn smtplib_starttls_sends_and_received_says_esmtps_with_the_cipher() {
    let (server, _, _) = tls_server("smtplib-tls");
    let script = format!(
        "import smtplib, ssl\n\
         s = smtplib.SMTP('127.0.0.1', {port})\n\
         s.starttls(context=ssl._create_unverified_context())\n\
         s.ehlo()\n\
         assert not s.has_extn('starttls'), 'STARTTLS offered again over TLS'\n\
         s.sendmail('ann@client.test', ['alice@example.test'], 'Subject: tls\\r\\n\\r\\nsecret\\r\\n')\n\
         s.quit()\n",
        port = server.addr.port()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the message in the queue", || {
        server.queue_files(".msg").len() == 1
    });
    let id = server.queue_files(".msg")[0]
        .trim_end_matches(".msg")
        .to_string();
    assert!(server.queued_envelope(&id).contains("Protocol: ESMTPS\n"));
    let message = String::from_utf8(server.queued_message(&id)).unwrap();
    assert!(
        message.contains("(using TLSv1.3 with cipher TLS13_") && message.contains("with ESMTPS id"),
        "{message}"
    );
    server.wait_for_log("TLS established: TLSv1.3 with cipher TLS13_");
}

#[test]
fn commands_pipelined_behind_starttls_are_never_executed() {
    let (server, _, cert) = tls_server("injection");
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut plain = BufReader::new(tcp.try_clone().unwrap());
    assert!(reply(&mut plain).starts_with("220 "));
    // CVE-2011-0411: one write, STARTTLS with a transaction behind it.
    (&tcp)
        .write_all(
            b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<alice@example.test>\r\n",
        )
        .unwrap();
    assert!(reply(&mut plain).contains("250 STARTTLS"));
    assert!(reply(&mut plain).starts_with("220 2.0.0"));
    assert!(
        plain.buffer().is_empty(),
        "nothing answered the injected commands"
    );
    let mut tls = BufReader::new(handshake(tcp, &cert).unwrap());
    // The session starts clean: the MAIL was never run, and no HELO is remembered.
    assert!(command(&mut tls, "RCPT TO:<alice@example.test>").starts_with("503 5.5.1"));
    let ehlo = command(&mut tls, "EHLO c.test");
    assert!(
        ehlo.starts_with("250-mx.test") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(command(&mut tls, "STARTTLS").starts_with("503 5.5.1"));
    assert!(command(&mut tls, "MAIL FROM:<a@client.test>").starts_with("250 2.1.0"));
    assert!(command(&mut tls, "RCPT TO:<alice@example.test>").starts_with("250 2.1.5"));
    assert!(command(&mut tls, "DATA").starts_with("354"));
    let queued = command(&mut tls, "Subject: x\r\n\r\nover TLS\r\n.");
    queue_id(&queued);
    assert_eq!(server.queue_files(".msg").len(), 1);
}

/// Runs `openssl s_client` against `addr` (with `-starttls smtp` if asked) and says whether a
/// session ticket came (it writes `-sess_out` only then).
fn openssl_got_a_ticket(addr: SocketAddr, starttls: bool, dir: &Path) -> bool {
    let sess = dir.join(format!("sess-{}", addr.port()));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-ign_eof",
        "-sess_out",
    ])
    .arg(&sess);
    if starttls {
        cmd.args(["-starttls", "smtp"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // After STARTTLS the server waits for a command; over implicit TLS it greets first.
    if starttls {
        stdin.write_all(b"EHLO c.test\r\n").unwrap();
    }
    // The first reply over TLS comes after any ticket: then QUIT.
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("250 ") || line.starts_with("220 ") {
            break;
        }
        line.clear();
    }
    stdin.write_all(b"QUIT\r\n").unwrap();
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let _ = child.wait();
    sess.exists()
}

#[test]
fn no_session_ticket_on_the_smtp_role_but_on_submissions() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is needed (make deps installs it)");
    }
    let (server, submissions, _) = tls_server("tickets");
    assert!(
        !openssl_got_a_ticket(server.addr, true, &server.dir),
        "a ticket on smtp"
    );
    assert!(
        openssl_got_a_ticket(submissions, false, &server.dir),
        "no ticket on submissions"
    );
}

#[test]
fn garbage_stalls_and_hang_ups_in_the_handshake_leave_others_served() {
    let (server, submissions, cert) = tls_server("badhandshake");
    // Garbage instead of a ClientHello.
    let mut garbage = TcpStream::connect(submissions).unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // A client that stalls in the handshake, holding its connection.
    let _stalled = TcpStream::connect(submissions).unwrap();
    // One that starts a ClientHello and hangs up.
    let mut hangup = TcpStream::connect(submissions).unwrap();
    hangup
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xf0, 0x01])
        .unwrap();
    drop(hangup);
    wait_until("two failed handshakes logged", || {
        server
            .log_lines()
            .iter()
            .filter(|l| l.contains("TLS handshake failed"))
            .count()
            == 2
    });
    // Meanwhile others are served, over STARTTLS and over implicit TLS.
    let mut tls = starttls(server.addr, &cert);
    assert!(command(&mut tls, "EHLO c.test").starts_with("250-mx.test"));
    let tcp = TcpStream::connect(submissions).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut implicit = BufReader::new(handshake(tcp, &cert).unwrap());
    assert!(reply(&mut implicit).starts_with("220 mx.test"));
    assert!(command(&mut implicit, "EHLO c.test").starts_with("250-mx.test"));
    // Garbage gets a TLS alert at most, never an SMTP greeting.
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
}

#[test]
fn a_replaced_certificate_serves_new_connections_and_a_session_in_progress_finishes() {
    let (server, _, old) = tls_server("renewal");
    let mut in_progress = starttls(server.addr, &old);
    assert!(command(&mut in_progress, "EHLO c.test").starts_with("250-"));
    // certbot renews: new files in place. Once they have settled (two seconds), new
    // connections get the new certificate and no longer the old one.
    let new = write_certificate(&server.dir, "mx.test");
    wait_until("the renewed certificate served", || {
        try_starttls(server.addr, &new).is_ok()
    });
    server.wait_for_log("TLS certificate re-read");
    assert!(
        try_starttls(server.addr, &old).is_err(),
        "the old certificate still served"
    );
    // The session that began before the renewal goes on to the end.
    assert!(command(&mut in_progress, "MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(command(&mut in_progress, "RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(command(&mut in_progress, "DATA").starts_with("354"));
    queue_id(&command(
        &mut in_progress,
        "Subject: x\r\n\r\nstill here\r\n.",
    ));
}

#[test]
fn a_client_trickling_its_client_hello_is_cut_off_at_the_handshake_deadline() {
    let (server, submissions, _) =
        common::tls::tls_server_with("trickle-hello", &["--command-timeout", "2s"]);
    let start = std::time::Instant::now();
    let mut tcp = TcpStream::connect(submissions).unwrap();
    // A ClientHello's first bytes, one every 200 ms: each read gets a byte in time. The pause
    // is the behaviour under test, not a wait for anything; it ends when the server hangs up.
    let record = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let trickle = std::thread::spawn(move || {
        for byte in record.iter().cycle() {
            if tcp.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    server.wait_for_log("TLS handshake failed: handshake time-out");
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(6),
        "cut off only after {took:?}"
    );
    trickle.join().unwrap();
}
