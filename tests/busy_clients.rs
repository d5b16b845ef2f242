//! Busy but honest clients get through, with the real binary: a recipient list longer than
//! `max_recipients` in one pipelined transaction, clients that open a connection per message.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use common::{queue_id, Client, Server, TempDir};

#[test]
fn pipelined_150_recipients_get_100_accepted_50_452_and_the_message_is_queued() {
    let dir = Arc::new(TempDir::new("rcpts150"));
    let users: Vec<String> = (0..150).map(|i| format!("user{i:03}")).collect();
    for user in &users {
        fs::create_dir_all(dir.0.join("mail").join(user)).unwrap();
    }
    let server = Server::start_in(&dir.0.clone(), &[], Some(dir));
    let mut c = Client::hello(server.addr);
    let mut batch = "MAIL FROM:<bulk@client.test>\r\n".to_string();
    for user in &users {
        batch += &format!("RCPT TO:<{user}@example.test>\r\n");
    }
    batch += "DATA\r\n";
    c.send(batch);
    let mut replies = vec![c.reply()];
    for _ in &users {
        replies.push(c.reply());
    }
    let data = c.reply();
    let codes: Vec<&str> = replies.iter().map(|r| &r[..9]).collect();
    assert_eq!(codes[0], "250 2.1.0");
    assert_eq!(codes[1..=100], ["250 2.1.5"; 100], "{replies:?}");
    assert_eq!(codes[101..], ["452 4.5.3"; 50], "{replies:?}");
    assert!(data.starts_with("354 "), "{data}");
    c.send("Subject: many\r\n\r\nhello\r\n.\r\n");
    let id = queue_id(&c.expect("250 2.0.0"));
    let envelope = server.queued_envelope(&id);
    let rcpts: Vec<&str> = envelope
        .lines()
        .filter(|l| l.starts_with("Rcpt: "))
        .collect();
    assert_eq!(rcpts.len(), 100, "{envelope}");
    assert_eq!(rcpts[99], "Rcpt: <user099@example.test>");
    assert!(c.command("QUIT").starts_with("221 "));
}

/// One message on a connection of its own, as `smtp-source -s 20` sends: true if served,
/// false if refused at the greeting.
fn one_message_per_connection(addr: SocketAddr) -> bool {
    let mut c = Client::connect(addr);
    let greeting = c.reply();
    if greeting.starts_with("421 ") {
        return false;
    }
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.send("EHLO client.test\r\n");
    c.expect("250 ");
    c.start_data();
    c.send("Subject: one of many\r\n\r\nhi\r\n.\r\n");
    c.expect("250 2.0.0");
    assert!(c.command("QUIT").starts_with("221 "));
    true
}

#[test]
fn twenty_clients_reconnecting_for_each_message_are_never_refused() {
    // Default limits: max_connections 100, max_connections_per_ip 50.
    let server = Server::start("reconnect20", &[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..20)
        .map(|_| {
            thread::spawn(move || {
                (0..10)
                    .filter(|_| !one_message_per_connection(addr))
                    .count()
            })
        })
        .collect();
    let refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 0, "{refused} of 200 connections refused");
    assert_eq!(server.queue_files(".msg").len(), 200);
}

#[test]
fn a_place_is_free_again_before_the_client_reads_221() {
    let server = Server::start("reconnect1", &["--max-connections-per-ip", "1"]);
    let mut refused = 0;
    for _ in 0..200 {
        let mut c = Client::connect(server.addr);
        let greeting = c.reply();
        if greeting.starts_with("421 ") {
            refused += 1;
            continue;
        }
        assert!(c.command("QUIT").starts_with("221 "), "{greeting}");
        // Reconnect at once, without waiting for the server to close its side.
    }
    assert_eq!(refused, 0, "{refused} of 200 connections refused");
}

#[test]
fn ipv6_clients_have_a_limit_of_their_own() {
    let server = Server::start(
        "perip6",
        &[
            "--listen",
            "127.0.0.1:0, [::1]:0",
            "--max-connections-per-ip",
            "1",
        ],
    );
    let v6 = server.ipv6_addr();
    let mut first = Client::connect(v6);
    first.expect("220 ");
    let mut second = Client::connect(v6);
    second.expect("421 4.7.0");
    // ::1 and 127.0.0.1 are different clients.
    let mut v4 = Client::connect(server.addr);
    v4.expect("220 ");
    // Once the first one quits, ::1 is served again.
    assert!(first.command("QUIT").starts_with("221 "));
    let mut again = Client::connect(v6);
    again.expect("220 ");
}
