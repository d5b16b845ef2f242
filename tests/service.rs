//! Postilion as a service: the systemd unit verifies and agrees with the example
//! configuration; the daemon tells `NOTIFY_SOCKET` it is ready once listening with its spool
//! recovered.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::{base_args, Client, Server, TempDir, BIN, DEADLINE};

const UNIT: &str = "contrib/postilion.service";
const EXAMPLE: &str = "contrib/postilion.conf.example";

fn checkout(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value of the first `key = value` line of a configuration file.
fn config_value<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("no {key} in the example configuration"))
}

#[test]
fn unit_verifies_with_systemd_analyze() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze here (apt-get install systemd)");
        return;
    };
    assert!(version.status.success());
    // verify insists that ExecStart's program exists: point it at the binary under test.
    let dir = TempDir::new("unit");
    let unit = fs::read_to_string(checkout(UNIT)).unwrap();
    let exec = "ExecStart=/usr/local/sbin/postilion serve --config /etc/postilion.conf\n";
    assert!(
        unit.contains(exec),
        "ExecStart is what make install installs"
    );
    let path = dir.0.join("postilion.service");
    fs::write(&path, unit.replace("/usr/local/sbin/postilion", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}

#[test]
fn unit_and_example_configuration_agree() {
    let unit = fs::read_to_string(checkout(UNIT)).unwrap();
    let example = fs::read_to_string(checkout(EXAMPLE)).unwrap();
    for line in [
        "Type=notify",
        "User=postilion",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    // The daemon may write where the example configuration puts spool and mailboxes.
    let writable: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .unwrap()
        .split_whitespace()
        .collect();
    for key in ["spool", "mailbox_root"] {
        let value = config_value(&example, key);
        assert!(writable.contains(&value), "{key} = {value} not writable");
    }
    // And the example is a valid configuration.
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(checkout(EXAMPLE))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

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
