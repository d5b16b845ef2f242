//! Reply-by-reply tests of the session state machine, with no sockets.
//! Compiled only under #[cfg(test)], from the `mod tests` at the end of session.rs.

use super::*;
use proptest::prelude::*;

const CLIENT: &str = "192.0.2.7:4321";

fn config() -> Arc<SessionConfig> {
    config_with(3)
}

fn config_with(max_recipients: usize) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.example.org".into(),
        message_size_limit: 1000,
        max_recipients,
        bare_newline: BareNewline::Normalize,
        local_domains: vec!["example.org".into()],
        role: Role::Smtp,
        starttls: false,
        auth: false,
        sender_login_match: true,
    })
}

/// A session of `role` with a certificate configured (and users, on submission roles).
fn tls_session(role: Role) -> Session {
    let cfg = SessionConfig {
        role,
        starttls: true,
        auth: role != Role::Smtp,
        ..Arc::try_unwrap(config()).unwrap()
    };
    session_with(Arc::new(cfg), false)
}

fn session(may_relay: bool) -> Session {
    session_with(config(), may_relay)
}

fn session_with(config: Arc<SessionConfig>, may_relay: bool) -> Session {
    let names: HashSet<String> = ["alice".to_string()].into();
    Session::new(
        config,
        CLIENT.parse().unwrap(),
        may_relay,
        Arc::new(names),
        None,
    )
}

/// Everything a session produced: replies as wire text, committed messages, closed or not.
#[derive(Default, Debug)]
struct Transcript {
    replies: Vec<String>,
    messages: Vec<(Envelope, Vec<u8>)>,
    aborted: usize,
    closed: bool,
    /// STARTTLS handshakes done (each "succeeds" at once).
    tls_started: usize,
    /// The names credentials were checked for.
    auth_attempts: Vec<String>,
}

/// Feeds `input` in pieces of `chunk` bytes, committing every message as queued.
fn drive(session: &mut Session, input: &[u8], chunk: usize, t: &mut Transcript) {
    let mut current: Option<(Envelope, Vec<u8>)> = None;
    // An empty first piece collects the greeting even when there is no input.
    for piece in std::iter::once(&[][..]).chain(input.chunks(chunk.max(1))) {
        let mut pos = 0;
        loop {
            pos += session.handle_input(&piece[pos..]);
            let mut committed = false;
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Reply(reply) | Output::Refusal(reply, _) => {
                        let mut wire = Vec::new();
                        reply.write_to(&mut wire);
                        t.replies.push(String::from_utf8(wire).unwrap());
                    }
                    Output::MessageStart(env) => current = Some((env, Vec::new())),
                    Output::MessageData(bytes) => current.as_mut().unwrap().1.extend(bytes),
                    Output::MessageEnd => {
                        t.messages.push(current.take().unwrap());
                        session.handle_committed(Ok(Queued::for_tests("Q1")));
                        committed = true;
                    }
                    Output::MessageAbort => {
                        current = None;
                        t.aborted += 1;
                    }
                    Output::Close => t.closed = true,
                    // The one right password is "right"; every user has its own addresses.
                    Output::Authenticate { name, password } => {
                        t.auth_attempts.push(name.clone());
                        session.handle_auth_result(match password.0.as_str() {
                            "right" => AuthVerdict::Accepted(Login {
                                name,
                                addresses: vec!["team@example.org".into()],
                            }),
                            "many" => AuthVerdict::Throttled,
                            _ => AuthVerdict::Refused,
                        });
                    }
                    Output::StartTls => {
                        t.tls_started += 1;
                        session.handle_tls_started("TLSv1.3 with cipher TEST".into());
                    }
                }
            }
            if pos == piece.len() || (!committed && session.is_closed()) {
                break;
            }
        }
    }
}

fn run(input: &str) -> Transcript {
    run_with(session(true), input.as_bytes())
}

fn run_with(mut s: Session, input: &[u8]) -> Transcript {
    let mut t = Transcript::default();
    drive(&mut s, input, input.len(), &mut t);
    t
}

/// The basic and enhanced code of each reply after the greeting, e.g. "250 2.1.0".
fn codes(t: &Transcript) -> Vec<String> {
    t.replies[1..]
        .iter()
        .map(|r| {
            let last = r.lines().last().unwrap();
            last.split(' ').take(2).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

#[test]
fn greeting_comes_first() {
    let t = run("");
    assert_eq!(t.replies, ["220 mx.example.org ESMTP Postilion\r\n"]);
}

#[test]
fn ehlo_advertises_extensions() {
    let t = run("EHLO client.example\r\n");
    let ehlo = &t.replies[1];
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext}"
        );
    }
    assert!(ehlo.starts_with("250-mx.example.org greets [192.0.2.7]\r\n"));
}

