//! The command line: help, version, check-config, one-line errors with exit status 2,
//! and the journal log format.

mod common;

use std::process::{Command, Output};

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
        "# test\nmax_recipients = 7\nlisten = 127.0.0.1:0, [::1]:0\n",
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
