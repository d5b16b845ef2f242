//! Remote delivery against servers that misbehave: one that trickles its greeting a byte at a
//! time, MX hosts that refuse or hang up at EHLO, a 3xx where the final reply belongs, a
//! server slow to answer QUIT, and a refusal hundreds of kilobytes long with control bytes in
//! it. Real parts on loopback, as in remote_delivery.rs.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::delivery::{
    add_mx, mx_sink, queue_test_message, sender, sender_args, sender_with, wait_for_only_message,
};
use common::dns::DnsServer;
use common::sink::{Gate, Sink};
use common::{wait_until, Server, TempDir};

/// Two sinks on one port: `mx1.DOMAIN` (preference 10) at 127.0.0.2, `mx2.DOMAIN` (20) at
/// 127.0.0.3. Returns them in that order.
fn two_mx_sinks(dns: &DnsServer, domain: &str) -> (Sink, Sink) {
    let (first, second) = (0..20)
        .find_map(|_| {
            let second = Sink::start("127.0.0.3:0");
            let port = second.addr.port();
            // The same port may be taken on 127.0.0.2: then take another.
            drop(TcpListener::bind(("127.0.0.2", port)).ok()?);
            Some((Sink::start(&format!("127.0.0.2:{port}")), second))
        })
        .expect("one port free on 127.0.0.2 and 127.0.0.3");
    dns.mx(domain, 20, &format!("mx2.{domain}"));
    dns.mx(domain, 10, &format!("mx1.{domain}"));
    dns.a(&format!("mx1.{domain}"), "127.0.0.2");
    dns.a(&format!("mx2.{domain}"), "127.0.0.3");
    (first, second)
}

/// An MX at 127.0.0.3 that, on every connection, sends `220` and then one `-` every 100 ms,
/// never ending the line. Returns its port.
fn trickling_mx(dns: &DnsServer, domain: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut byte: &[u8] = b"220";
                // The pause is the behaviour under test (a byte in time for every read), not
                // a wait for anything; it ends when the client hangs up.
                while stream.write_all(byte).is_ok() {
                    byte = b"-";
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    add_mx(dns, domain);
    port
}

#[test]
fn a_server_trickling_its_greeting_is_given_up_on_at_the_reply_deadline() {
    let dns = DnsServer::start();
    let port = trickling_mx(&dns, "trickle.test");
    let server = sender_with("trickle", &dns, port, &["--smtp-command-timeout", "1s"]);
    let start = Instant::now();
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["t@trickle.test"],
        b"slowly\r\n",
    );
    let line =
        server.wait_for_log_with(&[&format!("{id}: to=<t@trickle.test>"), "status=deferred"]);
    let took = start.elapsed();
    // One reply may take 1 s, however many bytes come in time for each read.
    assert!(took < Duration::from_secs(5), "gave up only after {took:?}");
    assert!(
        line.contains("time-out"),
        "the time-out is not named: {line}"
    );
    let env = server.queued_envelope(&id);
    assert!(
        env.contains("Rcpt: <t@trickle.test>\nStatus: pending\n"),
        "{env}"
    );
}