#[test]
fn full_transaction_is_queued() {
    let t = run("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    assert_eq!(
        codes(&t)[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(t.replies[5], "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(t.messages.len(), 1);
    let (env, body) = &t.messages[0];
    assert_eq!(body, b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(env.reverse_path.to_string(), "<a@b.example>");
    assert_eq!(env.recipients.len(), 1);
    assert_eq!(env.protocol, "ESMTP");
    assert!(t.closed);
}

#[test]
fn mail_before_helo_is_503() {
    assert_eq!(codes(&run("MAIL FROM:<a@b>\r\n")), ["503 5.5.1"]);
    assert_eq!(codes(&run("RCPT TO:<a@b>\r\n")), ["503 5.5.1"]);
    assert_eq!(codes(&run("DATA\r\n")), ["503 5.5.1"]);
}

#[test]
fn rcpt_before_mail_is_503() {
    assert_eq!(
        codes(&run("HELO c\r\nRCPT TO:<alice@example.org>\r\n"))[1],
        "503 5.5.1"
    );
}

#[test]
fn data_without_rcpt_is_503() {
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:<>\r\nDATA\r\n"))[2],
        "503 5.5.1"
    );
    assert_eq!(codes(&run("HELO c\r\nDATA\r\n"))[1], "503 5.5.1");
}

#[test]
fn data_after_only_refused_rcpts_is_554() {
    let t = run("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n");
    assert_eq!(codes(&t)[2..], ["550 5.1.1", "554 5.5.1"]);
}

#[test]
fn nested_mail_is_503() {
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n"))[2],
        "503 5.5.1"
    );
}

#[test]
fn unknown_command_is_500() {
    assert_eq!(codes(&run("FROB\r\n")), ["500 5.5.2"]);
    assert_eq!(codes(&run("\0\0\0\r\n")), ["500 5.5.2"]);
}

#[test]
fn syntax_errors_are_501() {
    assert_eq!(codes(&run("EHLO\r\n")), ["501 5.5.4"]);
    assert_eq!(codes(&run("HELO c\r\nMAIL TO:<a@b>\r\n"))[1], "501 5.5.4");
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:<a b@c>\r\n"))[1],
        "501 5.1.7"
    );
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<@>\r\n"))[2],
        "501 5.1.3"
    );
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:a@b c@d\r\n"))[1],
        "501 5.1.7"
    );
}

#[test]
fn bare_addresses_are_accepted_in_mail_and_rcpt() {
    let t = run("EHLO printer\r\nMAIL FROM:scanner@office.example SIZE=10\r\nRCPT TO:alice@example.org\r\nRCPT TO: postmaster\r\nDATA\r\nscan\r\n.\r\n");
    assert_eq!(
        codes(&t)[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
    let (env, _) = &t.messages[0];
    assert_eq!(env.reverse_path.to_string(), "<scanner@office.example>");
    assert_eq!(env.recipients[0].path.to_string(), "<alice@example.org>");
}

#[test]
fn missing_or_ambiguous_addresses_are_still_501() {
    for (mail, code) in [
        ("MAIL FROM:", "501 5.1.7"),
        ("MAIL FROM:a@b c@d", "501 5.1.7"),
        ("MAIL FROM:Ann a@b", "501 5.1.7"),
        ("MAIL FROM:a b@c", "501 5.1.7"),
        ("MAIL FROM:\"a b\"@c", "501 5.1.7"),
        ("MAIL FROM:<a@b", "501 5.1.7"),
        ("MAIL FROM:a@b>", "501 5.1.7"),
        ("MAIL FROM:<>", "250 2.1.0"),
    ] {
        assert_eq!(
            codes(&run(&format!("EHLO c\r\n{mail}\r\n")))[1],
            code,
            "{mail}"
        );
    }
    for rcpt in [
        "RCPT TO:",
        "RCPT TO:alice@example.org bob@example.org",
        "RCPT TO:<alice@example.org",
    ] {
        let t = run(&format!("EHLO c\r\nMAIL FROM:<>\r\n{rcpt}\r\n"));
        assert_eq!(codes(&t)[2], "501 5.1.3", "{rcpt}");
    }
}

#[test]
fn unknown_parameters_are_555() {
    assert_eq!(
        codes(&run("EHLO c\r\nMAIL FROM:<> RET=HDRS\r\n"))[1],
        "555 5.5.4"
    );
    assert_eq!(
        codes(&run(
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org> NOTIFY=NEVER\r\n"
        ))[2],
        "555 5.5.4"
    );
    // ESMTP parameters after plain HELO.
    assert_eq!(
        codes(&run("HELO c\r\nMAIL FROM:<> SIZE=10\r\n"))[1],
        "555 5.5.4"
    );
}

#[test]
fn size_over_limit_at_mail_is_552() {
    assert_eq!(
        codes(&run("EHLO c\r\nMAIL FROM:<> SIZE=1001\r\n"))[1],
        "552 5.3.4"
    );
    assert_eq!(
        codes(&run("EHLO c\r\nMAIL FROM:<> SIZE=1000\r\n"))[1],
        "250 2.1.0"
    );
}

#[test]
fn message_growing_past_limit_is_read_to_end_then_552() {
    let big = "x".repeat(2000);
    let t = run(&format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n{big}\r\nRCPT TO:<x@y>\r\n.\r\nNOOP\r\n"
    ));
    assert_eq!(codes(&t)[3..], ["354 End", "552 5.3.4", "250 2.0.0"]);
    assert!(t.messages.is_empty());
    assert_eq!(t.aborted, 1);
}

#[test]
fn line_over_512_octets_is_500_5_5_6() {
    let t = run(&format!("NOOP {}\r\nNOOP\r\n", "a".repeat(600)));
    assert_eq!(codes(&t), ["500 5.5.6", "250 2.0.0"]);
    // 510 characters plus CRLF is the most there may be.
    let t = run(&format!("NOOP {}\r\n", "a".repeat(505)));
    assert_eq!(codes(&t), ["250 2.0.0"]);
    let t = run(&format!("NOOP {}\r\n", "a".repeat(506)));
    assert_eq!(codes(&t), ["500 5.5.6"]);
}

#[test]
fn huge_line_keeps_memory_bounded() {
    let mut s = session(true);
    let mut t = Transcript::default();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        drive(&mut s, &chunk, chunk.len(), &mut t);
        assert!(s.line.capacity() <= 4 * MAX_COMMAND_LINE);
    }
    drive(&mut s, b"\r\nQUIT\r\n", 100, &mut t);
    assert_eq!(codes(&t), ["500 5.5.6", "221 2.0.0"]);
}

