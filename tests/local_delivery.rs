//! Local delivery with the real binary: Maildirs, aliases, retries, expiry, bounces, restarts
//! and files dropped into queue/ by other programs.

mod common;

use std::fs;
use std::sync::Arc;

use common::delivery::{queue_test_message, wait_for_mail, DELIVER};
use common::{flags, maildir, wait_until, Server, TempDir};

/// Waits for the delivery log line of one recipient with the given status text.
fn wait_for_status(server: &Server, id: &str, rcpt: &str, status: &str) {
    server.wait_for_log_with(&[
        &format!("{id}: to=<{rcpt}>, relay=local, delay="),
        &format!("status={status}"),
    ]);
}

#[test]
fn local_user_gets_the_message_in_maildir_new_and_the_queue_empties() {
    let server = Server::start("maildir", DELIVER);
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"hello alice\r\n..dot\r\n",
    );
    let mail = wait_for_mail(&server.mail.join("alice"), 1);
    let text = &mail[0];
    assert!(text.starts_with("Return-Path: <ann@client.test>\nDelivered-To: alice@example.test\nReceived: from client.test"), "{text}");
    // From 127.0.0.1, in relay_networks: what the message lacked is added.
    let added =
        format!("\nMessage-ID: <{id}@mx.test>\nFrom: ann@client.test\n\nhello alice\n.dot\n");
    assert!(
        text.contains("\nSubject: test\nDate: ") && text.ends_with(&added),
        "{text:?}"
    );
    assert!(!text.contains('\r'));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    wait_for_status(&server, &id, "alice@example.test", "sent");
    assert!(server.mail.join("alice/cur").is_dir() && server.mail.join("alice/tmp").is_dir());
}

#[test]
fn aliases_reach_users_and_queue_remote_targets_on_the_same_message() {
    let dir = Arc::new(TempDir::new("aliases"));
    let aliases = dir.0.join("aliases");
    fs::write(
        &aliases,
        "# test aliases\nstaff: alice, bob\nbob: bob, bob@remote.test\n",
    )
    .unwrap();
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let aliases_arg = aliases.to_string_lossy().into_owned();
    let server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--aliases", &aliases_arg]),
        Some(Arc::clone(&dir)),
    );
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["staff@example.test"],
        b"to the staff\r\n",
    );
    assert!(wait_for_mail(&server.mail.join("alice"), 1)[0].contains("to the staff"));
    assert!(wait_for_mail(&server.mail.join("bob"), 1)[0].contains("to the staff"));
    // Each target is a recipient of the same message with a state of its own; bob's remote
    // copy waits for remote delivery.
    wait_until("the targets' states in the envelope", || {
        let env = server.queued_envelope(&id);
        env.contains("Rcpt: <bob@example.test>\nMaildir: bob\nStatus: delivered\n")
            && env.contains("Rcpt: <bob@remote.test>\nStatus: pending\nAttempts: ")
    });
    let env = server.queued_envelope(&id);
    assert!(
        env.contains("Rcpt: <staff@example.test>\nStatus: expanded\nAttempts: 1\n")
            && env.contains("Rcpt: <alice@example.test>\nMaildir: alice\nStatus: delivered\n"),
        "{env}"
    );
}

/// Parses a DSN enough to check it: its parts and fields.
fn check_dsn(dsn: &str, final_recipient: &str, status: &str) {
    assert!(dsn.contains("Return-Path: <>\n"), "{dsn}");
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{dsn}"
    );
    let boundary = dsn
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let parts: Vec<&str> = dsn.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "preamble, three parts, epilogue: {dsn}");
    assert!(parts[1].contains("Content-Type: text/plain"));
    assert!(parts[2].contains("Content-Type: message/delivery-status"));
    assert!(
        parts[2].contains(&format!(
            "Final-Recipient: rfc822; {final_recipient}\nAction: failed\nStatus: {status}\n"
        )),
        "{}",
        parts[2]
    );
    assert!(parts[3].contains("Content-Type: text/rfc822-headers"));
    assert!(parts[3].contains("Subject: test"));
    assert_eq!(parts[4], "--\n");
}

