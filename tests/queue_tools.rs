//! The queue tools with the real binary: `mailq` (through a link of that name) on an empty
//! queue and with deferred mail; `flush`, `delete`, `hold`, `release` and `bounce` asked of a
//! running daemon over `spool/control` (a delete while a slow remote transaction has the
//! message included) and done on the files under the spool lock while it is stopped; unknown
//! ids; a user who is neither root nor the mail user; the socket's mode.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::delivery::{
    mx_sink, queue_test_message, sender_args, sender_with, wait_for_mail, wait_for_only_message,
    DELIVER,
};
use common::dns::DnsServer;
use common::sink::{Gate, Sink};
use common::user::TestUser;
use common::{base_args, flags, maildir, wait_until, Server, TempDir, BIN, DEADLINE};

/// Retries an hour apart: only a flush (or a release) explains a delivery within a test.
const SLOW_RETRIES: &[&str] = &["--retry-schedule", "1h", "--queue-scan-interval", "1s"];

/// Runs `postilion queue ARGS --spool SPOOL`.
fn queue(server_spool: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("queue")
        .args(args)
        .args(["--spool", server_spool.to_str().unwrap()])
        .output()
        .expect("run postilion queue")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a queue command that must succeed; its standard output.
fn queue_ok(spool: &Path, args: &[&str]) -> String {
    let out = queue(spool, args);
    assert!(
        out.status.success(),
        "queue {args:?}: {:?}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A sink that is `domain`'s MX and refuses every message after DATA with a 451 until told
/// otherwise, and a sender delivering to it with retries an hour apart.
fn deferring_setup(name: &str, domain: &str) -> (DnsServer, Sink, Server) {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, domain);
    sink.set(|b| b.final_replies = vec!["451 4.3.0 try again later".to_string(); 50].into());
    let server = sender_with(name, &dns, sink.addr.port(), SLOW_RETRIES);
    (dns, sink, server)
}

/// Queues a message to `rcpt` and waits for its first attempt to be deferred.
fn deferred_message(server: &Server, rcpt: &str, body: &str) -> String {
    let id = queue_test_message(server, "alice@example.test", &[rcpt], body.as_bytes());
    server.wait_for_log_with(&[&format!("{id}: to=<{rcpt}>"), "status=deferred"]);
    // Logged as recorded, written just after.
    wait_until("the deferral in the envelope", || {
        server.queued_envelope(&id).contains("\nAttempts: 1\n")
    });
    id
}

fn accept_everything(sink: &Sink) {
    sink.set(|b| b.final_replies.clear());
}

/// SIGTERM, then the process's exit within the deadline.
fn stop(server: &mut Server) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLINE, "did not stop");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

#[test]
fn mailq_shows_an_empty_queue_then_a_deferred_message_with_its_last_reply() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "busy.test");
    sink.set(|b| {
        b.rcpt
            .insert("x@busy.test".into(), "451 4.2.1 mailbox busy".into());
    });
    let server = sender_with("mailq", &dns, sink.addr.port(), SLOW_RETRIES);
    let links = TempDir::new("mailq-link");
    let mailq = links.0.join("mailq");
    std::os::unix::fs::symlink(BIN, &mailq).unwrap();
    let run_mailq = || {
        let out = Command::new(&mailq)
            .args(["--spool", server.spool.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(run_mailq(), "Mail queue is empty\n");

    let id = deferred_message(&server, "x@busy.test", "wait for me\r\n");
    let listing = run_mailq();
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines[0].starts_with("-Queue ID-"), "{listing}");
    assert!(lines[1].starts_with(&format!("{id} ")), "{listing}");
    assert!(lines[1].ends_with(" alice@example.test"), "{listing}");
    assert!(
        lines[2].starts_with("    <x@busy.test>  pending, 1 attempt, next attempt "),
        "{listing}"
    );
    assert!(
        lines[3].contains("(451 4.2.1 mailbox busy (in reply to RCPT TO:<x@busy.test>))"),
        "{listing}"
    );
    assert_eq!(
        lines.last(),
        Some(&"-- 1 Kbytes in 1 Request."),
        "{listing}"
    );
    // The same listing, but for ages and times, which a second may change between the two.
    let digitless = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect()
    };
    assert_eq!(
        digitless(&listing),
        digitless(&queue_ok(&server.spool, &["list"])),
        "mailq = queue list"
    );

    let shown = queue_ok(&server.spool, &["show", &id]);
    assert!(shown.contains(&format!("Queue ID:   {id}\n")), "{shown}");
    assert!(
        shown.contains("Sender:     <alice@example.test>\n"),
        "{shown}"
    );
    assert!(
        shown.contains("last reply: 451 4.2.1 mailbox busy"),
        "{shown}"
    );
    assert!(shown.contains("Subject: test\r\n"), "{shown}");
    assert!(
        !shown.contains("wait for me"),
        "no body unless asked: {shown}"
    );
    let whole = queue_ok(&server.spool, &["show", &id, "--body"]);
    assert!(whole.contains("wait for me"), "{whole}");
}