#[test]
fn a_421_at_ehlo_moves_on_to_the_next_mx() {
    let dns = DnsServer::start();
    let (busy, good) = two_mx_sinks(&dns, "busy.test");
    busy.set(|b| b.ehlo_refusal = Some("421 4.3.2 busy".into()));
    let port = good.addr.port();
    let server = sender("busyehlo", &dns, port);
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["u@busy.test"],
        b"next one\r\n",
    );
    server.wait_for_log_with(&[
        &format!("{id}: to=<u@busy.test>, relay=mx2.busy.test[127.0.0.3]:{port}"),
        "status=sent",
    ]);
    // 421 closes the channel (RFC 5321 3.8): no HELO after it, the next MX straight away.
    server.wait_for_log(&format!(
        "busy.test: mx1.busy.test[127.0.0.2]:{port} not used: EHLO: 421 4.3.2 busy"
    ));
    assert!(*busy.connections.lock().unwrap() >= 1, "mx1 was not tried");
    assert!(busy.messages().is_empty());
    assert_eq!(good.messages().len(), 1);
    assert_eq!(good.messages()[0].rcpts, ["u@busy.test"]);
    assert!(server.log_lines_with(&[&id, "status=deferred"]).is_empty());
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn a_hang_up_at_ehlo_moves_on_to_the_next_mx() {
    let dns = DnsServer::start();
    let (dropper, good) = two_mx_sinks(&dns, "hangup.test");
    dropper.set(|b| b.drop_at_ehlo = true);
    let port = good.addr.port();
    let server = sender("dropehlo", &dns, port);
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["v@hangup.test"],
        b"next one\r\n",
    );
    server.wait_for_log_with(&[
        &format!("{id}: to=<v@hangup.test>, relay=mx2.hangup.test[127.0.0.3]:{port}"),
        "status=sent",
    ]);
    server.wait_for_log(&format!(
        "hangup.test: mx1.hangup.test[127.0.0.2]:{port} not used"
    ));
    assert!(
        *dropper.connections.lock().unwrap() >= 1,
        "mx1 was not tried"
    );
    assert!(dropper.messages().is_empty());
    assert_eq!(good.messages().len(), 1);
    assert!(server.log_lines_with(&[&id, "status=deferred"]).is_empty());
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn a_3xx_at_end_of_data_defers_and_the_retry_delivers_once() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "odd.test");
    let (first, second) = (Gate::new(), Gate::new());
    sink.set(|b| {
        b.final_replies.push_back("354 odd".into());
        b.final_gate = Some(Arc::clone(&first));
    });
    let server = sender("odd3xx", &dns, sink.addr.port());
    let id = queue_test_message(&server, "ann@client.test", &["w@odd.test"], b"final?\r\n");
    // Hold the retry at its final dot, so the envelope between the attempts can be read.
    wait_until("the first attempt's final dot", || first.arrived() == 1);
    sink.set(|b| b.final_gate = Some(Arc::clone(&second)));
    first.open();
    server.wait_for_log_with(&[
        &format!("{id}: to=<w@odd.test>"),
        "status=deferred (354 odd (in reply to end of DATA))",
    ]);
    let env_path = server.spool.join(format!("queue/{id}.env"));
    let mut env = String::new();
    wait_until("the deferral recorded in the envelope", || {
        env = fs::read_to_string(&env_path).unwrap_or_default();
        env.contains("Last-Reply: 354 odd")
    });
    assert!(
        env.contains("Rcpt: <w@odd.test>\nStatus: pending\nAttempts: 1\n"),
        "{env}"
    );
    assert!(sink.messages().is_empty());
    wait_until("the retry's final dot", || second.arrived() == 1);
    second.open();
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        server
            .log_lines_with(&[&format!("{id}: to=<w@odd.test>"), "status=sent"])
            .len(),
        1
    );
}

