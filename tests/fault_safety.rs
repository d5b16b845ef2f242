//! Fault paths of delivery with the shapes a real box has: Debian's stock aliases, a broken
//! Maildir, a full disk, loops, a clock stepped forward, a `kill -9` under load. Each would
//! flood, duplicate or lose mail if the fault path were not as safe as the happy one.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::delivery::{mx_sink, wait_for_only_message};
use common::dns::DnsServer;
use common::sink::Gate;
use common::{flags, maildir, queue_id, queue_message, wait_until, Load, Server, TempDir, Tmpfs};

/// Delivery on, retries every second: what would storm or repeat does so fast.
const DELIVER: &[&str] = &[
    "--delivery-threads",
    "4",
    "--retry-schedule",
    "1s",
    "--queue-scan-interval",
    "1s",
    "--smtp-connect-timeout",
    "2s",
    "--smtp-command-timeout",
    "5s",
];

fn write_aliases(dir: &Path, text: &str) -> String {
    let path = dir.join("aliases");
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn failed_mail_from_null_sender_is_dropped_with_no_notice_storm() {
    // Debian's shape: postmaster and root end at an address the remote MX refuses.
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "remote.example");
    sink.set(|b| {
        b.rcpt.insert(
            "admin@remote.example".into(),
            "550 5.1.1 no such user".into(),
        );
        b.rcpt
            .insert("ann@remote.example".into(), "550 5.1.1 gone".into());
    });
    let dir = Arc::new(TempDir::new("storm"));
    let aliases = write_aliases(
        &dir.0,
        "postmaster: root\nroot: admin@remote.example\nghost: nobody\n",
    );
    let (dns_addr, port) = (dns.addr.to_string(), sink.addr.port().to_string());
    let server = Server::start_in(
        &dir.0,
        &flags(
            DELIVER,
            &[
                "--aliases",
                &aliases,
                "--dns-server",
                &dns_addr,
                "--smtp-port",
                &port,
            ],
        ),
        Some(Arc::clone(&dir)),
    );
    // A bounce that cannot be delivered: root's address is refused.
    let bounce = queue_message(
        &server,
        "",
        &["root@example.test"],
        b"Subject: a bounce\r\n\r\nx\r\n",
    );
    // A message whose own bounce cannot be delivered: ghost leads nowhere, ann is refused.
    let mail = queue_message(
        &server,
        "ann@remote.example",
        &["ghost@example.test"],
        b"Subject: to a ghost\r\n\r\nx\r\n",
    );
    server.wait_for_log(&format!(
        "{bounce}: undeliverable mail from <> to <admin@remote.example> dropped"
    ));
    let notice = server
        .wait_for_log(&format!("{mail}: sender non-delivery notification: "))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    server.wait_for_log(&format!(
        "{notice}: undeliverable mail from <> to <ann@remote.example> dropped"
    ));
    // Notices are queued before a message is removed: with the queue empty, none can follow.
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(
        server.log_lines_with(&["notification: "]).len(),
        1,
        "one notice, for the ghost"
    );
    assert_eq!(
        *sink.connections.lock().unwrap(),
        2,
        "one refused transaction for each message from <>, nothing more"
    );
    assert!(maildir(&server.mail.join("postmaster")).is_empty());
    assert!(sink.messages().is_empty());
}

