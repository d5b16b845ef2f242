//! The command line: help, version, check-config, one-line errors with exit status 2,
//! `passwd`, and the journal log format.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{base_args, Server, TempDir, BIN};

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run postilion")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("postilion serve") && help.contains("--max-connections-per-ip"));
    let out = run(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("postilion {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(run(&[]).status.code(), Some(2));
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = TempDir::new("checkconfig");
    let file = dir.0.join("postilion.conf");
    std::fs::write(
        &file,
        // Run as root (as the tests are), check-config would look for the user `postilion`.
        "# test\nmax_recipients = 7\nlisten = 127.0.0.1:0, [::1]:0\nallow_root = yes\n",
    )
    .unwrap();
    let out = run(&[
        "check-config",
        "--config",
        file.to_str().unwrap(),
        "--max-recipients",
        "9",
        "--hostname",
        "mx.test",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("max_recipients = 9\n"),
        "flag must win: {text}"
    );
    assert!(text.contains("listen = 127.0.0.1:0, [::1]:0\n"));
    assert!(text.contains("message_size_limit = 25M\n"));
    assert!(text.contains("hostname = mx.test\n"));
    assert!(text.contains("local_domains = localhost, mx.test\n"));
    assert!(
        text.contains("user = postilion\nallow_root = yes\n"),
        "{text}"
    );
}

#[test]
fn bad_configurations_are_one_line_errors_with_status_2() {
    let dir = TempDir::new("badconfig");
    let file = dir.0.join("bad.conf");
    let cases: &[(&str, &[&str], &str)] = &[
        ("", &["--frobnicate", "1"], "frobnicate"),
        (
            "",
            &["--max-connections", "many"],
            "--max-connections: 'many' is not a positive whole number",
        ),
        (
            "",
            &["--listen", "localhost:25"],
            "--listen: 'localhost:25' is not [ROLE@]IP:PORT",
        ),
        (
            "",
            &["--listen", "mail@127.0.0.1:25"],
            "--listen: 'mail' is not a role",
        ),
        (
            "",
            &["--listen", "smtp@127.0.0.1:0, submission@127.0.0.1:0"],
            "--listen: the submission role needs tls_cert and tls_key",
        ),
        (
            "",
            &["--tls-cert", "/x.pem"],
            "--tls-cert: needs tls_key too",
        ),
        ("", &["--message-size-limit", "big"], "--message-size-limit"),
        ("", &["--relay-networks", "10.0.0.0/40"], "--relay-networks"),
        ("", &["--bare-newline", "accept"], "--bare-newline"),
        (
            "",
            &["--allow-root", "yes"],
            "unexpected argument 'yes' (--allow-root alone means yes; else --allow-root=yes)",
        ),
        (
            "",
            &["--allow-root=maybe"],
            "--allow-root: 'maybe' is not 'yes' or 'no'",
        ),
        (
            "",
            &["--user", "mail man"],
            "--user: 'mail man' is not a user name",
        ),
        ("colour = blue\n", &[], "bad.conf:1: unknown key 'colour'"),
        (
            "\n\nmax_recipients = -3\n",
            &[],
            "bad.conf:3: max_recipients: '-3'",
        ),
        (
            "no equals sign\n",
            &[],
            "bad.conf:1: expected 'key = value'",
        ),
    ];
    for (content, flags, expected) in cases {
        std::fs::write(&file, content).unwrap();
        let mut args = vec!["serve", "--config", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
    }
    let out = run(&["serve", "--config", "/nonexistent/postilion.conf"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Runs `postilion passwd ARGS` with `input` on standard input.
fn passwd(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postilion passwd");
    let mut stdin = child.stdin.take().unwrap();
    // The command may refuse before reading (a bad name): a broken pipe is then fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn passwd_prints_a_line_for_the_users_file() {
    let out = passwd(&["Alice"], b"s3cret pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let (name, hash) = line.trim_end().split_once(':').unwrap();
    assert_eq!(name, "alice", "names are kept in lower case");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{line}"
    );
    assert_eq!(hash.split('$').count(), 6, "{line}");
    assert!(!line.contains("s3cret"));
    assert_eq!(line.lines().count(), 1);
    // The hash verifies the password, checked by the argon2 crate itself.
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(hash).unwrap();
    assert!(Argon2::default()
        .verify_password(b"s3cret pass", &parsed)
        .is_ok());
    assert!(Argon2::default()
        .verify_password(b"s3cret pass\n", &parsed)
        .is_err());

    // Without a name, only the hash; a fresh salt each time; no newline at the end is fine.
    let out = passwd(&[], b"s3cret pass");
    assert!(out.status.success(), "{}", stderr(&out));
    let bare = String::from_utf8(out.stdout).unwrap();
    assert!(bare.starts_with("$argon2id$v=19$"), "{bare}");
    assert_ne!(bare.trim_end(), hash);

    // Only the first line is the password.
    let out = passwd(&["bob"], b"first\nsecond\n");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn passwd_refuses_bad_input_with_65_and_bad_usage_with_64() {
    let too_long = vec![b'x'; 2000];
    for input in [&b""[..], b"\n", b"\r\n", b"a\0b\n", &too_long] {
        let out = passwd(&["alice"], input);
        assert_eq!(out.status.code(), Some(65), "{input:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(&out).starts_with("postilion passwd: "),
            "{}",
            stderr(&out)
        );
    }
    assert!(stderr(&passwd(&[], b"\n")).contains("empty"));
    for args in [
        &["al:ice"][..],
        &["-h"],
        &["alice", "bob"],
        &["al ice"],
        &[""],
    ] {
        let out = passwd(args, b"s3cret\n");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(&out).contains("usage: postilion passwd"),
            "{}",
            stderr(&out)
        );
    }
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    assert!(help.contains("postilion passwd [NAME]"), "{help}");
}

#[test]
fn under_systemd_lines_carry_a_priority_and_no_timestamp() {
    let dir = TempDir::new("journal");
    let server = Server::spawn(
        &dir.0,
        &base_args(&dir.0),
        &[("JOURNAL_STREAM", "8:12345")],
        None,
    );
    let mut c = common::Client::hello(server.addr);
    c.command("FROB");
    let line = server.wait_for_log("reject: FROB");
    assert!(line.starts_with("<6>c"), "{line}");
    let started = server.wait_for_log("listening on");
    assert!(
        started.starts_with("<6>listening on 127.0.0.1:"),
        "{started}"
    );
}