#[test]
fn relay_denied_unless_from_relay_network() {
    let t = run_with(
        session(false),
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@elsewhere.example>\r\n",
    );
    assert_eq!(codes(&t)[2], "554 5.7.1");
    assert!(t.replies[3].contains("<x@elsewhere.example>: Relay access denied"));
    let t = run_with(
        session(true),
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@elsewhere.example>\r\n",
    );
    assert_eq!(codes(&t)[2], "250 2.1.5");
}

#[test]
fn unknown_local_user_is_550_even_for_relay_clients() {
    let t = run("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n");
    assert_eq!(codes(&t)[2], "550 5.1.1");
}

#[test]
fn postmaster_is_accepted_from_anyone() {
    let t = run_with(
        session(false),
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<POSTMASTER@example.org>\r\n",
    );
    assert_eq!(codes(&t)[2..], ["250 2.1.5", "250 2.1.5"]);
}

#[test]
fn too_many_recipients_is_452() {
    let t = run("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nRCPT TO:<c@x.example>\r\nRCPT TO:<d@x.example>\r\n");
    assert_eq!(codes(&t)[5], "452 4.5.3");
}

/// EHLO, MAIL, the RCPT commands for `rcpts`, then a one-line message by DATA.
fn transaction(rcpts: impl Iterator<Item = String>) -> String {
    let mut input = "EHLO c\r\nMAIL FROM:<>\r\n".to_string();
    for rcpt in rcpts {
        input += &format!("RCPT TO:<{rcpt}>\r\n");
    }
    input + "DATA\r\nhi\r\n.\r\n"
}

/// The replies to MAIL, to `accepted` + `over` RCPTs, to DATA and to the dot.
fn accepted_then_452(accepted: usize, over: usize) -> Vec<&'static str> {
    let mut want = vec!["250 2.1.0"];
    want.extend(std::iter::repeat_n("250 2.1.5", accepted));
    want.extend(std::iter::repeat_n("452 4.5.3", over));
    want.extend(["354 End", "250 2.0.0"]);
    want
}

#[test]
fn recipients_over_the_limit_get_452_which_is_not_an_error() {
    let input = transaction((0..150).map(|i| format!("r{i}@x.example")));
    let mut s = session_with(config_with(100), true);
    let mut t = Transcript::default();
    drive(&mut s, input.as_bytes(), input.len(), &mut t);
    // Before: the 121st reply was "421 4.7.0 too many errors".
    assert_eq!(codes(&t)[1..], accepted_then_452(100, 50));
    assert_eq!(s.errors, 0);
    assert!(!t.closed);
    assert_eq!(t.messages[0].0.recipients.len(), 100);
}

