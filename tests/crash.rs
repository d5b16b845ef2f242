//! Crash safety: `kill -9` while 20 clients send. After a restart every message that got a
//! 250 is in queue/, intact, and nothing half-written is. Also the start-up scan.

mod common;

use std::fs;
use std::sync::Arc;

use common::{queue_id, split_received, wait_until, Client, Load, Server, TempDir, COMPLETE};

fn body(client: usize, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: c{client} m{n}\r\n{COMPLETE}\r\n").into_bytes();
    for line in 0..40 {
        b.extend_from_slice(
            format!("client {client} message {n} line {line} ........\r\n").as_bytes(),
        );
    }
    b
}

#[test]
fn kill_9_loses_no_acknowledged_message() {
    let dir = Arc::new(TempDir::new("crash"));
    let mut server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    // Queue id and content of every message that got a 250.
    let load = Load::start(server.addr, 20, |c, client, n| {
        let data = body(client, n);
        let reply = c.send_message("load@client.test", &["alice@example.test"], &data);
        (queue_id(&reply), data)
    });
    wait_until("200 acknowledged messages", || load.acked() >= 200);
    server.kill(); // SIGKILL, mid-traffic
    let acked = load.stop();

    let restarted = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let started = restarted.wait_for_log("started as");
    assert!(
        restarted.tmp_files().is_empty(),
        "tmp/ debris left after recovery"
    );
    for (id, data) in &acked {
        let (_, stored) = split_received(&restarted.queued_message(id));
        assert_eq!(&stored, data, "message {id} damaged");
    }
    // Nothing half-written is in queue/: each message carries an envelope that parses.
    let msgs = restarted.queue_files(".msg");
    assert!(restarted.queue_files(".env").is_empty());
    for msg in &msgs {
        let text = restarted.queued_envelope(msg.trim_end_matches(".msg"));
        assert!(text.starts_with("Version: 1\n") && text.contains("Rcpt: <alice@example.test>"));
    }
    assert!(msgs.len() >= acked.len());
    assert!(
        started.contains(&format!("{} queued", msgs.len())),
        "{started}"
    );
}

#[test]
fn startup_scan_clears_debris_quarantines_garbage_and_keeps_the_queue() {
    let dir = Arc::new(TempDir::new("scan"));
    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let mut c = Client::hello(server.addr);
    let id = queue_id(&c.send_message("a@client.test", &["alice@example.test"], b"kept\r\n"));
    drop(c);
    drop(server);
    let spool = dir.0.join("spool");
    fs::write(spool.join("tmp/123.M1P1Q1.msg"), b"half a message").unwrap();
    fs::write(spool.join("queue/124.M1P1Q1.env"), b"Version: 99\n").unwrap();
    fs::write(spool.join("queue/124.M1P1Q1.msg"), b"whatever").unwrap();

    let server = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let started = server.wait_for_log("started as");
    assert!(
        started.contains("1 queued, 1 debris removed, 2 quarantined"),
        "{started}"
    );
    server.wait_for_log("moved queue/124.M1P1Q1.env to corrupt/");
    assert!(server.tmp_files().is_empty());
    assert_eq!(server.queue_files(".msg"), [format!("{id}.msg")]);
    assert_eq!(
        common::list(&spool.join("corrupt"), ""),
        ["124.M1P1Q1.env", "124.M1P1Q1.msg"]
    );
}

#[test]
fn second_server_on_the_same_spool_refuses_to_start() {
    let dir = Arc::new(TempDir::new("twice"));
    let _first = Server::start_in(&dir.0, &[], Some(Arc::clone(&dir)));
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--allow-root"])
        .args(common::base_args(&dir.0))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another postilion"), "{err}");
}