#[test]
fn a_broken_maildir_of_one_alias_target_gives_the_others_one_copy() {
    let dir = Arc::new(TempDir::new("fanout"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    // bob's Maildir cannot be written: a file where tmp/ should be (tests run as root).
    fs::write(dir.0.join("mail/bob/tmp"), b"in the way").unwrap();
    let aliases = write_aliases(&dir.0, "staff: alice, bob\n");
    let server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--aliases", &aliases]),
        Some(Arc::clone(&dir)),
    );
    let id = queue_message(
        &server,
        "ann@client.test",
        &["staff@example.test"],
        b"Subject: to the staff\r\n\r\nhello\r\n",
    );
    wait_until("three failed tries for bob", || {
        server
            .log_lines_with(&[&id, "to=<bob@example.test>", "status=deferred"])
            .len()
            >= 3
    });
    assert_eq!(
        maildir(&server.mail.join("alice")).len(),
        1,
        "one copy for alice"
    );
    let env = server.queued_envelope(&id);
    assert!(
        env.contains(
            "Rcpt: <alice@example.test>\nMaildir: alice\nStatus: delivered\nAttempts: 1\n"
        ),
        "{env}"
    );
    fs::remove_file(dir.0.join("mail/bob/tmp")).unwrap();
    wait_until("bob's copy", || {
        maildir(&server.mail.join("bob")).len() == 1
    });
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(maildir(&server.mail.join("alice")).len(), 1);
    assert_eq!(maildir(&server.mail.join("bob")).len(), 1);
}

/// Fills the file system of `dir` to the last block.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let block = vec![b'f'; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_after_a_remote_250_sends_nothing_twice() {
    let dir = Arc::new(TempDir::new("fullafter"));
    let spool = dir.0.join("spool");
    let Some(_tmpfs) = Tmpfs::mount(&spool, "1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    };
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "far.test");
    let gate = Gate::new();
    // carol is deferred: bob's outcome must then be written into the envelope (a message
    // done with is only removed, which a full disk allows).
    sink.set(|b| {
        b.final_gate = Some(Arc::clone(&gate));
        b.rcpt
            .insert("carol@far.test".into(), "451 4.2.0 carol later".into());
    });
    let (dns_addr, port) = (dns.addr.to_string(), sink.addr.port().to_string());
    let mut server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--dns-server", &dns_addr, "--smtp-port", &port]),
        None,
    );
    let id = queue_message(
        &server,
        "ann@client.test",
        &["bob@far.test", "carol@far.test"],
        b"Subject: once\r\n\r\nonly once\r\n",
    );
    // The remote server has the message; before it says 250, the spool disk fills up.
    wait_until("the message at the remote server", || gate.arrived() == 1);
    let filler = fill(&spool);
    gate.open();
    wait_until("two failed envelope writes", || {
        server
            .log_lines_with(&[&id, "cannot record delivery state"])
            .len()
            >= 2
    });
    assert_eq!(server.log_lines_with(&[&id, "status=sent"]).len(), 1);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        gate.arrived(),
        1,
        "the message went to the remote server once"
    );
    // Space again: the outcome is written, still one copy.
    fs::remove_file(filler).unwrap();
    server.wait_for_log(&format!("{id}: delivery state recorded after all"));
    let envelope = server.queued_envelope(&id);
    assert!(
        envelope.contains("Rcpt: <bob@far.test>\nStatus: delivered\n"),
        "{envelope}"
    );
    assert!(
        envelope.contains("Rcpt: <carol@far.test>\nStatus: pending\n"),
        "{envelope}"
    );
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(gate.arrived(), 1);
    server.kill();
}

/// A message done with on its first attempt is removed, not recorded: a full disk then
/// costs nothing and sends nothing twice.
#[test]
fn a_full_disk_after_the_last_remote_250_removes_the_message_once() {
    let dir = Arc::new(TempDir::new("fulllast"));
    let spool = dir.0.join("spool");
    let Some(_tmpfs) = Tmpfs::mount(&spool, "1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    };
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "far.test");
    let gate = Gate::new();
    sink.set(|b| b.final_gate = Some(Arc::clone(&gate)));
    let (dns_addr, port) = (dns.addr.to_string(), sink.addr.port().to_string());
    let server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--dns-server", &dns_addr, "--smtp-port", &port]),
        None,
    );
    let id = queue_message(
        &server,
        "ann@client.test",
        &["bob@far.test"],
        b"Subject: once\r\n\r\nonly once\r\n",
    );
    wait_until("the message at the remote server", || gate.arrived() == 1);
    let _filler = fill(&spool);
    gate.open();
    server.wait_for_log(&format!("{id}: removed"));
    assert!(server.queue_files("").is_empty());
    assert!(server
        .log_lines_with(&[&id, "cannot record delivery state"])
        .is_empty());
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(gate.arrived(), 1);
}

