//! Postilion as a service: the daemon tells `NOTIFY_SOCKET` it is ready once listening with
//! its spool recovered.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;

use common::{base_args, Client, Server, TempDir, DEADLINE};

/// Starts the server in `dir` with `NOTIFY_SOCKET` set to `socket`.
fn start_notified(dir: &Arc<TempDir>, socket: &Path) -> Server {
    let socket = socket.to_str().unwrap();
    Server::spawn(
        &dir.0,
        &base_args(&dir.0),
        &[("NOTIFY_SOCKET", socket)],
        Some(Arc::clone(dir)),
    )
}

#[test]
fn tells_notify_socket_it_is_ready_once_listening_with_the_spool_recovered() {
    let dir = Arc::new(TempDir::new("notify"));
    let path = dir.0.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    // Crash debris that recovery removes before the daemon may say it is ready.
    let debris = dir.0.join("spool/tmp/debris");
    fs::create_dir_all(debris.parent().unwrap()).unwrap();
    fs::write(&debris, "half a message").unwrap();

    let server = start_notified(&dir, &path);
    let mut buf = [0; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within the deadline");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "READY=1");
    assert!(!debris.exists(), "ready before the spool was recovered");
    let mut client = Client::connect(server.addr);
    client.expect("220 ");
    server.wait_for_log("started as mx.test");
}

#[test]
fn a_notify_socket_nobody_listens_on_costs_a_log_line() {
    let dir = Arc::new(TempDir::new("notify-none"));
    let server = start_notified(&dir, &dir.0.join("nobody"));
    server.wait_for_log("cannot tell systemd READY=1 over NOTIFY_SOCKET");
    Client::connect(server.addr).expect("220 ");
}
