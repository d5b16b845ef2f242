//! Busy but honest clients get through, with the real binary: a recipient list longer than
//! `max_recipients` in one pipelined transaction.

mod common;

use std::fs;
use std::sync::Arc;

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