#[test]
fn a_recipient_gone_at_delivery_bounces_to_the_local_sender() {
    let dir = Arc::new(TempDir::new("bounce"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    // Accept while carol exists, with delivery paused; remove her; then deliver.
    fs::create_dir_all(dir.0.join("mail/carol")).unwrap();
    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let id = queue_test_message(
        &server,
        "bob@example.test",
        &["carol@example.test", "alice@example.test"],
        b"for two\r\n",
    );
    drop(server);
    fs::remove_dir(dir.0.join("mail/carol")).unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    assert_eq!(wait_for_mail(&server.mail.join("alice"), 1).len(), 1);
    let dsn = &wait_for_mail(&server.mail.join("bob"), 1)[0];
    check_dsn(dsn, "carol@example.test", "5.1.1");
    assert!(dsn.contains(&format!("X-Postilion-Queue-ID: {id}")));
    server.wait_for_log(&format!(
        "{id}: to=<carol@example.test>, relay=local, delay="
    ));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}

#[test]
fn a_failed_bounce_is_logged_and_dropped_with_no_notice() {
    let dir = Arc::new(TempDir::new("doublebounce"));
    fs::create_dir_all(dir.0.join("mail/carol")).unwrap();
    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let id = queue_test_message(&server, "", &["carol@example.test"], b"a bounce\r\n");
    drop(server);
    fs::remove_dir(dir.0.join("mail/carol")).unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    server.wait_for_log(&format!(
        "{id}: undeliverable mail from <> to <carol@example.test> dropped"
    ));
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert!(maildir(&server.mail.join("postmaster")).is_empty());
    assert!(!server
        .log_lines()
        .iter()
        .any(|l| l.contains("notification")));
}

#[test]
fn a_failing_maildir_is_retried_then_delivered_exactly_once() {
    let server = Server::start("retry", DELIVER);
    // new/ is a file: the Maildir cannot be written until it is fixed.
    let alice = server.mail.join("alice");
    fs::write(alice.join("new"), b"in the way").unwrap();
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"try again\r\n",
    );
    wait_for_status(&server, &id, "alice@example.test", "deferred (451 4.3.0");
    wait_until("the deferral in the envelope", || {
        let env = server.queued_envelope(&id);
        env.contains("Status: pending\nAttempts: ")
            && env.contains("\nNext-Attempt: ")
            && env.contains("Last-Reply: 451 4.3.0 cannot write to the Maildir of alice")
    });
    fs::remove_file(alice.join("new")).unwrap();
    assert_eq!(wait_for_mail(&alice, 1).len(), 1);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(maildir(&alice).len(), 1);
}

#[test]
fn mail_past_the_queue_lifetime_bounces_with_4_4_7() {
    let dir = Arc::new(TempDir::new("expire"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--max-queue-lifetime", "1s"]),
        Some(Arc::clone(&dir)),
    );
    fs::write(dir.0.join("mail/alice/new"), b"in the way").unwrap();
    queue_test_message(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        b"too late\r\n",
    );
    let dsn = &wait_for_mail(&server.mail.join("bob"), 1)[0];
    check_dsn(dsn, "alice@example.test", "4.4.7");
    assert!(dsn.contains("message expired"));
}

fn server_queue_files(queue: &std::path::Path) -> Vec<String> {
    common::list(queue, "")
}

#[test]
fn queued_mail_is_delivered_after_a_restart_and_files_dropped_in_queue_are_found() {
    let dir = Arc::new(TempDir::new("persist"));
    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"queued before start\r\n",
    );
    drop(server);
    // Take the message out of the queue (one file: it carries its envelope), and put it back
    // while the new server runs.
    let queue = dir.0.join("spool/queue");
    let aside = dir.0.join("aside");
    fs::create_dir_all(&aside).unwrap();
    assert_eq!(server_queue_files(&queue), [format!("{id}.msg")]);
    fs::rename(
        queue.join(format!("{id}.msg")),
        aside.join(format!("{id}.msg")),
    )
    .unwrap();
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    let second = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"queued while running\r\n",
    );
    assert_eq!(wait_for_mail(&server.mail.join("alice"), 1).len(), 1);
    fs::rename(
        aside.join(format!("{id}.msg")),
        queue.join(format!("{id}.msg")),
    )
    .unwrap();
    server.wait_for_log(&format!("{id}: found in queue/ by the periodic scan"));
    let mail = wait_for_mail(&server.mail.join("alice"), 2);
    assert!(mail.iter().any(|m| m.contains("queued before start")));
    assert!(mail.iter().any(|m| m.contains("queued while running")));
    assert_ne!(id, second);
}