#[test]
fn flush_delivers_a_deferred_message_at_once() {
    let (_dns, sink, server) = deferring_setup("flush", "later.test");
    let id = deferred_message(&server, "d@later.test", "flush me\r\n");
    accept_everything(&sink);
    let said = queue_ok(&server.spool, &["flush", &id]);
    assert_eq!(said, format!("{id}: flushed\n"));
    server.wait_for_log_with(&[&format!("{id}: to=<d@later.test>"), "status=sent"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
    server.wait_for_log_with(&[&format!(
        "{id}: flushed by the postmaster (queue flush, uid 0"
    )]);
}

#[test]
fn delete_while_the_daemon_runs_removes_the_message_for_good() {
    let (_dns, sink, server) = deferring_setup("delete", "later.test");
    let doomed = deferred_message(&server, "d@later.test", "delete me\r\n");
    assert_eq!(
        queue_ok(&server.spool, &["delete", &doomed]),
        format!("{doomed}: deleted\n")
    );
    assert!(
        server.queue_files("").is_empty(),
        "{:?}",
        server.queue_files("")
    );
    server.wait_for_log(&format!(
        "{doomed}: deleted by the postmaster (queue delete, uid 0"
    ));

    // Unknown now: a clear error and EX_DATAERR.
    let again = queue(&server.spool, &["delete", &doomed]);
    assert_eq!(again.status.code(), Some(65));
    assert_eq!(
        stderr(&again),
        format!("postilion queue: {doomed}: no such message in the queue\n")
    );

    // Everything flushed, a second message sent: only that one arrives.
    accept_everything(&sink);
    queue_ok(&server.spool, &["flush"]);
    let kept = queue_test_message(
        &server,
        "alice@example.test",
        &["e@later.test"],
        b"keep\r\n",
    );
    server.wait_for_log_with(&[&format!("{kept}: to=<e@later.test>"), "status=sent"]);
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpts, ["e@later.test"]);
}

#[test]
fn delete_during_a_slow_remote_transaction_waits_for_it_and_nothing_comes_back() {
    let (_dns, sink, server) = deferring_setup("delete-busy", "slow.test");
    let gate = Gate::new();
    sink.set(|b| b.final_gate = Some(Arc::clone(&gate)));
    let id = queue_test_message(&server, "alice@example.test", &["s@slow.test"], b"slow\r\n");
    wait_until("the message at the sink's gate", || gate.arrived() == 1);

    // The tool waits for the attempt to end, and says what was done, not what will be.
    let spool = server.spool.clone();
    let doomed = id.clone();
    let tool = std::thread::spawn(move || queue(&spool, &["delete", &doomed]));
    server.wait_for_log(&format!(
        "{id}: queue delete asked by the postmaster (uid 0"
    ));
    assert_eq!(
        server.queue_files(""),
        [format!("{id}.msg")],
        "not under the worker's feet"
    );
    gate.open();
    let out = tool.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{id}: deleted\n"));
    server.wait_for_log_with(&[&format!("{id}: to=<s@slow.test>"), "status=deferred"]);
    server.wait_for_log(&format!("{id}: deleted by the postmaster (queue delete"));
    // The worker wrote its outcome before the delete: no envelope came back after it.
    assert!(
        server.queue_files("").is_empty(),
        "{:?}",
        server.queue_files("")
    );

    accept_everything(&sink);
    queue_ok(&server.spool, &["flush"]);
    let next = queue_test_message(&server, "alice@example.test", &["t@slow.test"], b"next\r\n");
    server.wait_for_log_with(&[&format!("{next}: to=<t@slow.test>"), "status=sent"]);
    let received = sink.messages();
    assert_eq!(received.len(), 1, "the deleted message never delivered");
    assert_eq!(received[0].rcpts, ["t@slow.test"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn an_action_on_a_message_still_being_delivered_is_not_promised_but_refused_with_75() {
    let dns = DnsServer::start();
    let sink = mx_sink(&dns, "slow.test");
    // The remote end may keep its reply to the data for a minute.
    let patient = flags(SLOW_RETRIES, &["--smtp-data-timeout", "60s"]);
    let server = sender_with("hold-busy", &dns, sink.addr.port(), &patient);
    let gate = Gate::new();
    sink.set(|b| b.final_gate = Some(Arc::clone(&gate)));
    let id = queue_test_message(&server, "alice@example.test", &["s@slow.test"], b"slow\r\n");
    wait_until("the message at the sink's gate", || gate.arrived() == 1);

    // The attempt outlasts the daemon's patience (10 s): nothing done, nothing promised.
    let out = queue(&server.spool, &["hold", &id]);
    assert_eq!(out.status.code(), Some(75), "{}", stdout(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "postilion queue: {id}: not done yet: the message is being delivered; repeat the \
             command\n"
        )
    );
    let dropped = server.wait_for_log_with(&[
        &format!("{id}: queue hold asked by the postmaster"),
        "dropped, not done",
    ]);
    assert!(dropped.contains("WARN"), "{dropped}");

    // The attempt ends as it would have: accepted, and the message is gone, not held.
    accept_everything(&sink);
    gate.open();
    server.wait_for_log_with(&[&format!("{id}: to=<s@slow.test>"), "status=sent"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert!(!server
        .log_lines()
        .iter()
        .any(|l| l.contains(&format!("{id}: put on hold"))));
}
#[test]
fn a_held_message_waits_even_when_flushed_and_goes_once_released() {
    let (_dns, sink, server) = deferring_setup("hold", "later.test");
    let id = deferred_message(&server, "h@later.test", "hold me\r\n");
    assert_eq!(
        queue_ok(&server.spool, &["hold", &id]),
        format!("{id}: put on hold\n")
    );
    assert!(server.queued_envelope(&id).contains("\nHold: yes\n"));
    assert!(queue_ok(&server.spool, &["list"]).contains("alice@example.test  (held)"));
    accept_everything(&sink);
    assert_eq!(
        queue_ok(&server.spool, &["flush", &id]),
        format!("{id}: on hold, not flushed (release it first)\n")
    );
    assert!(queue_ok(&server.spool, &["flush"]).contains("1 on hold left alone"));
    // Another message goes through meanwhile; the held one still waits.
    let other = queue_test_message(&server, "alice@example.test", &["o@later.test"], b"o\r\n");
    server.wait_for_log_with(&[&format!("{other}: to=<o@later.test>"), "status=sent"]);
    wait_until("the other one gone", || server.queue_files("").len() == 2);
    assert_eq!(server.queue_files(".env"), [format!("{id}.env")]);
    assert_eq!(sink.messages().len(), 1);

    assert_eq!(
        queue_ok(&server.spool, &["release", &id]),
        format!("{id}: released from hold\n")
    );
    server.wait_for_log_with(&[&format!("{id}: to=<h@later.test>"), "status=sent"]);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 2);
}

#[test]
fn bounce_returns_the_message_to_its_sender_and_empties_the_queue() {
    let (_dns, _sink, server) = deferring_setup("bounce", "later.test");
    let id = deferred_message(&server, "b@later.test", "bounce me\r\n");
    assert_eq!(
        queue_ok(&server.spool, &["bounce", &id]),
        format!("{id}: returned to sender (1 recipient(s))\n")
    );
    wait_until("a DSN for alice", || {
        maildir(&server.mail.join("alice")).len() == 1
    });
    let dsn = maildir(&server.mail.join("alice")).remove(0);
    assert!(
        dsn.contains("Final-Recipient: rfc822; b@later.test\nAction: failed\nStatus: 5.0.0\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains("returned to sender by the postmaster (queue bounce)"),
        "{dsn}"
    );
    wait_until("the queue to hold only nothing", || {
        server.queue_files("").is_empty()
    });
}

#[test]
fn with_the_daemon_stopped_the_tools_work_on_the_files_under_the_lock() {
    let (dns, sink, mut server) = deferring_setup("stopped", "later.test");
    let flushed = deferred_message(&server, "f@later.test", "flush me\r\n");
    let bounced = deferred_message(&server, "b@later.test", "bounce me\r\n");
    let deleted = deferred_message(&server, "d@later.test", "delete me\r\n");
    stop(&mut server);
    assert!(!server.spool.join("control").exists(), "removed at stop");

    let said = queue_ok(&server.spool, &["hold", &flushed]);
    assert_eq!(said, format!("{flushed}: put on hold\n"));
    assert!(server.queued_envelope(&flushed).contains("\nHold: yes\n"));
    let said = queue_ok(&server.spool, &["release", &flushed]);
    assert!(
        said.contains("released from hold (postilion is not running"),
        "{said}"
    );
    assert!(!server.queued_envelope(&flushed).contains("Hold:"));
    queue_ok(&server.spool, &["delete", &deleted]);
    assert!(!server
        .queue_files("")
        .iter()
        .any(|f| f.starts_with(&deleted)));
    let said = queue_ok(&server.spool, &["bounce", &bounced]);
    assert!(
        said.contains("returned to sender (1 recipient(s))"),
        "{said}"
    );
    assert!(server
        .queued_envelope(&bounced)
        .contains("Last-Reply: 5.0.0 returned to sender by the postmaster (queue bounce)"));
    let said = queue_ok(&server.spool, &["flush"]);
    assert!(
        said.contains(&format!("{flushed}: flushed (postilion is not running")),
        "{said}"
    );
    assert!(!server.queued_envelope(&flushed).contains("Next-Attempt:"));
    let unknown = queue(&server.spool, &["hold", "1.M1P1Q1R1"]);
    assert_eq!(unknown.status.code(), Some(65));
    assert!(stderr(&unknown).contains("1.M1P1Q1R1: no such message in the queue"));

    // A lock held by someone else with no socket answering: EX_TEMPFAIL, said so.
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(server.spool.join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let busy = queue(&server.spool, &["flush"]);
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("holds the spool lock but does not answer"));
    drop(lock);

    // Started again (retries an hour apart): the flushed one goes at once, the bounce too.
    accept_everything(&sink);
    let args = sender_args(&dns, sink.addr.port(), SLOW_RETRIES);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_in(&server.dir.clone(), &args, None);
    server.wait_for_log_with(&[&format!("{flushed}: to=<f@later.test>"), "status=sent"]);
    wait_until("the bounce in alice's Maildir", || {
        maildir(&server.mail.join("alice")).len() == 1
    });
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn bad_and_unknown_ids_get_a_clear_error() {
    let server = Server::start("ids", &[]);
    let out = queue(&server.spool, &["delete", "1.M1P1Q1R1"]);
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(
        stderr(&out),
        "postilion queue: 1.M1P1Q1R1: no such message in the queue\n"
    );
    let out = queue(&server.spool, &["show", "1.M1P1Q1R1"]);
    assert_eq!(out.status.code(), Some(65));
    let out = queue(&server.spool, &["hold", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("is not a queue id"),
        "{}",
        stderr(&out)
    );
    let out = queue(&server.spool, &["hold"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("usage"), "{}", stderr(&out));
}

#[test]
fn only_root_and_the_mail_user_may_use_the_tools_and_the_socket() {
    if rustix_free_euid() != 0 {
        eprintln!("SKIPPED: not root");
        return;
    }
    let Some(user) = TestUser::create() else {
        eprintln!("SKIPPED: cannot make a user here");
        return;
    };
    let server = Server::start("perm", &[]);
    let socket = server.spool.join("control");
    wait_until("the control socket", || socket.exists());
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), 0, "the daemon's own");

    // Another user: one line and EX_NOPERM.
    let out = Command::new(BIN)
        .args(["queue", "list", "--spool", server.spool.to_str().unwrap()])
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("postilion queue: permission denied: only root and the mail user")
    );
    assert_eq!(stderr(&out).lines().count(), 1);

    // Even through a socket opened up to everyone, the daemon answers no one else.
    fs::set_permissions(&server.spool, fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket,sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(b'flush\\n')\n\
                  print(s.recv(200).decode(), end='')\n";
    let out = Command::new("python3")
        .args(["-c", script, socket.to_str().unwrap()])
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "530 permission denied: only root and the mail user\n",
        "{}",
        stderr(&out)
    );
    server.wait_for_log(&format!("control socket: refused uid {}", user.uid));
    fs::set_permissions(&server.spool, fs::Permissions::from_mode(0o700)).unwrap();
}

fn rustix_free_euid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1)
}

#[test]
fn offline_actions_by_root_leave_the_files_to_the_daemon_user_and_nothing_is_quarantined() {
    if rustix_free_euid() != 0 {
        eprintln!("SKIPPED: not root");
        return;
    }
    let Some(user) = TestUser::create() else {
        eprintln!("SKIPPED: cannot make a user here");
        return;
    };
    let dir = Arc::new(TempDir::new("owner"));
    base_args(&dir.0);
    for mailbox in ["mail", "mail/alice"] {
        std::os::unix::fs::chown(dir.0.join(mailbox), Some(user.uid), Some(user.gid)).unwrap();
    }
    let as_user = ["--user", user.name.as_str()];
    // Delivery paused: both messages stay queued.
    let mut server = Server::start_in(&dir.0, &as_user, Some(Arc::clone(&dir)));
    let held = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"h\r\n",
    );
    let flushed = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"f\r\n",
    );
    stop(&mut server);

    // Root, the daemon stopped: the tools write envelopes, as the spool's owner.
    assert_eq!(
        queue_ok(&server.spool, &["hold", &held]),
        format!("{held}: put on hold\n")
    );
    let said = queue_ok(&server.spool, &["flush"]);
    assert!(said.contains(&format!("{flushed}: flushed")), "{said}");
    let mut files = Vec::new();
    for sub in ["queue", "tmp"] {
        for entry in fs::read_dir(server.spool.join(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    assert!(files.iter().any(|f| f.ends_with(format!("{held}.env"))));
    assert!(files.iter().any(|f| f.ends_with(format!("{flushed}.env"))));
    for file in &files {
        let meta = fs::symlink_metadata(file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{file:?}");
    }

    // Started again as the user: it reads them all, nothing goes to corrupt/.
    let delivering = flags(DELIVER, &as_user);
    let server = Server::start_in(&dir.0, &delivering, Some(Arc::clone(&dir)));
    wait_for_only_message(&server.mail.join("alice"));
    server.wait_for_log(&format!("{held}: on hold, not delivered until released"));
    let corrupt = |server: &Server| common::list(&server.spool.join("corrupt"), "");
    assert!(corrupt(&server).is_empty(), "{:?}", corrupt(&server));

    // Released by root while it runs: delivered.
    assert_eq!(
        queue_ok(&server.spool, &["release", &held]),
        format!("{held}: released from hold\n")
    );
    wait_for_mail(&server.mail.join("alice"), 2);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert!(corrupt(&server).is_empty(), "{:?}", corrupt(&server));
}

#[test]
fn list_shows_what_it_can_read_and_exits_74_for_the_rest_and_show_escapes_controls() {
    let server = Server::start("list-bad", &[]);
    let sneaky = common::queue_message(
        &server,
        "alice@example.test",
        &["alice@example.test"],
        b"Subject: \x1b]0;owned\x07\x1b[2J\r\n\r\nbody\r\n",
    );
    let bad = queue_test_message(
        &server,
        "alice@example.test",
        &["alice@example.test"],
        b"b\r\n",
    );
    fs::write(
        server.spool.join(format!("queue/{bad}.env")),
        "Version: 99\n",
    )
    .unwrap();

    let out = queue(&server.spool, &["list"]);
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{sneaky} ")),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(&bad), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("postilion queue: {bad}: cannot read"))
            && stderr(&out).contains("1 message(s) could not be read"),
        "{}",
        stderr(&out)
    );

    let shown = queue_ok(&server.spool, &["show", &sneaky]);
    assert!(
        shown.contains("Subject: ^[]0;owned^G^[[2J\r\n"),
        "{shown:?}"
    );
    assert!(!shown.contains('\x1b') && !shown.contains('\x07'));
}

#[test]
fn a_bad_configuration_exits_78() {
    let dir = TempDir::new("badconf");
    let missing = dir.0.join("missing.conf");
    let bad = dir.0.join("bad.conf");
    fs::write(&bad, "retry_schedule = soon\n").unwrap();
    for config in [&missing, &bad] {
        let out = Command::new(BIN)
            .args(["queue", "list", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        assert!(
            stderr(&out).starts_with("postilion queue: "),
            "{}",
            stderr(&out)
        );
    }
}
