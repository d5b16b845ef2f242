//! Postilion as a service: the systemd unit verifies and agrees with the example
//! configuration; the daemon tells `NOTIFY_SOCKET` it is ready once listening with its spool
//! recovered, then gives back the pages only start-up used; `make install` and `make
//! uninstall` put and remove the right files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::delivery::{queue_test_message, wait_for_mail, DELIVER};
use common::{base_args, wait_until, wait_until_within, Client, Server, TempDir, BIN, DEADLINE};

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
    // And the example is a valid configuration (as root here, with no `postilion` user on
    // this machine: --allow-root).
    let out = Command::new(BIN)
        .args(["check-config", "--allow-root", "--config"])
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

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
    line.trim_start_matches(':')
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

/// How long the daemon may take to settle after a release, or to release once idle: its
/// 10 s looks, the queue scan interval (1 s here), and a margin.
const IDLE_WAIT: Duration = Duration::from_secs(45);

#[test]
fn once_started_and_when_idle_again_it_gives_back_the_code_pages_and_goes_on_serving() {
    let dir = Arc::new(TempDir::new("code-pages"));
    // DELIVER's --delivery-threads replaces the base one (flags come in pairs).
    let base = base_args(&dir.0);
    let base = base
        .chunks(2)
        .filter(|pair| !DELIVER.contains(&pair[0].as_str()));
    let args: Vec<String> = base
        .flatten()
        .cloned()
        .chain(DELIVER.iter().map(|a| a.to_string()))
        .collect();
    let server = Server::spawn(
        &dir.0,
        &args,
        &[("RUST_LOG", "info,postilion=debug")],
        Some(Arc::clone(&dir)),
    );
    let line = server.wait_for_log("start-up pages given back: ");
    let given_back: Vec<u64> = line
        .split("given back: ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [kib, mappings] = given_back[..] else {
        panic!("{line}");
    };
    // The binary's code and read-only data at least (a static binary has no more); megabytes.
    assert!(mappings >= 2, "{line}");
    assert!(kib >= 1024, "{line}");
    // Less is mapped, once given back (the line comes just before), than was given back: it
    // was not all mapped again at once.
    let pid = server.child.id();
    wait_until(&format!("RssFile under the {kib} KiB given back"), || {
        status_kib(pid, "RssFile") < kib
    });
    // Once settled (the daemon's own timers have run after the release: 11 s with a queue scan
    // every second), the code runs again from the file: a message is taken and delivered.
    let settled = || {
        let lines = server.log_lines();
        lines.iter().any(|l| l.contains("pages: settled at "))
    };
    wait_until_within("the pages' baseline to settle", IDLE_WAIT, settled);
    queue_test_message(
        &server,
        "ann@client.test",
        &["alice@example.test"],
        b"hi\r\n",
    );
    assert!(wait_for_mail(&server.mail.join("alice"), 1)[0].contains("\nhi\n"));
    // Idle again after the session and the delivery mapped code again: given back again, at
    // the first look (every 10 s) that finds a whole quiet period behind it.
    let released = || {
        let lines = server.log_lines();
        lines.iter().any(|l| l.contains("idle pages given back: "))
    };
    wait_until_within("pages given back once idle again", IDLE_WAIT, released);
}