#[test]
fn kill_9_during_local_delivery_under_load_delivers_each_message_exactly_once() {
    let dir = Arc::new(TempDir::new("killlocal"));
    let mut server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    let load = Load::start(server.addr, 20, |c, client, n| {
        let subject = format!("c{client}-m{n}");
        let data = format!("Subject: {subject}\r\n\r\nbody\r\n");
        let reply = c.send_message("load@client.test", &["alice@example.test"], data.as_bytes());
        queue_id(&reply);
        subject
    });
    let alice = dir.0.join("mail/alice");
    wait_until("local deliveries under way", || {
        load.acked() >= 300 && maildir(&alice).len() >= 100
    });
    server.kill(); // SIGKILL, in the middle of deliveries
    let acked = load.stop();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    wait_until("the queue to empty after the restart", || {
        server.queue_files("").is_empty()
    });
    let mut seen = std::collections::HashMap::new();
    for message in maildir(&alice) {
        let subject = message
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *seen.entry(subject).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for subject in &acked {
        assert_eq!(
            seen.get(subject),
            Some(&1),
            "{subject} acknowledged but lost"
        );
    }
}

#[test]
fn a_message_with_too_many_hops_is_bounced_as_a_loop() {
    let dir = Arc::new(TempDir::new("hops"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    let received =
        "Received: from a.test by b.test; Fri, 27 Nov 2026 10:00:00 +0000\r\n".repeat(50);
    queue_message(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        format!("{received}Subject: looping\r\n\r\nround and round\r\n").as_bytes(),
    );
    // With ours, 51 Received: headers: one more than the limit.
    let dsn = wait_for_only_message(&server.mail.join("bob"));
    assert!(dsn.contains("Status: 5.4.6"), "{dsn}");
    assert!(dsn.contains("too many hops"), "{dsn}");
    assert!(maildir(&server.mail.join("alice")).is_empty());
    // 49 of them (50 with ours) is still fine.
    let received =
        "Received: from a.test by b.test; Fri, 27 Nov 2026 10:00:00 +0000\r\n".repeat(49);
    queue_message(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        format!("{received}Subject: far\r\n\r\nbut not looping\r\n").as_bytes(),
    );
    wait_until("alice's copy", || {
        maildir(&server.mail.join("alice")).len() == 1
    });
}

#[test]
fn a_message_already_delivered_to_a_recipient_is_a_forwarding_loop() {
    let dir = Arc::new(TempDir::new("deliveredto"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    queue_message(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        b"Delivered-To: Alice@example.test\r\nSubject: back again\r\n\r\nx\r\n",
    );
    let dsn = wait_for_only_message(&server.mail.join("bob"));
    assert!(dsn.contains("Status: 5.4.6"), "{dsn}");
    assert!(
        dsn.contains("mail forwarding loop for alice@example.test"),
        "{dsn}"
    );
    assert!(maildir(&server.mail.join("alice")).is_empty());
}

#[test]
fn a_clock_stepped_forward_does_not_expire_mail_at_its_first_failure() {
    let dir = Arc::new(TempDir::new("clockstep"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    fs::create_dir_all(dir.0.join("mail/alice")).unwrap();
    fs::write(dir.0.join("mail/alice/new"), b"in the way").unwrap();
    // Queued "in 1970" by a box without a real-time clock; NTP has set the clock since.
    let queue = dir.0.join("spool/queue");
    fs::create_dir_all(&queue).unwrap();
    fs::write(queue.join("1000.M1P1Q1.msg"), b"Subject: old\r\n\r\nx\r\n").unwrap();
    fs::write(
        queue.join("1000.M1P1Q1.env"),
        "Version: 1\nArrival: 1000\nClient: local\nHelo: mx.test\nProtocol: ESMTP\n\
         From: <bob@example.test>\nSize: 19\nRcpt: <alice@example.test>\nStatus: pending\n\
         Attempts: 0\n",
    )
    .unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    let id = "1000.M1P1Q1";
    wait_until("two deferrals", || {
        server
            .log_lines_with(&[id, "to=<alice@example.test>", "status=deferred"])
            .len()
            == 2
    });
    assert_eq!(server.log_lines_with(&[id, "status=bounced"]).len(), 0);
    // The third failure, with the age long past, expires it.
    let dsn = wait_for_only_message(&server.mail.join("bob"));
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert_eq!(
        server
            .log_lines_with(&[
                id,
                "to=<alice@example.test>",
                "status=bounced",
                "3 attempts"
            ])
            .len(),
        1
    );
}
