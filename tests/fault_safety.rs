//! Fault paths of delivery with the shapes a real box has: Debian's stock aliases, a broken
//! Maildir, a full disk, loops, a clock stepped forward, a `kill -9` under load. Each would
//! flood, duplicate or lose mail if the fault path were not as safe as the happy one.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::dns::DnsServer;
use common::sink::{Gate, Sink};
use common::{maildir, queue_id, wait_until, Client, Server, TempDir};

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

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    DELIVER.iter().chain(extra).copied().collect()
}

fn send(server: &Server, from: &str, to: &[&str], data: &str) -> String {
    queue_id(&Client::hello(server.addr).send_message(from, to, data.as_bytes()))
}

fn count_log(server: &Server, parts: &[&str]) -> usize {
    server
        .log_lines()
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

fn write_aliases(dir: &Path, text: &str) -> String {
    let path = dir.join("aliases");
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A receiving MX for `domain` on 127.0.0.3 and the sender's flags to reach it.
fn remote(dns: &DnsServer, domain: &str) -> Sink {
    let sink = Sink::start("127.0.0.3:0");
    dns.mx(domain, 10, &format!("mx.{domain}"));
    dns.a(&format!("mx.{domain}"), "127.0.0.3");
    sink
}

#[test]
fn failed_mail_from_null_sender_is_dropped_with_no_notice_storm() {
    // Debian's shape: postmaster and root end at an address the remote MX refuses.
    let dns = DnsServer::start();
    let sink = remote(&dns, "remote.example");
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
        &args(&[
            "--aliases",
            &aliases,
            "--dns-server",
            &dns_addr,
            "--smtp-port",
            &port,
        ]),
        Some(Arc::clone(&dir)),
    );
    // A bounce that cannot be delivered: root's address is refused.
    let bounce = send(
        &server,
        "",
        &["root@example.test"],
        "Subject: a bounce\r\n\r\nx\r\n",
    );
    // A message whose own bounce cannot be delivered: ghost leads nowhere, ann is refused.
    let mail = send(
        &server,
        "ann@remote.example",
        &["ghost@example.test"],
        "Subject: to a ghost\r\n\r\nx\r\n",
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
        count_log(&server, &["notification: "]),
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
        &args(&["--aliases", &aliases]),
        Some(Arc::clone(&dir)),
    );
    let id = send(
        &server,
        "ann@client.test",
        &["staff@example.test"],
        "Subject: to the staff\r\n\r\nhello\r\n",
    );
    wait_until("three failed tries for bob", || {
        count_log(&server, &[&id, "to=<bob@example.test>", "status=deferred"]) >= 3
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

/// Mounts a tmpfs of `size` on `dir`; false when that is not possible (not root).
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
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
    if !mount_tmpfs(&spool, "1m") {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    }
    let _unmount = Unmount(spool.clone());
    let dns = DnsServer::start();
    let sink = remote(&dns, "far.test");
    let gate = Gate::new();
    sink.set(|b| b.final_gate = Some(Arc::clone(&gate)));
    let (dns_addr, port) = (dns.addr.to_string(), sink.addr.port().to_string());
    let mut server = Server::start_in(
        &dir.0,
        &args(&["--dns-server", &dns_addr, "--smtp-port", &port]),
        None,
    );
    let id = send(
        &server,
        "ann@client.test",
        &["bob@far.test"],
        "Subject: once\r\n\r\nonly once\r\n",
    );
    // The remote server has the message; before it says 250, the spool disk fills up.
    wait_until("the message at the remote server", || gate.arrived() == 1);
    let filler = fill(&spool);
    gate.open();
    wait_until("two failed envelope writes", || {
        count_log(&server, &[&id, "cannot record delivery state"]) >= 2
    });
    assert_eq!(count_log(&server, &[&id, "status=sent"]), 1);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        gate.arrived(),
        1,
        "the message went to the remote server once"
    );
    // Space again: the outcome is written, the message is done, still one copy.
    fs::remove_file(filler).unwrap();
    server.wait_for_log(&format!("{id}: delivery state recorded after all"));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(gate.arrived(), 1);
    server.kill();
}

#[test]
fn kill_9_during_local_delivery_under_load_delivers_each_message_exactly_once() {
    let dir = Arc::new(TempDir::new("killlocal"));
    let deliver = args(&[]);
    let mut server = Server::start_in(&dir.0, &deliver, Some(Arc::clone(&dir)));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let (addr, acked, stop) = (server.addr, Arc::clone(&acked), Arc::clone(&stop));
            thread::spawn(move || {
                // The server dies under it: any failure ends this client.
                let _ = std::panic::catch_unwind(move || {
                    let mut c = Client::hello(addr);
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let subject = format!("c{client}-m{n}");
                        let data = format!("Subject: {subject}\r\n\r\nbody\r\n");
                        let reply = c.send_message(
                            "load@client.test",
                            &["alice@example.test"],
                            data.as_bytes(),
                        );
                        queue_id(&reply);
                        acked.lock().unwrap().push(subject);
                    }
                });
            })
        })
        .collect();
    let alice = dir.0.join("mail/alice");
    wait_until("local deliveries under way", || {
        acked.lock().unwrap().len() >= 300 && maildir(&alice).len() >= 100
    });
    server.kill(); // SIGKILL, in the middle of deliveries
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap().clone();
    let server = Server::start_in(&dir.0, &deliver, Some(Arc::clone(&dir)));
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
    let server = Server::start_in(&dir.0, &args(&[]), Some(Arc::clone(&dir)));
    let received =
        "Received: from a.test by b.test; Fri, 27 Nov 2026 10:00:00 +0000\r\n".repeat(50);
    send(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        &format!("{received}Subject: looping\r\n\r\nround and round\r\n"),
    );
    // With ours, 51 Received: headers: one more than the limit.
    let dsn = wait_for_one(&server.mail.join("bob"));
    assert!(dsn.contains("Status: 5.4.6"), "{dsn}");
    assert!(dsn.contains("too many hops"), "{dsn}");
    assert!(maildir(&server.mail.join("alice")).is_empty());
    // 49 of them (50 with ours) is still fine.
    let received =
        "Received: from a.test by b.test; Fri, 27 Nov 2026 10:00:00 +0000\r\n".repeat(49);
    send(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        &format!("{received}Subject: far\r\n\r\nbut not looping\r\n"),
    );
    wait_until("alice's copy", || {
        maildir(&server.mail.join("alice")).len() == 1
    });
}