/// Runs `make TARGET DESTDIR=... PREFIX=...` in the checkout, with the binary under test
/// (so nothing is built), and returns what it printed; panics unless it succeeds.
fn make(target: &str, destdir: &Path, prefix: &str) -> String {
    let out = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(target)
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("PREFIX={prefix}"))
        .arg(format!("BINARY={BIN}"))
        // Not the jobserver of a `make test` that runs this.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .expect("run make");
    assert!(out.status.success(), "make {target}: {}", text(&out));
    text(&out)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn make_install_and_uninstall() {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("skipped: no make here");
        return;
    }
    let root = TempDir::new("install");
    let dest = root.0.join("dest");
    let printed = make("install", &dest, "/usr/local");
    assert!(!printed.contains("useradd"), "no user made under DESTDIR");

    let sbin = dest.join("usr/local/sbin/postilion");
    assert_eq!(fs::read(&sbin).unwrap(), fs::read(BIN).unwrap());
    assert_eq!(mode(&sbin), 0o755);
    // sendmail in Debian's two places, mailq in bin.
    for (link, target) in [
        ("usr/local/sbin/sendmail", "postilion"),
        ("usr/local/lib/sendmail", "../sbin/postilion"),
        ("usr/local/bin/mailq", "../sbin/postilion"),
    ] {
        assert_eq!(
            fs::read_link(dest.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
    }
    assert!(printed.contains("ln -s postilion "), "{printed}");
    let mailq = dest.join("usr/local/bin/mailq");
    let spool = root.0.join("spool");
    fs::create_dir_all(spool.join("queue")).unwrap();
    let out = Command::new(&mailq)
        .args(["--spool", spool.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        text(&out),
        "Mail queue is empty\n",
        "mailq is postilion queue list"
    );
    // Again: the links are there, nothing to say about them.
    let again = make("install", &dest, "/usr/local");
    assert!(
        !again.contains("ln -s") && !again.contains("not a link"),
        "{again}"
    );
    assert!(fs::symlink_metadata(&mailq).unwrap().is_symlink());
    let unit = dest.join("etc/systemd/system/postilion.service");
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        fs::read_to_string(checkout(UNIT)).unwrap(),
        "PREFIX /usr/local: the unit as it is"
    );
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        fs::read(dest.join("etc/postilion.conf")).unwrap(),
        fs::read(checkout(EXAMPLE)).unwrap()
    );
    // The spool is passed through by sendmail's users (to maildrop/): installing again, as
    // above, must leave it open to them.
    assert_eq!(mode(&dest.join("var/spool/postilion")), 0o711);
    assert_eq!(mode(&dest.join("var/mail/postilion")), 0o700);
    let out = Command::new(&sbin).arg("--version").output().unwrap();
    assert!(text(&out).starts_with("postilion "), "{}", text(&out));

    // Another prefix, over a configuration of the operator's and another MTA's sendmail.
    let other = root.0.join("other");
    fs::create_dir_all(other.join("etc")).unwrap();
    fs::write(other.join("etc/postilion.conf"), "# mine\n").unwrap();
    fs::create_dir_all(other.join("usr/sbin")).unwrap();
    fs::write(
        other.join("usr/sbin/sendmail"),
        "#!/bin/sh\n# another MTA\n",
    )
    .unwrap();
    fs::create_dir_all(other.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("../sbin/sendmail", other.join("usr/bin/mailq")).unwrap();
    let printed = make("install", &other, "/usr");
    assert!(printed.contains("exists: kept"), "{printed}");
    assert!(
        printed.contains("usr/sbin/sendmail is not a link to postilion (another MTA's?): left"),
        "{printed}"
    );
    assert_eq!(
        fs::read_link(other.join("usr/lib/sendmail")).unwrap(),
        Path::new("../sbin/postilion")
    );
    assert!(
        printed.contains("usr/bin/mailq is not a link to postilion (another MTA's?): left"),
        "{printed}"
    );
    assert_eq!(
        fs::read_link(other.join("usr/bin/mailq")).unwrap(),
        Path::new("../sbin/sendmail"),
        "another MTA's mailq"
    );
    let unit = fs::read_to_string(other.join("etc/systemd/system/postilion.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/sbin/postilion serve --config /etc/postilion.conf\n"));
    assert_eq!(
        fs::read_to_string(other.join("etc/postilion.conf")).unwrap(),
        "# mine\n"
    );
    assert!(!fs::symlink_metadata(other.join("usr/sbin/sendmail"))
        .unwrap()
        .is_symlink());

    // Uninstall removes ours and nothing else.
    for (dest, prefix) in [(&dest, "usr/local"), (&other, "usr")] {
        make("uninstall", dest, &format!("/{prefix}"));
        for gone in [
            format!("{prefix}/sbin/postilion"),
            format!("{prefix}/lib/sendmail"),
            "etc/systemd/system/postilion.service".into(),
        ] {
            assert!(fs::symlink_metadata(dest.join(&gone)).is_err(), "{gone}");
        }
        for kept in [
            "etc/postilion.conf",
            "var/spool/postilion",
            "var/mail/postilion",
        ] {
            assert!(dest.join(kept).exists(), "{kept}");
        }
    }
    assert!(fs::symlink_metadata(dest.join("usr/local/sbin/sendmail")).is_err());
    assert!(
        fs::symlink_metadata(dest.join("usr/local/bin/mailq")).is_err(),
        "ours: removed"
    );
    assert!(other.join("usr/sbin/sendmail").exists(), "another MTA's");
    assert_eq!(
        fs::read_link(other.join("usr/bin/mailq")).unwrap(),
        Path::new("../sbin/sendmail"),
        "another MTA's mailq: kept by uninstall"
    );
}

/// As root with no DESTDIR, `make install` also makes the `postilion` user and gives it the
/// spool and the mailboxes. Run in a private mount namespace over copies of /etc and empty
/// /usr/local, /var/spool and /var/mail, so this machine keeps its own (root only).
#[test]
fn make_install_as_root_makes_the_user_and_gives_it_the_directories() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let unshare = Command::new("unshare").args(["-m", "true"]).output();
    if !root || !unshare.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: needs root and unshare -m");
        return;
    }
    let dir = TempDir::new("install-root");
    let script = dir.0.join("inside.sh");
    fs::write(
        &script,
        r#"set -e
T=$1
for d in etc usr/local var/spool var/mail; do mkdir -p "$T/$d"; done
cp -a /etc/. "$T/etc/"
for d in etc usr/local var/spool var/mail; do mount --bind "$T/$d" "/$d"; done
make -C "$2" install PREFIX=/usr/local BINARY="$3"
echo "user: $(grep '^postilion:' /etc/passwd)"
stat -c 'dir: %n %U:%G %a' /var/spool/postilion /var/mail/postilion
echo "mine: $(stat -c %U /usr/local/sbin/postilion)"
"#,
    )
    .unwrap();
    let out = Command::new("unshare")
        .arg("-m")
        .arg("sh")
        .arg(&script)
        .arg(&dir.0)
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg(BIN)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let user = printed
        .lines()
        .find_map(|l| l.strip_prefix("user: "))
        .unwrap();
    assert!(
        user.ends_with(":/nonexistent:/usr/sbin/nologin"),
        "a system user without a home or shell: {user}"
    );
    for (dir, mode) in [("/var/spool/postilion", 711), ("/var/mail/postilion", 700)] {
        let line = format!("dir: {dir} postilion:postilion {mode}");
        assert!(printed.lines().any(|l| l == line), "{line} in {printed}");
    }
    assert!(printed.contains("mine: root\n"), "{printed}");
    // Written to the copy of /etc, not to this machine's.
    let copy = fs::read_to_string(dir.0.join("etc/passwd")).unwrap();
    assert!(copy.lines().any(|l| l == user));
}
