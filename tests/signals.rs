//! Signals to the real binary: SIGTERM stops it gracefully (idle sessions and new
//! connections get 421 4.3.2, a transaction in flight finishes and is kept, exit status 0),
//! SIGHUP re-reads the certificate and the aliases at once, and the configuration, naming
//! what needs a restart.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{queue_id, wait_until, Client, Server, TempDir, DEADLINE};

fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGTERM and checks that the process exits with status 0 within `limit`.
fn terminates_within(server: &mut Server, limit: Duration) {
    let start = Instant::now();
    signal(server, "TERM");
    assert_eq!(exit_status(server), Some(0));
    assert!(start.elapsed() < limit, "{:?}", start.elapsed());
}

/// Waits for the process to end; its exit status.
fn exit_status(server: &mut Server) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(start.elapsed() < DEADLINE, "did not exit");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_lets_a_message_in_flight_finish_and_refuses_the_rest() {
    let mut server = Server::start("sigterm", &[]);
    let mut idle = Client::hello(server.addr);
    let mut sending = Client::hello(server.addr);
    sending.start_data();
    sending.send("Subject: in flight\r\n\r\nfirst half\r\n");
    signal(&server, "TERM");
    server.wait_for_log("stopping: no new mail taken");
    // The idle session is told at once; a new connection is refused.
    idle.expect("421 4.3.2");
    let mut late = Client::connect(server.addr);
    late.expect("421 4.3.2");
    // The message in flight is finished and acknowledged, then its session ends too.
    sending.send("second half\r\n.\r\n");
    let id = queue_id(&sending.reply());
    sending.expect("421 4.3.2");
    assert_eq!(exit_status(&mut server), Some(0));
    assert!(server
        .queued_envelope(&id)
        .contains("Rcpt: <alice@example.test>"));
    server.wait_for_log("stopped (0 sessions and 0 deliveries cut off");
}

#[test]
fn sigterm_cuts_a_stalled_transaction_at_shutdown_timeout_and_keeps_nothing_half_made() {
    let mut server = Server::start("sigterm-stall", &["--shutdown-timeout", "1s"]);
    let mut stalled = Client::hello(server.addr);
    stalled.start_data();
    stalled.send("Subject: never finished\r\n\r\npart\r\n");
    let start = Instant::now();
    signal(&server, "INT");
    stalled.expect("421 4.3.2");
    assert_eq!(exit_status(&mut server), Some(0));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(server.queue_files("").is_empty() && server.tmp_files().is_empty());
}

/// Without the signal, new files are read only once they have settled (two seconds): the
/// certificate served at once after SIGHUP is the proof that the signal read it.
#[test]
fn sighup_picks_up_a_new_certificate_and_a_changed_alias_at_once() {
    let dir = common::TempDir::new("sighup-files");
    let aliases = dir.0.join("aliases");
    fs::write(&aliases, "staff: alice\n").unwrap();
    let aliases_arg = aliases.to_string_lossy().into_owned();
    let (server, _, old) = common::tls::tls_server_with("sighup-tls", &["--aliases", &aliases_arg]);
    assert!(common::tls::try_starttls(server.addr, &old).is_ok());
    let mut c = Client::hello(server.addr);
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<team@example.test>\r\n");
    c.expect("250 2.1.0");
    c.expect("550 5.1.1");
    // certbot renews, the alias file is edited, the operator sends SIGHUP.
    let new = common::tls::write_certificate(&server.dir, "mx.test");
    fs::write(&aliases, "staff: alice\nteam: alice\n").unwrap();
    signal(&server, "HUP");
    server.wait_for_log("SIGHUP: TLS certificate re-read");
    server.wait_for_log("SIGHUP: local recipients: ");
    assert!(
        common::tls::try_starttls(server.addr, &new).is_ok(),
        "the new certificate is served at once"
    );
    assert!(common::tls::try_starttls(server.addr, &old).is_err());
    let mut c = Client::hello(server.addr);
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<team@example.test>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
}

#[test]
fn sighup_rereads_the_configuration_and_names_keys_that_need_a_restart() {
    let dir = Arc::new(TempDir::new("sighup"));
    let conf = dir.0.join("postilion.conf");
    fs::write(&conf, "max_recipients = 100\n").unwrap();
    let conf_arg = conf.to_string_lossy().into_owned();
    let server = Server::start_in(&dir.0, &["--config", &conf_arg], Some(Arc::clone(&dir)));
    signal(&server, "HUP");
    server.wait_for_log("SIGHUP: configuration unchanged");
    fs::write(&conf, "max_recipients = 7\n").unwrap();
    signal(&server, "HUP");
    let line = server.wait_for_log("SIGHUP: changed keys need a restart");
    assert!(line.contains("max_recipients"), "{line}");
    // Still serving.
    let mut c = Client::hello(server.addr);
    c.start_data();
    c.send("x\r\n.\r\n");
    c.expect("250 2.0.0");
    wait_until("a running server", || server.log_lines().len() > 3);
}

#[test]
fn sigterm_stops_idle_delivery_threads_at_once() {
    let mut server = Server::start("sigterm-delivery", &["--delivery-threads", "4"]);
    let mut c = Client::hello(server.addr);
    c.start_data();
    c.send("Subject: delivered before the stop\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.0.0");
    wait_until("the local delivery", || {
        common::maildir(&server.mail.join("alice")).len() == 1
    });
    terminates_within(&mut server, Duration::from_secs(5));
    server.wait_for_log("stopped (0 sessions and 0 deliveries cut off");
}

#[test]
fn sigterm_reaches_a_tls_session_whose_client_trickles_a_record() {
    use std::io::Write;
    let (mut server, _, cert) = common::tls::tls_server("sigterm-tls");
    let mut tls = common::tls::starttls(server.addr, &cert).into_inner();
    // A TLS record with a command in it, sent one byte every 300 ms: each socket read gets a
    // byte in time, the record is never complete. The pause is the behaviour under test.
    tls.conn.writer().write_all(b"NOOP\r\n").unwrap();
    let mut record = Vec::new();
    tls.conn.write_tls(&mut record).unwrap();
    let mut tcp = tls.sock.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for byte in record {
            if tcp.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    terminates_within(&mut server, Duration::from_secs(5));
    server.wait_for_log("stopped (0 sessions");
    let _ = trickle.join();
}