#[test]
fn outcomes_are_recorded_before_quit() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "quit.test");
    let gate = Gate::new();
    sink.set(|b| b.quit_gate = Some(Arc::clone(&gate)));
    let server = sender("quitlate", &dns, sink.addr.port());
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["q@quit.test"],
        b"recorded\r\n",
    );
    wait_until("QUIT held at the sink", || gate.arrived() == 1);
    assert_eq!(sink.messages().len(), 1);
    // Every recipient done: the record is the message's removal, made while QUIT waits.
    server.wait_for_log(&format!("{id}: removed"));
    assert!(
        server.queue_files("").is_empty(),
        "the outcome is not recorded while QUIT waits"
    );
    gate.open();
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn a_huge_hostile_refusal_becomes_one_clean_line_in_the_dsn_envelope_and_log() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "far.test");
    // 60 lines of ~3000 characters, with a NUL and a bare CR inside each line.
    let lines: Vec<String> = (0..60)
        .map(|i| format!("5.1.1 line {i}: no\0such\ruser {}", "z".repeat(3000)))
        .collect();
    let (last, rest) = lines.split_last().unwrap();
    let refusal = format!("550-{}\r\n550 {last}", rest.join("\r\n550-"));
    assert!(refusal.len() > 180_000);
    sink.set(|b| {
        b.rcpt.insert("x@far.test".into(), refusal);
    });
    // A second recipient that keeps being deferred keeps the envelope to look at.
    dns.servfail("later.test");
    let dir = Arc::new(TempDir::new("hostilereply"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let args = sender_args(&dns, sink.addr.port(), &["--local-domains", "example.test"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_in(&dir.0, &args, Some(Arc::clone(&dir)));
    let id = queue_test_message(
        &server,
        "bob@example.test",
        &["x@far.test", "y@later.test"],
        b"to be refused\r\n",
    );

    let bob = server.mail.join("bob");
    let dsn = wait_for_only_message(&bob);
    assert!(
        dsn.contains("Final-Recipient: rfc822; x@far.test\nAction: failed\nStatus: 5.1.1\n"),
        "{dsn}"
    );
    let lines: Vec<&str> = dsn.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("Diagnostic-Code: smtp; 550 5.1.1 line 0: no such user"))
        .unwrap_or_else(|| panic!("no clean Diagnostic-Code: {}", &dsn[..dsn.len().min(4000)]));
    let diagnostic = lines[at];
    assert!(diagnostic.len() < 600, "{} characters", diagnostic.len());
    // Nothing of the reply spills onto a following line.
    assert_eq!(lines.get(at + 1).copied(), Some(""), "{dsn}");
    assert!(!dsn.contains(['\0', '\r']), "a NUL or a CR in the DSN");
    assert!(
        lines.iter().all(|l| l.len() < 1000),
        "a long line in the DSN"
    );

    let line = server.wait_for_log_with(&[
        &format!("{id}: to=<x@far.test>"),
        "status=bounced (550 5.1.1",
    ]);
    assert!(line.len() < 1000, "log line of {} characters", line.len());
    assert!(!line.contains(['\0', '\r']), "{line:?}");
    assert!(server.log_lines().iter().all(|l| l.len() < 2000));

    let env_path = server.spool.join(format!("queue/{id}.env"));
    let mut env = String::new();
    wait_until("the failure reported in the envelope", || {
        env = fs::read_to_string(&env_path).unwrap_or_default();
        env.contains("Rcpt: <x@far.test>\nStatus: failed\n") && env.contains("Reported: yes")
    });
    assert!(env.len() < 2000, "envelope of {} bytes", env.len());
    assert!(!env.contains(['\0', '\r']), "a NUL or a CR in the envelope");
    let reply = env
        .lines()
        .find(|l| l.starts_with("Last-Reply: 550 5.1.1 line 0"))
        .unwrap_or_else(|| panic!("{env}"));
    assert!(reply.len() < 600, "{reply}");
    assert!(
        env.contains("Rcpt: <y@later.test>\nStatus: pending\n"),
        "{env}"
    );
}

#[test]
fn all_tries_for_a_domain_end_at_the_transaction_deadline() {
    let dns = DnsServer::start();
    let port = trickling_mx(&dns, "slowest.test");
    // Each reply could take 10 s; the whole delivery to the domain may take 2 s.
    let server = sender_with(
        "budget",
        &dns,
        port,
        &[
            "--smtp-command-timeout",
            "10s",
            "--smtp-transaction-timeout",
            "2s",
        ],
    );
    let start = Instant::now();
    let id = queue_test_message(&server, "ann@client.test", &["s@slowest.test"], b"x\r\n");
    let line =
        server.wait_for_log_with(&[&format!("{id}: to=<s@slowest.test>"), "status=deferred"]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "gave up only after {took:?}");
    assert!(line.contains("took too long"), "{line}");
}

#[test]
fn a_552_to_rcpt_is_temporary_and_a_huge_reply_line_does_not_shift_the_others() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "old.test");
    sink.set(|b| {
        // RFC 821's code for too many recipients: RFC 5321 4.5.3.1.10 says treat it as 452.
        b.rcpt
            .insert("many@old.test".into(), "552 too many recipients".into());
        // One line of 10,000 characters: more than a reply line we keep.
        b.rcpt.insert(
            "long@old.test".into(),
            format!("550 5.1.1 {}", "x".repeat(10_000)),
        );
    });
    let server = sender("old552", &dns, sink.addr.port());
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["many@old.test", "long@old.test", "fine@old.test"],
        b"x\r\n",
    );
    server.wait_for_log_with(&[&format!("{id}: to=<fine@old.test>"), "status=sent"]);
    server.wait_for_log_with(&[
        &format!("{id}: to=<long@old.test>"),
        "dsn=5.1.1",
        "status=bounced",
    ]);
    server.wait_for_log_with(&[
        &format!("{id}: to=<many@old.test>"),
        "dsn=4.5.3",
        "status=deferred",
    ]);
    assert_eq!(sink.messages()[0].rcpts, ["fine@old.test"]);
}
