//! Privileges and files with the real binary, as root (as CI runs): the switch to `--user`
//! seen in `/proc/PID/status`, a missing user refused, modes and owners of what it makes, a
//! symbolic link planted in a Maildir never written through, and what in the mailbox root is
//! not a user.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::delivery::{queue_test_message, wait_for_mail, DELIVER};
use common::user::{is_root, TestUser};
use common::{base_args, flags, wait_until, Server, TempDir, BIN};

/// The values of a `Name:` line of `/proc/PID/status`, split at white space.
fn status_line(pid: u32, name: &str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name}: line in {status}"));
    line.split_whitespace().map(str::to_string).collect()
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777)
}

#[test]
fn started_as_root_it_runs_as_the_user_and_still_receives_and_delivers() {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let Some(user) = TestUser::create() else {
        eprintln!("SKIPPED: cannot create a user");
        return;
    };
    let dir = Arc::new(TempDir::new("runas"));
    // As an administrator would: the mailbox root and the users' directories are the user's.
    // The spool is not there yet: root makes it, and gives it to the user.
    base_args(&dir.0);
    user.chown(&dir.0.join("mail"));
    user.chown(&dir.0.join("mail/alice"));
    // No --allow-root: the harness adds it only to a server given no --user.
    let server = Server::start_in(
        &dir.0,
        // A short DNS time-out: the remote message's first attempt fails within seconds.
        &flags(
            DELIVER,
            &["--user", &user.name, "--smtp-command-timeout", "1s"],
        ),
        Some(Arc::clone(&dir)),
    );
    server.wait_for_log(&format!(
        "running as user {} (uid {}, gid {} {}), no supplementary groups",
        user.name, user.uid, user.gid, user.name
    ));

    // Real, effective, saved and file-system ids, all four.
    let pid = server.child.id();
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    assert_eq!(status_line(pid, "Uid"), [uid.as_str(); 4]);
    assert_eq!(status_line(pid, "Gid"), [gid.as_str(); 4]);
    assert!(status_line(pid, "Groups").is_empty());
    // No capability is left either.
    assert_eq!(status_line(pid, "CapEff"), ["0000000000000000"]);
    assert_eq!(status_line(pid, "CapPrm"), ["0000000000000000"]);

    // It receives and delivers.
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"hi\r\n",
    );
    let mail = wait_for_mail(&server.mail.join("alice"), 1);
    assert!(mail[0].ends_with("\n\nhi\n"), "{mail:?}");
    server.wait_for_log_with(&[&id, "to=<alice@example.test>", "status=sent"]);
    let new = fs::read_dir(server.mail.join("alice/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(owner_and_mode(&new), (user.uid, user.gid, 0o600));
    for sub in ["tmp", "new", "cur"] {
        let made = server.mail.join("alice").join(sub);
        assert_eq!(owner_and_mode(&made), (user.uid, user.gid, 0o700), "{sub}");
    }

    // The spool is the user's alone; a queued message too (remote mail waits: no DNS here).
    let waiting = queue_test_message(&server, "ann@client.test", &["bob@remote.test"], b"x\r\n");
    // Its envelope is written at its first change of state: the deferral (no DNS answers).
    let env = server.spool.join(format!("queue/{waiting}.env"));
    wait_until("the deferral to be recorded", || env.exists());
    for sub in ["tmp", "queue", "corrupt"] {
        let made = server.spool.join(sub);
        assert_eq!(owner_and_mode(&made), (user.uid, user.gid, 0o700), "{sub}/");
    }
    // For sendmail: the root may be passed through, maildrop/ added to, neither listed.
    let root = owner_and_mode(&server.spool);
    assert_eq!(root, (user.uid, user.gid, 0o711), "the spool root");
    let maildrop = owner_and_mode(&server.spool.join("maildrop"));
    assert_eq!(maildrop, (user.uid, user.gid, 0o1733), "maildrop/");
    for file in [
        "lock".to_string(),
        format!("queue/{waiting}.msg"),
        format!("queue/{waiting}.env"),
    ] {
        let path = server.spool.join(&file);
        assert_eq!(owner_and_mode(&path), (user.uid, user.gid, 0o600), "{file}");
    }
}

#[test]
fn started_as_root_with_a_missing_user_it_refuses_to_start() {
    if !is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let dir = TempDir::new("nouser");
    let out = Command::new(BIN)
        .arg("serve")
        .args(base_args(&dir.0))
        .args(["--user", "no-such-user-postilion"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(
            "cannot start: started as root, postilion runs as user 'no-such-user-postilion', \
             which is not in /etc/passwd"
        ) && err.contains("allow_root = yes"),
        "{err}"
    );
    assert!(!dir.0.join("spool").exists(), "nothing made, nothing bound");

    // uid 0 under another name is still root.
    let out = Command::new(BIN)
        .arg("serve")
        .args(base_args(&dir.0))
        .args(["--user", "root"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user 'root' has uid 0"));

    // Told so, it stays root, and says it.
    let server = Server::start_in(&dir.0, &["--allow-root"], None);
    server.wait_for_log("running as root (allow_root)");
    assert_eq!(status_line(server.child.id(), "Uid"), ["0", "0", "0", "0"]);
}

#[test]
fn a_symlinked_maildir_new_is_never_written_through_and_the_mail_waits() {
    let dir = Arc::new(TempDir::new("symlink"));
    let alice = dir.0.join("mail/alice");
    let elsewhere = dir.0.join("elsewhere");
    fs::create_dir_all(alice.join("tmp")).unwrap();
    fs::create_dir_all(alice.join("cur")).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    symlink(&elsewhere, alice.join("new")).unwrap();
    // Root (the harness's default here) could write anywhere: the strongest case.
    let server = Server::start_in(&dir.0, DELIVER, Some(Arc::clone(&dir)));
    let id = queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"x\r\n",
    );
    let refused = server.wait_for_log_with(&[&id, "Maildir of alice refused"]);
    assert!(
        refused.contains("/mail/alice/new is a symbolic link"),
        "{refused}"
    );
    wait_until("two refused tries", || {
        server
            .log_lines_with(&[
                &id,
                "to=<alice@example.test>",
                "status=deferred (451 4.3.0 Maildir of alice refused",
            ])
            .len()
            >= 2
    });
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through"
    );
    assert_eq!(fs::read_dir(alice.join("tmp")).unwrap().count(), 0);
    let env = server.queued_envelope(&id);
    assert!(
        env.contains("Rcpt: <alice@example.test>\nMaildir: alice\nStatus: pending\n")
            && env.contains("Last-Reply: 451 4.3.0 Maildir of alice refused: ")
            && env.contains("is a symbolic link"),
        "{env}"
    );
    // Once a person has put it right, the mail that waited is delivered.
    fs::remove_file(alice.join("new")).unwrap();
    assert_eq!(wait_for_mail(&alice, 1).len(), 1);
    wait_until("the queue to empty", || server.queue_files("").is_empty());
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn lost_found_dot_names_links_and_files_in_the_mailbox_root_are_not_users() {
    let dir = Arc::new(TempDir::new("notusers"));
    let mail = dir.0.join("mail");
    for name in ["lost+found", ".hidden", "bob"] {
        fs::create_dir_all(mail.join(name)).unwrap();
    }
    symlink(mail.join("bob"), mail.join("carol")).unwrap();
    fs::write(mail.join("dave"), b"a file").unwrap();
    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let mut c = common::Client::hello(server.addr);
    assert!(c.command("MAIL FROM:<a@client.test>").starts_with("250"));
    for rcpt in [
        "lost+found@example.test",
        "\".hidden\"@example.test",
        "carol@example.test",
        "dave@example.test",
    ] {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("550 5.1.1"), "{rcpt}: {reply}");
    }
    for rcpt in ["alice@example.test", "bob@example.test"] {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("250 2.1.5"), "{rcpt}: {reply}");
    }
}