#[test]
fn a_repeated_recipient_counts_toward_the_limit_and_is_delivered_once() {
    let input = transaction((0..150).map(|_| "alice@example.org".to_string()));
    let t = run_with(session_with(config_with(100), true), input.as_bytes());
    assert_eq!(codes(&t)[1..], accepted_then_452(100, 50));
    assert_eq!(t.messages[0].0.recipients.len(), 1);
}

#[test]
fn a_client_that_never_stops_sending_rcpt_is_cut_off_past_the_overshoot_limit() {
    let over = MAX_RECIPIENT_OVERSHOOT + MAX_ERRORS as usize;
    let input = transaction((0..2 + over).map(|i| format!("r{i}@x.example")));
    let t = run_with(session_with(config_with(2), true), input.as_bytes());
    let replies = codes(&t);
    let last = replies.last().map(String::as_str);
    assert_eq!(last, Some("421 4.7.0"), "cut off at last");
    assert_eq!(replies.iter().filter(|c| *c == "452 4.5.3").count(), over);
}

#[test]
fn refused_recipients_do_not_use_up_the_limit() {
    let input = transaction(
        ["nobody@example.org", "alice@example.org", "x@y.example"]
            .map(String::from)
            .into_iter(),
    );
    let t = run_with(session_with(config_with(2), true), input.as_bytes());
    assert_eq!(
        codes(&t)[2..],
        [
            "550 5.1.1",
            "250 2.1.5",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
}

#[test]
fn utf8_address_needs_smtputf8() {
    let t = run("EHLO c\r\nMAIL FROM:<jörg@example.org>\r\n");
    assert_eq!(codes(&t)[1], "553 5.6.7");
    let t = run("EHLO c\r\nMAIL FROM:<jörg@example.org> SMTPUTF8\r\nRCPT TO:<ü@x.example>\r\n");
    assert_eq!(codes(&t)[1..], ["250 2.1.0", "250 2.1.5"]);
}

#[test]
fn rset_noop_vrfy_help_quit() {
    let t = run("EHLO c\r\nMAIL FROM:<>\r\nRSET\r\nRCPT TO:<alice@example.org>\r\nNOOP\r\nVRFY root\r\nHELP\r\nEXPN all\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        codes(&t)[1..],
        [
            "250 2.1.0",
            "250 2.0.0",
            "503 5.5.1",
            "250 2.0.0",
            "252 2.5.0",
            "214 2.0.0",
            "502 5.5.1",
            "221 2.0.0"
        ]
    );
    assert!(t.closed);
}

#[test]
fn null_sender_accepted() {
    assert_eq!(codes(&run("HELO c\r\nMAIL FROM:<>\r\n"))[1], "250 2.1.0");
}

#[test]
fn http_request_is_refused_and_closed() {
    let t = run("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(codes(&t), ["500 5.5.2"]);
    assert!(t.closed);
}

#[test]
fn too_many_errors_closes_with_421() {
    let t = run(&"FROB\r\n".repeat(MAX_ERRORS as usize + 5));
    assert_eq!(codes(&t).len(), MAX_ERRORS as usize + 1);
    assert_eq!(codes(&t).last().unwrap(), "421 4.7.0");
    assert!(t.closed);
}

#[test]
fn pipelined_commands_are_answered_in_order_across_a_commit() {
    let t = run("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\nQUIT\r\n");
    assert_eq!(
        codes(&t)[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "354 End",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(t.messages.len(), 2);
    assert!(t.messages[1].1.is_empty());
}

/// Runs `input` whole, then cut into chunks of every size: replies and messages must not
/// change. Returns the whole run.
fn run_split_everywhere(input: &[u8]) -> Transcript {
    let whole = run_with(session(true), input);
    for chunk in 1..input.len() {
        let mut s = session(true);
        let mut t = Transcript::default();
        drive(&mut s, input, chunk, &mut t);
        assert_eq!(t.replies, whole.replies, "chunk {chunk}");
        assert_eq!(t.messages, whole.messages, "chunk {chunk}");
    }
    whole
}

#[test]
fn one_dialog_split_at_every_byte_gives_the_same_replies() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nA: b\r\n\r\n..dot\r\nbare\nlf\r\n.\r\nQUIT\r\n";
    let whole = run_split_everywhere(input);
    assert_eq!(whole.messages[0].1, b"A: b\r\n\r\n.dot\r\nbare\r\nlf\r\n");
}

#[test]
fn smuggled_second_message_stays_inside_the_first() {
    for vector in [
        "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r", "\n.\r", "\r.\r\n",
    ] {
        let input = format!("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nfirst{vector}MAIL FROM:<evil@x.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n");
        let t = run(&input);
        assert_eq!(t.messages.len(), 1, "{vector:?}");
        assert!(t.messages[0].1.windows(8).any(|w| w == b"smuggled"));
        assert_eq!(
            codes(&t)[3..],
            ["354 End", "250 2.0.0", "221 2.0.0"],
            "{vector:?}"
        );
    }
}

#[test]
fn bare_newline_reject_mode_refuses_the_message() {
    let cfg = SessionConfig {
        bare_newline: BareNewline::Reject,
        ..Arc::try_unwrap(config()).unwrap()
    };
    let s = Session::new(
        Arc::new(cfg),
        CLIENT.parse().unwrap(),
        true,
        Arc::new(HashSet::new()),
        None,
    );
    let t = run_with(
        s,
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\na\nb\r\n.\r\n",
    );
    assert_eq!(codes(&t)[3..], ["354 End", "550 5.6.0"]);
    assert!(t.messages.is_empty());
}

#[test]
fn commit_failure_is_451_never_250() {
    let mut s = session(true);
    s.handle_input(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    let mut replies = Vec::new();
    while let Some(out) = s.poll_output() {
        if let Output::Reply(r) | Output::Refusal(r, _) = out {
            replies.push(r.code);
        }
    }
    let err = SpoolError::Io {
        action: "write",
        path: "/x".into(),
        source: std::io::ErrorKind::StorageFull.into(),
    };
    s.handle_committed(Err(err));
    match s.poll_output() {
        Some(Output::Refusal(r, command)) => {
            assert_eq!((r.code, r.enhanced), (451, Some("4.3.0")));
            assert_eq!(command, "DATA");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(replies, [220, 250, 250, 250, 354]);
}

#[test]
fn eof_mid_data_aborts_the_message() {
    let mut s = session(true);
    let mut t = Transcript::default();
    drive(
        &mut s,
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\npartial",
        1000,
        &mut t,
    );
    s.handle_eof();
    assert_eq!(s.poll_output(), Some(Output::MessageAbort));
    assert_eq!(s.poll_output(), Some(Output::Close));
}

#[test]
fn timeout_is_421_4_4_2_and_data_uses_the_data_timeout() {
    let mut s = session(true);
    let mut t = Transcript::default();
    assert_eq!(s.timeout(), Timeout::Command);
    drive(
        &mut s,
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n",
        1000,
        &mut t,
    );
    assert_eq!(s.timeout(), Timeout::Data);
    s.handle_timeout();
    assert_eq!(s.poll_output(), Some(Output::MessageAbort));
    assert!(
        matches!(s.poll_output(), Some(Output::Reply(r)) if r.code == 421 && r.enhanced == Some("4.4.2"))
    );
    assert_eq!(s.poll_output(), Some(Output::Close));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any byte stream, in any chunking: no panic, buffers bounded, replies well-formed.
    #[test]
    fn random_bytes_never_panic_and_stay_bounded(
        prefix in prop::sample::select(vec![
            "",
            "EHLO c\r\n",
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n",
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 100\r\n",
        ]),
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..300,
    ) {
        let mut s = session(true);
        let mut t = Transcript::default();
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        drive(&mut s, &input, chunk, &mut t);
        prop_assert!(s.line.len() <= MAX_COMMAND_LINE);
        prop_assert!(s.outputs.is_empty());
        for reply in &t.replies {
            prop_assert!(reply.ends_with("\r\n"));
            let code: u16 = reply[..3].parse().unwrap();
            prop_assert!((200..600).contains(&code));
        }
        for (_, body) in &t.messages {
            prop_assert!(body.len() as u64 <= config().message_size_limit);
        }
    }
}

#[test]
fn ehlo_advertises_chunking() {
    assert!(run("EHLO c\r\n").replies[1].contains("250-CHUNKING\r\n"));
}

#[test]
fn bdat_chunks_make_one_message_without_dot_handling() {
    let t = run("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nBDAT 7\r\n.a\r\nb\r\rBDAT 5 LAST\r\n\n.\r\nxQUIT\r\n");
    assert_eq!(
        codes(&t)[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(t.replies[4], "250 2.0.0 Ok: 7 octets received\r\n");
    assert_eq!(t.replies[5], "250 2.0.0 Ok: queued as Q1\r\n");
    // CR at the end of the first chunk + LF at the start of the second is one CRLF; the
    // bare CR before it became CRLF; the dots are content; a final line end is added.
    assert_eq!(t.messages[0].1, b".a\r\nb\r\n\r\n.\r\nx\r\n");
}

#[test]
fn bdat_zero_last_ends_the_message() {
    let t = run("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 4\r\nabcdBDAT 0 LAST\r\n");
    assert_eq!(codes(&t)[3..], ["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.messages[0].1, b"abcd\r\n");
}

#[test]
fn bdat_out_of_order_is_refused_and_its_octets_skipped() {
    // The chunk text looks like commands; it must not be read as any.
    let t = run("BDAT 10\r\nQUIT\r\nQUITEHLO c\r\nMAIL FROM:<>\r\nBDAT 6 LAST\r\nRSET\r\nNOOP\r\n");
    assert_eq!(
        codes(&t),
        [
            "503 5.5.1",
            "250 HELP",
            "250 2.1.0",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    assert!(!t.closed);
    assert!(t.messages.is_empty());
}

#[test]
fn data_rcpt_and_mail_are_refused_inside_bdat() {
    let t = run("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 1\r\nxDATA\r\nRCPT TO:<postmaster>\r\nMAIL FROM:<>\r\nBDAT 1 LAST\r\ny");
    assert_eq!(
        codes(&t)[3..],
        [
            "250 2.0.0",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    assert_eq!(t.messages[0].1, b"xy\r\n");
}

#[test]
fn rset_in_bdat_discards_the_message() {
    let t = run(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 3\r\nabcRSET\r\nBDAT 1 LAST\r\nz",
    );
    assert_eq!(codes(&t)[3..], ["250 2.0.0", "250 2.0.0", "503 5.5.1"]);
    assert_eq!(t.aborted, 1);
    assert!(t.messages.is_empty());
}

#[test]
fn bdat_past_the_limit_refuses_every_later_chunk() {
    let big = "x".repeat(900);
    let t = run(&format!("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 900\r\n{big}BDAT 900\r\n{big}BDAT 900\r\n{big}BDAT 2 LAST\r\nzzNOOP\r\n"));
    assert_eq!(
        codes(&t)[3..],
        [
            "250 2.0.0",
            "552 5.3.4",
            "552 5.3.4",
            "552 5.3.4",
            "250 2.0.0"
        ]
    );
    assert_eq!(t.aborted, 1);
    assert!(t.messages.is_empty());
}

#[test]
fn a_refused_bdat_message_is_one_error_however_many_chunks() {
    let chunk = format!("BDAT 600\r\n{}", "x".repeat(600));
    let input = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n{}BDAT 1 LAST\r\nzNOOP\r\n",
        chunk.repeat(40)
    );
    let mut s = session(true);
    let mut t = Transcript::default();
    drive(&mut s, input.as_bytes(), input.len(), &mut t);
    // The second chunk passes the limit: it and every later one get the refusal.
    let mut want = vec!["250 2.0.0"];
    want.extend(std::iter::repeat_n("552 5.3.4", 40));
    want.push("250 2.0.0");
    assert_eq!(codes(&t)[3..], want);
    assert_eq!(s.errors, 1);
    assert_eq!(t.aborted, 1);
    assert!(t.messages.is_empty() && !t.closed);
}

#[test]
fn bdat_without_valid_recipients_is_one_error_however_many_chunks() {
    let input = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@example.org>\r\n{}BDAT 3 LAST\r\nxyzNOOP\r\n",
        "BDAT 3\r\nxyz".repeat(30)
    );
    let mut s = session(true);
    let mut t = Transcript::default();
    drive(&mut s, input.as_bytes(), input.len(), &mut t);
    let mut want = vec!["550 5.1.1"];
    want.extend(std::iter::repeat_n("554 5.5.1", 31));
    want.push("250 2.0.0");
    assert_eq!(codes(&t)[2..], want);
    assert_eq!(s.errors, 2);
    assert!(t.messages.is_empty() && !t.closed);
}

#[test]
fn bdat_dialog_split_at_every_byte_gives_the_same_result() {
    let input = b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\n\nd.QUIT\r\n";
    let whole = run_split_everywhere(input);
    assert_eq!(whole.messages[0].1, b"ab\r\nc\r\nd.\r\n");
}

/// Feeds each piece as one read of its own (what follows STARTTLS in one read is dropped).
fn run_pieces(mut s: Session, pieces: &[&str]) -> Transcript {
    let mut t = Transcript::default();
    for piece in pieces {
        drive(&mut s, piece.as_bytes(), piece.len(), &mut t);
    }
    t
}

#[test]
fn starttls_is_offered_only_with_a_certificate_and_only_before_tls() {
    let t = run("EHLO c\r\n");
    assert!(!t.replies[1].contains("STARTTLS"));
    let t = run_pieces(
        tls_session(Role::Smtp),
        &["EHLO c\r\nSTARTTLS\r\n", "EHLO c\r\n", "STARTTLS\r\n"],
    );
    assert!(
        t.replies[1].contains("250 STARTTLS\r\n"),
        "{}",
        t.replies[1]
    );
    assert_eq!(codes(&t)[1], "220 2.0.0");
    assert_eq!(t.tls_started, 1);
    assert!(!t.replies[3].contains("STARTTLS"), "{}", t.replies[3]);
    assert_eq!(codes(&t)[3], "503 5.5.1", "a second STARTTLS");
    let t = run("EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(codes(&t)[1], "502 5.5.1", "no certificate, no STARTTLS");
}

#[test]
fn commands_pipelined_behind_starttls_are_never_executed() {
    // CVE-2011-0411: one write with STARTTLS and a MAIL behind it.
    let t = run_pieces(
        tls_session(Role::Smtp),
        &[
            "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<alice@exa",
            // After the handshake the session starts clean: no half line, no HELO.
            "mple.org>\r\n",
            "MAIL FROM:<a@b.example>\r\n",
        ],
    );
    assert_eq!(
        codes(&t),
        ["250 STARTTLS", "220 2.0.0", "500 5.5.2", "503 5.5.1"]
    );
    assert_eq!(t.tls_started, 1);
}

#[test]
fn starttls_needs_ehlo_and_no_transaction() {
    let t = run_with(tls_session(Role::Smtp), b"STARTTLS\r\n");
    assert_eq!(codes(&t), ["503 5.5.1"]);
    let t = run_with(
        tls_session(Role::Smtp),
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n",
    );
    assert_eq!(codes(&t)[2], "503 5.5.1");
    assert_eq!(t.tls_started, 0);
}

#[test]
fn submission_wants_starttls_before_mail() {
    let t = run_pieces(
        tls_session(Role::Submission),
        &[
            "EHLO c\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n",
            "EHLO c\r\nMAIL FROM:<a@b.example>\r\n",
        ],
    );
    assert_eq!(codes(&t)[1], "530 5.7.0");
    assert_eq!(codes(&t)[2], "220 2.0.0");
    // Over TLS, still no MAIL before AUTH.
    assert_eq!(codes(&t)[4], "530 5.7.0");
}

#[test]
fn mail_over_tls_is_esmtps() {
    let t = run_pieces(
        tls_session(Role::Smtp),
        &[
            "EHLO c\r\nSTARTTLS\r\n",
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n",
        ],
    );
    assert_eq!(t.messages[0].0.protocol, "ESMTPS");
}

/// A submission session after EHLO and STARTTLS, then `pieces`.
fn submission(pieces: &[&str]) -> Transcript {
    let mut all = vec!["EHLO c\r\nSTARTTLS\r\n", "EHLO c\r\n"];
    all.extend_from_slice(pieces);
    run_pieces(tls_session(Role::Submission), &all)
}

fn b64(text: &str) -> String {
    crate::auth::base64(text.as_bytes())
}

#[test]
fn submission_wants_tls_then_auth_before_mail() {
    let t = run_pieces(
        tls_session(Role::Submission),
        &["EHLO c\r\nAUTH PLAIN\r\nMAIL FROM:<alice@example.org>\r\n"],
    );
    assert_eq!(codes(&t)[1..], ["530 5.7.0", "530 5.7.0"]);
    assert!(!t.replies[1].contains("AUTH"), "AUTH offered before TLS");
    let t = submission(&["MAIL FROM:<alice@example.org>\r\n"]);
    assert!(
        t.replies[3].contains("AUTH PLAIN LOGIN"),
        "{}",
        t.replies[3]
    );
    assert_eq!(codes(&t)[3], "530 5.7.0", "MAIL before AUTH");
}

#[test]
fn auth_plain_and_login_then_relay_anywhere() {
    let plain = format!("AUTH PLAIN {}\r\n", b64("\0alice\0right"));
    let t = submission(&[
        &plain,
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nhi\r\n.\r\n",
    ]);
    assert_eq!(
        codes(&t)[3..],
        [
            "235 2.7.0",
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
    let envelope = &t.messages[0].0;
    assert_eq!(envelope.auth.as_deref(), Some("alice"));
    assert_eq!(envelope.protocol, "ESMTPSA");
    let login = [
        "AUTH LOGIN\r\n".to_string(),
        format!("{}\r\n", b64("alice")),
        format!("{}\r\n", b64("right")),
    ];
    let t = submission(&[&login[0], &login[1], &login[2], "AUTH PLAIN\r\n"]);
    assert_eq!(t.replies[4], "334 VXNlcm5hbWU6\r\n");
    assert_eq!(t.replies[5], "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(codes(&t)[5..], ["235 2.7.0", "503 5.5.1"]);
    assert_eq!(t.auth_attempts, ["alice"]);
}

#[test]
fn a_wrong_password_is_535_and_relaying_stays_closed() {
    let wrong = format!("AUTH PLAIN {}\r\n", b64("\0alice\0wrong"));
    let t = submission(&[&wrong, "MAIL FROM:<alice@example.org>\r\n"]);
    assert_eq!(codes(&t)[3..], ["535 5.7.8", "530 5.7.0"]);
    let many = format!("AUTH PLAIN {}\r\n", b64("\0alice\0many"));
    assert_eq!(codes(&submission(&[&many]))[3], "454 4.7.0");
    // On the smtp role, no AUTH without smtp_auth; relaying needs a listed network.
    let t = run_with(
        session(false),
        b"EHLO c\r\nAUTH PLAIN\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n",
    );
    assert_eq!(codes(&t)[1..], ["503 5.5.1", "250 2.1.0", "554 5.7.1"]);
}

#[test]
fn auth_over_plaintext_on_the_smtp_role_is_538() {
    let cfg = SessionConfig {
        starttls: true,
        auth: true,
        ..Arc::try_unwrap(config()).unwrap()
    };
    let t = run_with(
        session_with(Arc::new(cfg), false),
        b"EHLO c\r\nAUTH PLAIN\r\n",
    );
    assert_eq!(codes(&t)[1], "538 5.7.11");
    assert!(!t.replies[1].contains("AUTH"));
}

#[test]
fn sender_login_match_refuses_a_forged_sender() {
    let plain = format!("AUTH PLAIN {}\r\n", b64("\0alice\0right"));
    let t = submission(&[
        &plain,
        "MAIL FROM:<bob@example.org>\r\nMAIL FROM:<Alice@Example.ORG>\r\nRSET\r\nMAIL FROM:<team@example.org>\r\nRSET\r\nMAIL FROM:<>\r\n",
    ]);
    assert_eq!(
        codes(&t)[4..],
        [
            "553 5.7.1",
            "250 2.1.0",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.0.0",
            "250 2.1.0"
        ]
    );
}

#[test]
fn auth_exchanges_can_be_cancelled_and_garbage_is_refused() {
    let t = submission(&[
        "AUTH LOGIN\r\n",
        "*\r\n",
        "AUTH PLAIN !!!\r\n",
        "AUTH CRAM-MD5\r\n",
    ]);
    assert_eq!(codes(&t)[4..], ["501 5.0.0", "501 5.5.2", "504 5.5.4"]);
    assert!(t.auth_attempts.is_empty());
}

#[test]
fn auth_lines_may_be_long_and_are_never_logged() {
    let password = "p".repeat(2000);
    let long = format!("AUTH PLAIN {}\r\n", b64(&format!("\0alice\0{password}")));
    let mut s = tls_session(Role::Submission);
    let mut t = Transcript::default();
    for piece in ["EHLO c\r\nSTARTTLS\r\n", "EHLO c\r\n", &long] {
        drive(&mut s, piece.as_bytes(), piece.len(), &mut t);
    }
    assert_eq!(codes(&t)[3], "535 5.7.8", "a long line is read whole");
    assert!(
        !s.last_command().contains(&b64("\0alice")[..4]),
        "{}",
        s.last_command()
    );
    assert_eq!(s.last_command(), "AUTH PLAIN ********");
}

#[test]
fn auth_lines_are_masked_whatever_the_white_space_and_split() {
    let mut s = session(true);
    let mut t = Transcript::default();
    drive(
        &mut s,
        b"EHLO c\r\nAUTH\tPLAIN\tAGFsaWNlAHNlY3JldA==\r\n",
        100,
        &mut t,
    );
    assert_eq!(s.last_command(), "AUTH PLAIN ********");
    drive(&mut s, b"c2VjcmV0\r\n", 100, &mut t);
    assert_eq!(s.last_command(), "(not a command, 8 octets)");
    drive(&mut s, b"PASS hunter2\r\n", 100, &mut t);
    assert_eq!(s.last_command(), "PASS (8 more octets)");
    drive(&mut s, b"noop\r\n", 100, &mut t);
    assert_eq!(s.last_command(), "noop");
    // An AUTH line split by a read inside its first five octets still gets 12288.
    let long = format!("TH PLAIN {}\r\n", "A".repeat(2000));
    let mut s = tls_session(Role::Submission);
    let mut t = Transcript::default();
    for piece in ["EHLO c\r\nSTARTTLS\r\n", "EHLO c\r\nAU", &long] {
        drive(&mut s, piece.as_bytes(), piece.len(), &mut t);
    }
    assert_eq!(
        codes(&t)[3],
        "501 5.5.2",
        "read whole, then refused as bad base64"
    );
}

#[test]
fn mail_from_with_an_auth_parameter_is_accepted() {
    let t = run("EHLO c\r\nMAIL FROM:<a@b.example> AUTH=<>\r\n");
    assert_eq!(codes(&t)[1], "250 2.1.0");
}
