//! SMTP smuggling (Dec 2023) over the wire: a message carrying a bare-line-end variant of the
//! terminator and a hidden second transaction yields exactly one queued message.

mod common;

use common::{queue_id, split_received, Client, Server};

const VARIANTS: &[(&str, &[u8])] = &[
    ("LF.LF", b"\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("LF.CR", b"\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
];

#[test]
fn each_variant_yields_exactly_one_message() {
    let server = Server::start("smuggling", &[]);
    for (name, variant) in VARIANTS {
        let before = server.queue_files(".msg").len();
        let mut c = Client::hello(server.addr);
        c.start_data();
        let mut data = b"Subject: first\r\n\r\nfirst".to_vec();
        data.extend_from_slice(variant);
        data.extend_from_slice(
            b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\nNOOP\r\n",
        );
        c.send(&data);
        let id = queue_id(&c.expect("250 2.0.0"));
        // The very next reply answers our NOOP: nothing in between was taken as a command.
        c.expect("250 2.0.0 Ok");
        assert_eq!(server.queue_files(".msg").len(), before + 1, "{name}");
        let (_, body) = split_received(&server.queued_message(&id));
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("Subject: smuggled"), "{name}: {text:?}");
        // Stored with CRLF line ends only.
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(body[i - 1], b'\r', "{name}: bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(body.get(i + 1), Some(&b'\n'), "{name}: bare CR at {i}");
            }
        }
    }
}

#[test]
fn reject_mode_refuses_bare_line_ends_and_keeps_nothing() {
    let server = Server::start("smuggling-reject", &["--bare-newline", "reject"]);
    let mut c = Client::hello(server.addr);
    c.start_data();
    c.send(b"first\n.\nMAIL FROM:<x@y.test>\r\n.\r\n");
    c.expect("550 5.6.0");
    assert!(server.queue_files("").is_empty());
}