fn wait_for_one(user_dir: &Path) -> String {
    wait_until(&format!("a message in {}", user_dir.display()), || {
        maildir(user_dir).len() == 1
    });
    maildir(user_dir).remove(0)
}

#[test]
fn a_message_already_delivered_to_a_recipient_is_a_forwarding_loop() {
    let dir = Arc::new(TempDir::new("deliveredto"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let server = Server::start_in(&dir.0, &args(&[]), Some(Arc::clone(&dir)));
    send(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        "Delivered-To: Alice@example.test\r\nSubject: back again\r\n\r\nx\r\n",
    );
    let dsn = wait_for_one(&server.mail.join("bob"));
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
    let server = Server::start_in(&dir.0, &args(&[]), Some(Arc::clone(&dir)));
    let id = "1000.M1P1Q1";
    wait_until("two deferrals", || {
        count_log(&server, &[id, "to=<alice@example.test>", "status=deferred"]) == 2
    });
    assert_eq!(count_log(&server, &[id, "status=bounced"]), 0);
    // The third failure, with the age long past, expires it.
    let dsn = wait_for_one(&server.mail.join("bob"));
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert_eq!(
        count_log(
            &server,
            &[
                id,
                "to=<alice@example.test>",
                "status=bounced",
                "3 attempts"
            ]
        ),
        1
    );
}