#[test]
fn a_delay_warning_is_sent_once_and_the_mail_still_goes_through() {
    let dir = Arc::new(TempDir::new("delaywarn"));
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    let server = Server::start_in(
        &dir.0,
        &flags(DELIVER, &["--delay-warning-time", "1s"]),
        Some(Arc::clone(&dir)),
    );
    let alice = server.mail.join("alice");
    fs::write(alice.join("new"), b"in the way").unwrap();
    let id = queue_test_message(
        &server,
        "bob@example.test",
        &["alice@example.test"],
        b"slow\r\n",
    );
    let warning = &wait_for_mail(&server.mail.join("bob"), 1)[0];
    assert!(
        warning.contains("Subject: Delayed Mail (still being retried)"),
        "{warning}"
    );
    assert!(
        warning.contains(
            "Final-Recipient: rfc822; alice@example.test\nAction: delayed\nStatus: 4.3.0\n"
        ),
        "{warning}"
    );
    assert!(warning.contains("you do not need to send it again"));
    wait_until("the warning recorded", || {
        server.queued_envelope(&id).contains("Delay-Warned: yes\n")
    });
    fs::remove_file(alice.join("new")).unwrap();
    assert_eq!(wait_for_mail(&alice, 1).len(), 1);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(
        maildir(&server.mail.join("bob")).len(),
        1,
        "one warning only"
    );
}

#[test]
fn a_user_directory_is_used_as_named_whatever_the_case_of_the_address() {
    let server = Server::start("usercase", DELIVER);
    fs::create_dir(server.mail.join("Carol")).unwrap();
    queue_test_message(
        &server,
        "ann@client.test",
        &["CAROL@example.test"],
        b"case\r\n",
    );
    assert_eq!(wait_for_mail(&server.mail.join("Carol"), 1).len(), 1);
    assert!(
        !server.mail.join("carol").exists(),
        "no second Maildir for the same user"
    );
}

/// The names of the server's threads (`/proc/PID/task/*/comm`).
fn thread_names(server: &Server) -> Vec<String> {
    let tasks = format!("/proc/{}/task", server.child.id());
    fs::read_dir(tasks)
        .unwrap()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn delivery_threads(server: &Server) -> usize {
    thread_names(server)
        .iter()
        .filter(|name| name.starts_with("delivery-"))
        .count()
}

#[test]
fn an_idle_server_has_no_delivery_thread_until_mail_comes() {
    let server = Server::start("lazy-workers", DELIVER);
    // The scheduler is started last, after what the server would start for delivery.
    wait_until("the scheduler thread", || {
        thread_names(&server).iter().any(|name| name == "scheduler")
    });
    assert_eq!(delivery_threads(&server), 0, "{:?}", thread_names(&server));
    queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"1\r\n",
    );
    wait_for_mail(&server.mail.join("alice"), 1);
    assert_eq!(delivery_threads(&server), 1, "{:?}", thread_names(&server));
}

#[test]
fn no_more_delivery_threads_start_than_delivery_threads_says() {
    // DELIVER says 2.
    let server = Server::start("lazy-workers-cap", DELIVER);
    let mut most = 0;
    for n in 0..8 {
        let body = format!("message {n}\r\n");
        queue_test_message(
            &server,
            "ann@client.test",
            &["alice@example.test"],
            body.as_bytes(),
        );
        most = most.max(delivery_threads(&server));
    }
    wait_until("every message delivered", || {
        most = most.max(delivery_threads(&server));
        maildir(&server.mail.join("alice")).len() == 8
    });
    assert!((1..=2).contains(&most), "{most} delivery threads");
    wait_until("the queue to empty", || server.queue_files("").is_empty());
}
