//! sendmail with the real binary, as root (as CI runs) with users made for the test: the
//! daemon runs as one, an ordinary user sends as another. Mail left while the daemon is
//! stopped is delivered at the next start with the user's own sender; mail dropped while it
//! runs is taken in promptly; `-t` with Bcc:; missing Date:/Message-ID:/From: added for
//! sendmail and for SMTP clients in relay_networks only; `-f` used for root only; the maildrop
//! cannot be listed; usage and spool errors are sysexits codes; hard links and files of
//! unknown owners are quarantined. sendmail refuses what the daemon would only quarantine;
//! names that cannot be moved are logged once, escaped; a file queued but not removable is
//! not taken twice; a large file is streamed, its size counted with CRLF line ends.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::delivery::{wait_for_mail, DELIVER};
use common::user::{is_root, TestUser};
use common::{list, queue_message, wait_until, Server, TempDir, BIN};

/// Runs `postilion sendmail ARGS` as `user` (root when `None`) with `input` on stdin.
fn sendmail(user: Option<&TestUser>, args: &[&str], input: &[u8]) -> Output {
    sendmail_as(user.map(|u| (u.uid, u.gid)), args, input)
}

/// Runs `postilion sendmail ARGS` as `(uid, gid)` (root when `None`) with `input` on stdin.
fn sendmail_as(ids: Option<(u32, u32)>, args: &[&str], input: &[u8]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("sendmail")
        .args(args)
        .env_remove("POSTILION_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    let mut child = command.spawn().unwrap();
    // A sendmail that refuses its flags exits before reading: the pipe may be closed.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// A configuration file naming the test spool, readable by everyone.
fn config_file(dir: &Path) -> String {
    let path = dir.join("postilion.conf");
    let text = format!(
        "spool = {}\nhostname = mx.test\n",
        dir.join("spool").display()
    );
    fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A temp dir with Maildirs for alice and bob owned by `daemon`, the daemon's flags, and
/// the configuration file for sendmail.
fn setup(name: &str, daemon: &TestUser) -> (Arc<TempDir>, String) {
    let dir = Arc::new(TempDir::new(name));
    common::base_args(&dir.0);
    fs::create_dir_all(dir.0.join("mail/bob")).unwrap();
    for user in ["", "alice", "bob"] {
        daemon.chown(&dir.0.join("mail").join(user));
    }
    let conf = config_file(&dir.0);
    (dir, conf)
}

fn users() -> Option<(TestUser, TestUser)> {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return None;
    }
    match (TestUser::create(), TestUser::create()) {
        (Some(daemon), Some(sender)) => Some((daemon, sender)),
        _ => {
            eprintln!("SKIPPED: cannot create users");
            None
        }
    }
}

fn header_value<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\n\n").next().unwrap_or("");
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn mail_dropped_while_stopped_is_delivered_at_start_with_the_users_own_sender() {
    let Some((daemon, sender)) = users() else {
        return;
    };
    let (dir, conf) = setup("dropped", &daemon);
    let run_as = ["--user", daemon.name.as_str()];
    // The daemon makes the spool, then stops.
    let mut first = Server::start_in(&dir.0, &run_as, Some(Arc::clone(&dir)));
    first.wait_for_log("started as mx.test");
    first.kill();

    // An ordinary user: -f is not its to choose. No Date:, Message-ID: or From:.
    let out = sendmail(
        Some(&sender),
        &["-C", &conf, "-f", "ceo@bank.test", "alice@example.test"],
        b"Subject: while stopped\n\nhello\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // It cannot see what is in the maildrop, nor the spool.
    for sub in ["spool/maildrop", "spool"] {
        let ls = Command::new("ls")
            .arg(dir.0.join(sub))
            .uid(sender.uid)
            .gid(sender.gid)
            .output()
            .unwrap();
        assert!(!ls.status.success(), "{sub} listed: {ls:?}");
        assert!(
            String::from_utf8_lossy(&ls.stderr).contains("Permission denied"),
            "{ls:?}"
        );
    }
    assert_eq!(list(&dir.0.join("spool/maildrop"), "").len(), 1);

    // The maildrop is rescanned only hourly: mail dropped while it runs must be noticed by
    // the watch on the directory.
    let watched = [
        "--delivery-threads",
        "2",
        "--queue-scan-interval",
        "1h",
        "--user",
        daemon.name.as_str(),
    ];
    let server = Server::start_in(&dir.0, &watched, Some(Arc::clone(&dir)));
    server.wait_for_log("started as mx.test");
    // Taken in by the pickup thread, after the start, not before it.
    server.wait_for_log("maildrop: 1 taken in at start");
    let mail = wait_for_mail(&server.mail.join("alice"), 1);
    let own = format!("{}@mx.test", sender.name);
    assert_eq!(
        header_value(&mail[0], "Return-Path"),
        Some(&*format!("<{own}>"))
    );
    assert_eq!(header_value(&mail[0], "From"), Some(own.as_str()));
    assert!(header_value(&mail[0], "Date").is_some(), "{}", mail[0]);
    let logged = server.wait_for_log("via sendmail");
    assert!(
        logged.contains(&format!(
            "from <{own}> (uid {} {})",
            sender.uid, sender.name
        )) && logged.contains("(-f ignored: not in trusted_senders)")
            && logged.contains("1 recipients"),
        "{logged}"
    );
    let id = logged.split(':').find(|w| w.contains(".M")).unwrap();
    let id = id.split_whitespace().last().unwrap();
    assert_eq!(
        header_value(&mail[0], "Message-ID"),
        Some(&*format!("<{id}@mx.test>"))
    );
    assert!(
        mail[0].contains(&format!("(Postilion, from userid {})", sender.uid)),
        "{}",
        mail[0]
    );
    assert!(mail[0].ends_with("\n\nhello\n"), "{}", mail[0]);
    assert!(list(&dir.0.join("spool/maildrop"), "").is_empty());

    // While it runs: -t with Bcc:, taken in promptly; Bcc: in neither copy; the headers the
    // message has are kept.
    let out = sendmail(
        Some(&sender),
        &["-C", &conf, "-t", "-i"],
        b"To: Alice <alice@example.test>\nBcc: bob@example.test\nDate: Mon, 1 Dec 2025 10:00:00 +0000\nMessage-ID: <own@x.test>\nSubject: t\n\n.\nbody\n",
    );
    assert!(out.status.success(), "{out:?}");
    let alice = wait_for_mail(&server.mail.join("alice"), 2);
    let bob = wait_for_mail(&server.mail.join("bob"), 1);
    assert!(!alice[1].contains("bob@"), "{}", alice[1]);
    for copy in [&alice[1], &bob[0]] {
        assert!(!copy.contains("Bcc:"), "{copy}");
        assert_eq!(header_value(copy, "Message-ID"), Some("<own@x.test>"));
        assert_eq!(
            header_value(copy, "Date"),
            Some("Mon, 1 Dec 2025 10:00:00 +0000")
        );
        // -i: the "." line is content.
        assert!(copy.ends_with("\n\n.\nbody\n"), "{copy}");
    }

    // Root may choose its sender.
    let out = sendmail(
        None,
        &[
            "-C",
            &conf,
            "-f",
            "ceo@bank.test",
            "-F",
            "The Boss",
            "alice",
        ],
        b"Subject: from root\n\nx\n.\nnot read\n",
    );
    assert!(out.status.success(), "{out:?}");
    let alice = wait_for_mail(&server.mail.join("alice"), 3);
    assert_eq!(
        header_value(&alice[2], "Return-Path"),
        Some("<ceo@bank.test>")
    );
    assert_eq!(
        header_value(&alice[2], "From"),
        Some("The Boss <ceo@bank.test>")
    );
    // Without -i a "." line ends the message.
    assert!(alice[2].ends_with("\n\nx\n"), "{}", alice[2]);
}

#[test]
fn a_bad_flag_is_64_and_a_spool_that_cannot_be_written_is_75() {
    let dir = TempDir::new("sendmail-errors");
    let conf = config_file(&dir.0);
    let out = sendmail(None, &["-C", &conf, "-Z", "alice"], b"x\n");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("sendmail: unknown option -Z"), "{err}");

    let out = sendmail(None, &["-C", &conf], b"x\n");
    assert_eq!(out.status.code(), Some(64), "no recipient: {out:?}");

    // No daemon ever made this spool.
    let out = sendmail(None, &["-C", &conf, "alice"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("sendmail: cannot write to ") && err.contains("maildrop"),
        "{err}"
    );
}

#[test]
fn a_hard_link_or_a_file_of_an_unknown_owner_is_quarantined_not_delivered() {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let server = Server::start("sendmail-quarantine", DELIVER);
    server.wait_for_log("started as mx.test");
    let maildrop = server.spool.join("maildrop");
    let file = b"Rcpt: alice@example.test\n\nSubject: x\n\nx\n";
    // A hard link to a file elsewhere (someone else's, in real life).
    let elsewhere = server.dir.join("elsewhere");
    fs::write(&elsewhere, file).unwrap();
    let linked = "1764270000.M000001P1Q0R0123abcd";
    fs::hard_link(&elsewhere, maildrop.join(linked)).unwrap();
    // Owned by a uid no user has.
    let orphan = "1764270000.M000002P1Q0R0123abcd";
    let tmp = maildrop.join(".orphan.tmp");
    fs::write(&tmp, file).unwrap();
    std::os::unix::fs::chown(&tmp, Some(3_999_999), Some(3_999_999)).unwrap();
    fs::rename(&tmp, maildrop.join(orphan)).unwrap();

    server.wait_for_log_with(&[linked, "not taken (it has 2 links)"]);
    server.wait_for_log_with(&[
        orphan,
        "not taken (owner uid 3999999 is not in /etc/passwd)",
    ]);
    wait_until("both in corrupt/", || {
        list(&server.spool.join("corrupt"), "").len() == 2
    });
    assert!(list(&maildrop, "").is_empty());
    assert!(server.queue_files("").is_empty());
    assert!(common::maildir(&server.mail.join("alice")).is_empty());
    assert_eq!(
        fs::read(&elsewhere).unwrap(),
        file,
        "the other name is untouched"
    );
}

#[test]
fn smtp_mail_from_relay_networks_gets_missing_headers_and_other_mail_does_not() {
    let message = b"Subject: bare\r\n\r\nbody\r\n";
    // 127.0.0.1 is in the default relay_networks.
    let server = Server::start("fill-local", &[]);
    let id = queue_message(&server, "ann@client.test", &["alice@example.test"], message);
    let queued = String::from_utf8(server.queued_message(&id)).unwrap();
    let (_, rest) = common::split_received(queued.as_bytes());
    let rest = String::from_utf8(rest).unwrap();
    let head = rest.split("\r\n\r\n").next().unwrap();
    assert!(head.starts_with("Subject: bare\r\nDate: "), "{rest}");
    assert!(
        head.contains(&format!(
            "\r\nMessage-ID: <{id}@mx.test>\r\nFrom: ann@client.test"
        )),
        "{rest}"
    );
    assert!(rest.ends_with("\r\n\r\nbody\r\n"), "{rest}");

    let outside = Server::start("fill-outside", &["--relay-networks", "192.0.2.0/24"]);
    let id = queue_message(
        &outside,
        "ann@client.test",
        &["alice@example.test"],
        message,
    );
    let (_, rest) = common::split_received(&outside.queued_message(&id));
    assert_eq!(rest, message, "untouched");
}

/// A spool as the daemon makes it (root `0711`, `maildrop/` `1733`) with no daemon: what
/// sendmail refuses must not be left there.
fn bare_spool(dir: &Path) {
    let maildrop = dir.join("spool/maildrop");
    fs::create_dir_all(&maildrop).unwrap();
    fs::set_permissions(dir.join("spool"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&maildrop, fs::Permissions::from_mode(0o1733)).unwrap();
}

/// The exit code and the one line on standard error.
fn refused(out: &Output) -> (Option<i32>, String) {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {out:?}");
    (out.status.code(), err)
}

#[test]
fn sendmail_refuses_what_the_daemon_would_only_quarantine() {
    let Some((daemon, sender)) = users() else {
        return;
    };
    let dir = TempDir::new("sendmail-checks");
    bare_spool(&dir.0);
    let conf = dir.0.join("postilion.conf");
    fs::write(
        &conf,
        format!(
            "spool = {}\nhostname = mx.test\nmax_recipients = 2\nmessage_size_limit = 1000\n\
             user = {}\n",
            dir.0.join("spool").display(),
            daemon.name
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let send = |ids: Option<(u32, u32)>, args: &[&str], input: &[u8]| {
        let mut all = vec!["-C", conf];
        all.extend_from_slice(args);
        sendmail_as(ids, &all, input)
    };
    let user = Some((sender.uid, sender.gid));

    // -t and no valid recipient: the daemon used to get it, and quarantine it.
    let (code, err) = refused(&send(user, &["-t"], b"To: <a b@c>\nSubject: s\n\nx\n"));
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains("no valid recipient") && err.contains("a b@c"),
        "{err}"
    );
    // One bad among good ones is not dropped in silence either.
    let (code, err) = refused(&send(user, &["-t"], b"To: bob, <a b@c>\n\nx\n"));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("bad recipient 'a b@c'"), "{err}");
    // More than max_recipients (2), as arguments or from the header.
    let (code, err) = refused(&send(user, &["a", "b", "c"], b"x\n"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("max_recipients (2)"), "{err}");
    let (code, _) = refused(&send(user, &["-t", "a"], b"To: b, c\n\nx\n"));
    assert_eq!(code, Some(65));
    // 600 bytes of bare LFs are 1200 with CRLF: over message_size_limit (1000).
    let (code, err) = refused(&send(user, &["-i", "bob"], &[b'\n'; 600]));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("1200 bytes with CRLF line ends"), "{err}");
    // A uid that /etc/passwd does not know, and the daemon's own user: EX_NOUSER.
    let (code, err) = refused(&send(Some((3_999_998, 3_999_998)), &["bob"], b"x\n"));
    assert_eq!(code, Some(67), "{err}");
    assert!(err.contains("uid 3999998 is not in /etc/passwd"), "{err}");
    let (code, err) = refused(&send(Some((daemon.uid, daemon.gid)), &["bob"], b"x\n"));
    assert_eq!(code, Some(67), "{err}");
    assert!(err.contains("the daemon's own user"), "{err}");

    assert!(list(&dir.0.join("spool/maildrop"), "").is_empty());
    // What passes the same checks is written.
    let out = send(user, &["-t", "-i"], b"To: bob, carol\n\nx\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(list(&dir.0.join("spool/maildrop"), "").len(), 1);
}

/// A file in `maildrop/` made by hand, as `uid`, with `mode`.
fn drop_file(maildrop: &Path, name: &OsStr, content: &[u8], uid: u32, mode: u32) {
    let path = maildrop.join(name);
    fs::write(&path, content).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn names_that_cannot_be_moved_are_logged_once_and_no_name_is_logged_raw() {
    let Some((daemon, sender)) = users() else {
        return;
    };
    let (dir, conf) = setup("maildrop-names", &daemon);
    let run_as = ["--user", daemon.name.as_str()];
    let mut first = Server::start_in(&dir.0, &run_as, Some(Arc::clone(&dir)));
    first.wait_for_log("started as mx.test");
    first.kill();

    let maildrop = dir.0.join("spool/maildrop");
    // A directory the daemon (not root) cannot move: renaming it needs write permission on
    // it, for its "..".
    let stuck = maildrop.join("d");
    fs::create_dir(&stuck).unwrap();
    fs::set_permissions(&stuck, fs::Permissions::from_mode(0o555)).unwrap();
    let file = b"Rcpt: alice@example.test\n\nSubject: x\n\nx\n";
    let not_utf8 = OsStr::from_bytes(b"\xff\xfe-not-utf-8");
    drop_file(&maildrop, not_utf8, file, sender.uid, 0o644);
    let forged = "zz\n2026-11-27T00:00:00Z INFO  FORGED: to=<x>, status=sent\nx";
    drop_file(&maildrop, OsStr::new(forged), file, sender.uid, 0o644);
    // The daemon's own files are not mail from a user; nor is a mode sendmail never gives.
    let own = "1764270000.M000001P1Q0R0123abcd";
    drop_file(&maildrop, OsStr::new(own), file, daemon.uid, 0o644);
    let writable = "1764270000.M000002P1Q0R0123abcd";
    drop_file(&maildrop, OsStr::new(writable), file, sender.uid, 0o664);
    // A sendmail that died a while ago, and one writing now.
    let old = maildrop.join(".1764270000.M000003P1Q0R0123abcd.tmp");
    fs::write(&old, file).unwrap();
    let two_days = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days)
        .unwrap();
    let fresh = maildrop.join(".1764270000.M000004P1Q0R0123abcd.tmp");
    fs::write(&fresh, file).unwrap();

    let watched = [
        "--delivery-threads",
        "1",
        "--queue-scan-interval",
        "1h",
        "--user",
        daemon.name.as_str(),
    ];
    let server = Server::start_in(&dir.0, &watched, Some(Arc::clone(&dir)));
    server.wait_for_log("maildrop: 0 taken in at start");
    server.wait_for_log_with(&[own, "owned by uid", "the daemon's own user"]);
    server.wait_for_log_with(&[writable, "mode 0664, not the 0644 sendmail gives"]);
    let corrupt: Vec<Vec<u8>> = fs::read_dir(dir.0.join("spool/corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    for name in [
        not_utf8.as_bytes(),
        forged.as_bytes(),
        own.as_bytes(),
        writable.as_bytes(),
    ] {
        let mut moved = b"maildrop.".to_vec();
        moved.extend_from_slice(name);
        assert!(
            corrupt.contains(&moved),
            "{:?} in corrupt/",
            OsStr::from_bytes(name)
        );
    }
    assert!(!old.exists(), "a leftover over a day old is removed");
    assert!(fresh.exists(), "a file being written is left alone");
    assert!(stuck.exists());

    // Three more looks, each for a message that is delivered.
    for n in 1..=3 {
        let out = sendmail(Some(&sender), &["-C", &conf, "alice@example.test"], b"x\n");
        assert!(out.status.success(), "{out:?}");
        wait_for_mail(&server.mail.join("alice"), n);
    }
    let lines = server.log_lines();
    let about_stuck: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"d\" not taken"))
        .collect();
    assert_eq!(about_stuck.len(), 1, "logged once: {about_stuck:#?}");
    assert!(
        about_stuck[0].contains("(not logged again while it stays)"),
        "{}",
        about_stuck[0]
    );
    // The names are escaped: nothing forged a line of its own.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("2026-11-27T00:00:00Z INFO  FORGED")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""zz\n2026-11-27T00:00:00Z INFO  FORGED"#)),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""\xFF\xFE-not-utf-8" not taken"#)),
        "{lines:#?}"
    );
    fs::set_permissions(&stuck, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_file_queued_that_cannot_be_removed_is_not_taken_twice() {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let dir = Arc::new(TempDir::new("maildrop-taken"));
    let conf = config_file(&dir.0);
    let mut first = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    first.wait_for_log("started as mx.test");
    first.kill();
    let maildrop = dir.0.join("spool/maildrop");
    let name = "1764270000.M000001P1Q0R0123abcd";
    let path = maildrop.join(name);
    drop_file(
        &maildrop,
        OsStr::new(name),
        b"Rcpt: alice@example.test\n\nSubject: once\n\nx\n",
        0,
        0o644,
    );
    // Immutable: readable, but its removal fails (EPERM, even for root).
    let immutable = Command::new("chattr").arg("+i").arg(&path).output();
    if !immutable.is_ok_and(|out| out.status.success()) {
        eprintln!("SKIPPED: no chattr +i here");
        return;
    }
    // Scans every second, delivery at once.
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    server.wait_for_log_with(&[name, "queued, but cannot remove it"]);
    // Two more messages, delivered, while scans go on every second: the first one waits,
    // queued but not delivered (delivered now, a restart could take the file in again).
    for n in 1..=2 {
        let out = sendmail(
            None,
            &["-C", &conf, "alice@example.test"],
            b"Subject: more\n\nx\n",
        );
        assert!(out.status.success(), "{out:?}");
        wait_for_mail(&server.mail.join("alice"), n);
    }
    // The second message's files go just after its Maildir copy appears.
    wait_until("only the first message left in queue/", || {
        server.queue_files("") == [format!("{name}.msg")]
    });
    assert_eq!(server.log_lines_with(&["cannot remove it"]).len(), 1);
    // Once it can be removed, it is, and then delivered, once.
    let _ = Command::new("chattr").arg("-i").arg(&path).status();
    server.wait_for_log_with(&[name, "removed at last"]);
    assert!(!path.exists());
    wait_for_mail(&server.mail.join("alice"), 3);
    wait_until("the message done with", || {
        server.queue_files("").is_empty()
    });
    let mail = common::maildir(&server.mail.join("alice"));
    let once = mail.iter().filter(|m| m.contains("Subject: once")).count();
    assert_eq!(once, 1, "{mail:#?}");
}

#[test]
fn a_large_file_is_streamed_and_its_size_counted_with_crlf() {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let server = Server::start("maildrop-large", &["--message-size-limit", "2M"]);
    server.wait_for_log("maildrop: 0 taken in at start");
    let maildrop = server.spool.join("maildrop");
    // Mixed line ends across every piece boundary, 8-bit only in a Bcc: that goes.
    let mut body = Vec::new();
    let mut expected = Vec::new();
    for n in 0..40_000 {
        let line = format!("line {n}");
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice([&b"\n"[..], b"\r", b"\r\n"][n % 3]);
        expected.extend_from_slice(line.as_bytes());
        expected.extend_from_slice(b"\r\n");
    }
    let mut file = b"Full-Name: J\xc3\xb6rg\nExtract: yes\n\n".to_vec();
    file.extend_from_slice(
        b"To: alice@example.test\nBcc: J\xc3\xb6rg <bob@example.test>\nSubject: big\n\n",
    );
    file.extend_from_slice(&body);
    let big = "1764270000.M000001P1Q0R0123abcd";
    let tmp = maildrop.join(".big");
    drop_file(&maildrop, tmp.file_name().unwrap(), &file, 0, 0o644);
    fs::rename(&tmp, maildrop.join(big)).unwrap();
    server.wait_for_log_with(&[big, "via sendmail"]);
    let queued = server.queued_message(big);
    assert!(queued.starts_with(b"Received: by mx.test (Postilion, from userid 0)"));
    // Our Received: header, folded, then the message.
    let at = queued.windows(6).position(|w| w == b"\r\nTo: ").unwrap();
    let stored = &queued[at + 2..];
    let head = b"To: alice@example.test\r\nSubject: big\r\nDate: ";
    assert!(
        stored.starts_with(head),
        "{}",
        String::from_utf8_lossy(&stored[..200])
    );
    let text = String::from_utf8_lossy(&stored[..400]).to_string();
    assert!(
        text.contains("\r\nFrom: =?UTF-8?B?SsO2cmc=?= <root@mx.test>\r\n\r\nline 0\r\n"),
        "{text}"
    );
    assert!(stored.ends_with(&expected), "the body, CRLF");
    assert!(!stored.windows(4).any(|w| w == b"Bcc:"));
    let envelope = server.queued_envelope(big);
    assert!(
        envelope.contains("Body: 7BIT"),
        "what is stored is ASCII: {envelope}"
    );

    // 1.2 MB of bare LFs: under the limit as it is, 2.4 MB with CRLF, over it.
    let mut file = b"Rcpt: alice@example.test\n\nSubject: bare\n\n".to_vec();
    file.extend(std::iter::repeat_n(b'\n', 1_200_000));
    let doubled = "1764270000.M000002P1Q0R0123abcd";
    let tmp = maildrop.join(".doubled");
    drop_file(&maildrop, tmp.file_name().unwrap(), &file, 0, 0o644);
    fs::rename(&tmp, maildrop.join(doubled)).unwrap();
    server.wait_for_log_with(&[doubled, "not taken (over message_size_limit"]);
    assert!(!server
        .spool
        .join("queue")
        .join(format!("{doubled}.msg"))
        .exists());
}
