//! `make bench`: load figures for the real binary, beside a private Postfix where installed.
//!
//! Acceptance: 4 KiB messages over loopback at 1 and 20 concurrent sessions (pipelined MAIL,
//! RCPT, DATA, as an MTA client sends them): messages/s, p50/p99 transaction latency, CPU
//! seconds per 1000 messages, the server's RSS (idle, with 100 idle connections, peak) and the
//! binary size; accepted mail is held (Postilion: delivery paused; Postfix: HOLD). TLS: 20
//! sessions, each message on a connection of its own with STARTTLS (a full TLS 1.3 handshake,
//! no resumption), both servers with one self-signed certificate. Delivery: 2000 such messages
//! accepted and relayed to a sink on loopback, end to end. Postfix, when `postfix` is on the
//! PATH, gets its own config and queue under target/bench, a loopback port, stock settings
//! otherwise. Rounds alternate between the two servers so disk drift hits both alike. Nothing
//! leaves the machine: relaying goes to the sink, and no DNS lookup is made.
//!
//! RSS is read when the server says READY=1 on a notify socket; idle, the most over 70 s
//! before any connection (the figure for the target); after one session; after two messages;
//! and idle again, the most over 70 s once the daemon gave back the pages mail mapped: for the
//! release binary and the static one (`make static`), side by side. `cargo bench --bench load -- rss` prints
//! only the binary size and the RSS figures.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned};

const BIN: &str = env!("CARGO_BIN_EXE_postilion");
const MESSAGE_SIZE: usize = 4096;
const ROUNDS: usize = 3;
/// The name in the certificate, which the TLS clients check.
const CERT_NAME: &str = "bench.test";

/// One row of the table, run ROUNDS times against each server.
struct Load {
    sessions: usize,
    /// Messages per session and round.
    messages: usize,
    shape: Shape,
}

/// How a session sends its messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// All on one connection, MAIL/RCPT/DATA pipelined.
    Pipelined,
    /// Each on a connection of its own: connect, EHLO, message, QUIT, as most mail arrives.
    PerConnection,
    /// Each on a connection of its own with STARTTLS: connect, EHLO, STARTTLS, handshake,
    /// EHLO, message, QUIT.
    Tls,
}

const LOADS: [Load; 5] = [
    Load {
        sessions: 1,
        messages: 300,
        shape: Shape::PerConnection,
    },
    Load {
        sessions: 20,
        messages: 100,
        shape: Shape::PerConnection,
    },
    Load {
        sessions: 1,
        messages: 300,
        shape: Shape::Pipelined,
    },
    Load {
        sessions: 20,
        messages: 100,
        shape: Shape::Pipelined,
    },
    Load {
        sessions: 20,
        messages: 50,
        shape: Shape::Tls,
    },
];

fn main() {
    // `cargo bench --bench load -- relay` runs only the relay rows (`accept`: the rest).
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let work = PathBuf::from("target/bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("create target/bench");
    let work = work.canonicalize().expect("target/bench path");
    // `cargo bench --bench load -- rss`: the binary size and the RSS figures only.
    if std::env::args().skip(1).any(|a| a == "rss") {
        memory(&work);
        return;
    }
    let message = message();
    if !wanted("accept") {
        delivery(&work, &message);
        return;
    }
    let certificate = Certificate::write(&work);

    let (cert, key) = (
        certificate.cert.to_string_lossy(),
        certificate.key.to_string_lossy(),
    );
    let postilion = Postilion::start(
        &work.join("postilion"),
        &[
            "--delivery-threads",
            "0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let postfix = Postfix::start(
        &work.join("postfix"),
        &format!("{HOLD}{}", certificate.postfix_cf()),
    );
    if postfix.is_none() {
        println!("(Postfix not installed: `apt-get install postfix` to compare in the same run)");
    }

    memory(&work);

    let servers = targets(&postilion, postfix.as_ref());
    println!();
    println!(
        "\"conn\" rows: a new connection per message (connect, EHLO, message, QUIT), as most \
         mail arrives, latency from connect to the 250; \"pipe\" rows: every message of a \
         session on one connection, MAIL/RCPT/DATA pipelined"
    );
    println!(
        "\"TLS\" rows: a new connection per message (connect, EHLO, STARTTLS, handshake, EHLO, \
         message, QUIT), latency from connect to the 250; rustls client (ring), TLS 1.3, no \
         resumption; one self-signed ECDSA P-256 certificate for both servers"
    );
    println!(
        "CPU: user + system seconds per 1000 messages of the server process (Postfix: master \
         and all its children, exited ones included)"
    );
    println!(
        "{:>8}  {:<9}  {:>9}  {:>8}  {:>8}  {:>8}",
        "sessions", "server", "msg/s", "p50 ms", "p99 ms", "CPU s/1k"
    );
    for spec in LOADS {
        let mut runs: Vec<Vec<Run>> = servers.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (server, runs) in servers.iter().zip(&mut runs) {
                let run = spec.run(server, &message, &certificate.client);
                run.print(&spec.label(), server.name);
                runs.push(run);
            }
        }
        let medians: Vec<(f64, Option<f64>)> = runs
            .iter()
            .map(|runs| {
                let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
                let mut cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu).collect();
                (
                    median(&mut rates),
                    (!cpu.is_empty()).then(|| median(&mut cpu)),
                )
            })
            .collect();
        let label = format!("{:>8} ", spec.label());
        println!("{}\n", median_line(&label, &servers, &medians));
    }
    smtp_source(&servers);
    println!(
        "peak RSS: {:.2} MiB",
        mib(rss(postilion.child.id(), "VmHWM"))
    );
    println!("(every message fsync'd before its 250: Postilion its one queue file and the queue directory, the latter shared by the sessions committing at once)");
    drop(postilion);
    drop(postfix);
    if wanted("relay") {
        delivery(&work, &message);
    }
}

/// What `make static` builds (Makefile `STATIC` on this machine).
const STATIC_BIN: &str = "target/x86_64-unknown-linux-gnu/release/postilion";
/// The idle RSS the daemon must stay under (issue #10), static build included.
const IDLE_RSS_TARGET_MIB: f64 = 3.5;

/// Binary size and RSS: idle in the default configuration, for the release binary and, when
/// `make static` has built it, the static one; then with 100 idle connections.
fn memory(work: &Path) {
    println!(
        "binary: {:.2} MiB (release, stripped)",
        mib(fs::metadata(BIN).map(|m| m.len()).unwrap_or(0))
    );
    println!(
        "RSS (VmRSS; target {:.1} MiB for idle): when READY=1 comes; idle (the most over {} s \
         after start-up's pages were given back: a queue scan and the daemon's own looks, no \
         connection); after one session (EHLO, QUIT); after two messages (one delivered \
         locally, one relayed); idle again (the most over {} s once the pages they mapped \
         were given back). Dynamic and static side by side, about 3 minutes",
        IDLE_RSS_TARGET_MIB,
        STEADY.as_secs(),
        STEADY.as_secs()
    );
    let static_bin = Path::new(STATIC_BIN);
    let static_label = match fs::metadata(static_bin).and_then(|m| m.modified()) {
        Ok(built) if newest_source().is_some_and(|source| source > built) => {
            Some("static (older than the sources: `make static` again)")
        }
        Ok(_) => Some("static"),
        Err(_) => None,
    };
    let static_dir = work.join("postilion-idle-static");
    // Side by side, both joined (and their daemons stopped) whatever happens to the other.
    let idle_server = thread::scope(|scope| {
        let static_run = static_label.map(|label| {
            let dir = &static_dir;
            scope.spawn(move || idle_rss(Path::new(STATIC_BIN), dir, label))
        });
        let (idle_server, line) = idle_rss(Path::new(BIN), &work.join("postilion-idle"), "dynamic");
        println!("{line}");
        match static_run.map(|run| run.join()) {
            Some(Ok((_, line))) => println!("{line}"),
            Some(Err(_)) => println!("  static: the run failed (above)"),
            None => println!("  static: not built (`make static` builds {STATIC_BIN})"),
        }
        idle_server
    });
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| idle_connection(idle_server.addr))
        .collect();
    println!(
        "RSS with 100 idle connections: {:.2} MiB",
        mib(rss(idle_server.child.id(), "VmRSS"))
    );
    drop(idle);
}

/// When the newest of the files `make static` builds from (Makefile `SOURCES`) changed.
fn newest_source() -> Option<SystemTime> {
    let mut pending = vec![PathBuf::from("src")];
    let mut newest = ["Cargo.toml", "Cargo.lock"]
        .iter()
        .filter_map(|f| fs::metadata(f).and_then(|m| m.modified()).ok())
        .max()?;
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
                newest = newest.max(modified);
            }
        }
    }
    Some(newest)
}

/// Starts `binary` in the default configuration, reads its RSS at each step, and returns it
/// running with the line to print: when READY=1 comes; idle, the most over [`STEADY`] after
/// start-up's pages were given back (every thread asleep at the first reading); after one
/// session (EHLO, QUIT); after a message for `postmaster`, delivered into its Maildir, and one
/// for a remote domain, relayed to a sink on loopback (the only key set beside the defaults:
/// `relayhost`); and idle again, the most over [`STEADY`] once the daemon has given back the
/// pages that mail mapped (at most [`IDLE_WAIT`] later).
fn idle_rss(binary: &Path, dir: &Path, label: &str) -> (Postilion, String) {
    let sink = Sink::start();
    let relay = sink.addr.to_string();
    let extra = ["--dns-server", "127.0.0.1:1", "--relayhost", &relay];
    let server = Postilion::start_ready(binary, dir, &extra);
    let pid = server.child.id();
    let at_ready = mib(rss(pid, "VmRSS"));
    let log = dir.join("log");
    wait_for_log(
        &log,
        &["start-up pages given back"],
        1,
        Duration::from_secs(30),
    );
    wait_until_asleep(pid);
    let idle = mib(most_rss(pid, STEADY));
    Session::open(server.addr).quit();
    wait_for_log(&log, &["disconnect from"], 1, Duration::from_secs(30));
    wait_until_asleep(pid);
    let after_session = mib(rss(pid, "VmRSS"));
    // Mail once the daemon has settled after its start-up release (its own timers have run):
    // mail before would count as what it settled at.
    wait_for_log(&log, &["pages: settled at"], 1, STEADY + IDLE_WAIT);
    let mut session = Session::open(server.addr);
    session.send_to(&["postmaster", "someone@remote.test"], &message());
    session.quit();
    let timeout = Duration::from_secs(30);
    wait_for_log(&log, &["relay=local", "status=sent"], 1, timeout);
    wait_for_log(&log, &["someone@remote.test", "status=sent"], 1, timeout);
    let released = log_lines_with(&log, &["idle pages given back"]);
    wait_until_asleep(pid);
    let after_mail = mib(rss(pid, "VmRSS"));
    wait_for_log(&log, &["idle pages given back"], released + 1, IDLE_WAIT);
    wait_until_asleep(pid);
    let idle_again = mib(most_rss(pid, STEADY));
    let verdict = |v: f64| match v <= IDLE_RSS_TARGET_MIB {
        true => "within",
        false => "OVER",
    };
    let line = format!(
        "  {label}: at READY=1 {at_ready:.2} MiB; idle {idle:.2} MiB ({}); after one session \
         {after_session:.2} MiB; after two messages {after_mail:.2} MiB; idle again \
         {idle_again:.2} MiB ({})",
        verdict(idle),
        verdict(idle_again)
    );
    (server, line)
}

/// How long idle RSS is watched: a whole queue scan interval (1 min by default) and one of the
/// daemon's own 10 s looks, the wake-ups of an idle daemon.
const STEADY: Duration = Duration::from_secs(70);

/// How long the daemon may take to give back pages once idle: two of its 10 s looks, and a
/// margin.
const IDLE_WAIT: Duration = Duration::from_secs(45);

/// The most VmRSS of `pid` over `time`, read every 100 ms.
fn most_rss(pid: u32, time: Duration) -> u64 {
    let start = Instant::now();
    let mut most = rss(pid, "VmRSS");
    while start.elapsed() < time {
        thread::sleep(Duration::from_millis(100));
        most = most.max(rss(pid, "VmRSS"));
    }
    most
}

/// How many lines of the log file at `log` contain every one of `parts`.
fn log_lines_with(log: &Path, parts: &[&str]) -> usize {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines = text.lines();
    lines
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Waits until at least `count` lines of the log file at `log` contain every one of `parts`.
fn wait_for_log(log: &Path, parts: &[&str], count: usize, timeout: Duration) {
    let start = Instant::now();
    while log_lines_with(log, parts) < count {
        assert!(
            start.elapsed() < timeout,
            "no {count} log lines with {parts:?} within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until every thread of `pid` sleeps (twice in a row): started and idle.
fn wait_until_asleep(pid: u32) {
    let asleep = || {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('S')))
                .unwrap_or(false)
        })
    };
    let start = Instant::now();
    while !(asleep() && asleep()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "postilion {pid} never went idle"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Postilion, and Postfix where it runs, as load targets.
fn targets(postilion: &Postilion, postfix: Option<&Postfix>) -> Vec<Target> {
    let mut servers = vec![Target {
        name: "postilion",
        addr: postilion.addr,
        pid: Some(postilion.child.id()),
    }];
    if let Some(postfix) = postfix {
        servers.push(Target {
            name: "postfix",
            addr: postfix.addr,
            pid: postfix.pid,
        });
    }
    servers
}

/// A server under load: where it listens, and the process whose CPU time is counted.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: Option<u32>,
}

impl Load {
    fn label(&self) -> String {
        let shape = match self.shape {
            Shape::PerConnection => " conn",
            Shape::Pipelined => " pipe",
            Shape::Tls => " TLS",
        };
        format!("{}{shape}", self.sessions)
    }

    fn run(&self, server: &Target, message: &[u8], tls: &Arc<ClientConfig>) -> Run {
        let before = server.pid.map(cpu_seconds);
        let mut run = match self.shape {
            Shape::Pipelined => load(server.addr, self.sessions, self.messages, message),
            Shape::PerConnection => {
                per_connection_load(server.addr, self.sessions, self.messages, message)
            }
            Shape::Tls => tls_load(server.addr, self.sessions, self.messages, message, tls),
        };
        if let (Some(pid), Some(before)) = (server.pid, before) {
            let messages = (self.sessions * self.messages) as f64;
            run.cpu = Some((cpu_seconds(pid) - before) * 1000.0 / messages);
        }
        run
    }
}

/// One self-signed certificate (rcgen, ECDSA P-256) in PEM files for both servers, and a TLS
/// client that trusts only it, makes full handshakes (no resumption) and prefers TLS 1.3.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    client: Arc<ClientConfig>,
}

impl Certificate {
    fn write(dir: &Path) -> Certificate {
        let certified =
            rcgen::generate_simple_self_signed(vec![CERT_NAME.to_string()]).expect("certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
        fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
        let mut roots = RootCertStore::empty();
        roots
            .add(certified.cert.der().clone())
            .expect("trust the certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::disabled();
        Certificate {
            cert,
            key,
            client: Arc::new(client),
        }
    }

    /// The same certificate for Postfix's smtpd, STARTTLS offered and optional.
    fn postfix_cf(&self) -> String {
        format!(
            "smtpd_tls_cert_file = {}\n\
             smtpd_tls_key_file = {}\n\
             smtpd_tls_security_level = may\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

const HOLD: &str =
    "# Accepted mail waits on hold, as Postilion's waits in queue/: nothing is sent.\n\
                    smtpd_data_restrictions = check_client_access static:HOLD\n";
const DELIVERY_MESSAGES: usize = 2000;

/// 2000 messages from 20 sessions, each on a connection of its own (then on 20 pipelined
/// connections), timed until the sink has every one; ROUNDS rounds, alternating servers.
fn delivery(work: &Path, message: &[u8]) {
    println!();
    println!(
        "delivery: {DELIVERY_MESSAGES} messages of 4 KiB accepted from 20 sessions and relayed \
         to a sink on loopback, end to end; CPU of the server per 1000 messages"
    );
    let sink = Sink::start();
    let relay = sink.addr.to_string();
    let postilion = Postilion::start(
        &work.join("postilion-relay"),
        &["--relayhost", &relay, "--smtp-tls", "none"],
    );
    let relayhost = format!("relayhost = [127.0.0.1]:{}\n", sink.addr.port());
    let postfix = Postfix::start(&work.join("postfix-relay"), &relayhost);
    let servers = targets(&postilion, postfix.as_ref());
    for shape in [Shape::PerConnection, Shape::Pipelined] {
        let label = match shape {
            Shape::PerConnection => "relay, a connection per message",
            _ => "relay, 20 pipelined connections",
        };
        let mut runs: Vec<(Vec<f64>, Vec<f64>)> =
            servers.iter().map(|_| Default::default()).collect();
        for _ in 0..ROUNDS {
            for (server, (rates, cpus)) in servers.iter().zip(&mut runs) {
                let before = server.pid.map(cpu_seconds);
                let seconds = relay_run(server.addr, &sink, message, shape);
                let rate = DELIVERY_MESSAGES as f64 / seconds;
                let mut line = format!(
                    "  {label}: {:<9} {seconds:.2} s, {rate:.0} msg/s",
                    server.name
                );
                if let (Some(pid), Some(before)) = (server.pid, before) {
                    let cpu = (cpu_seconds(pid) - before) * 1000.0 / DELIVERY_MESSAGES as f64;
                    line += &format!(", {cpu:.2} CPU s/1k");
                    cpus.push(cpu);
                }
                println!("{line}");
                rates.push(rate);
            }
        }
        let medians: Vec<(f64, Option<f64>)> = runs
            .iter_mut()
            .map(|(rates, cpus)| (median(rates), (!cpus.is_empty()).then(|| median(cpus))))
            .collect();
        println!(
            "{}",
            median_line(&format!("  {label}:"), &servers, &medians)
        );
    }
}

fn relay_run(addr: SocketAddr, sink: &Sink, message: &[u8], shape: Shape) -> f64 {
    let before = sink.count.load(Ordering::SeqCst);
    let start = Instant::now();
    match shape {
        Shape::Pipelined => load(addr, 20, DELIVERY_MESSAGES / 20, message),
        _ => per_connection_load(addr, 20, DELIVERY_MESSAGES / 20, message),
    };
    while sink.count.load(Ordering::SeqCst) < before + DELIVERY_MESSAGES {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "relaying did not finish in 10 minutes"
        );
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed().as_secs_f64()
}

/// Postfix's own load generator against each server, one connection per message, as a
/// check on ours: `smtp-source -s 20 -m 2000 -l 4096`, ROUNDS rounds alternating.
fn smtp_source(servers: &[Target]) {
    if Command::new("smtp-source").output().is_err() {
        return;
    }
    let mut rates: Vec<Vec<f64>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (server, rates) in servers.iter().zip(&mut rates) {
            let start = Instant::now();
            let status = Command::new("smtp-source")
                .args(["-s", "20", "-m", "2000", "-l", "4096"])
                .args(["-f", "bench@client.test", "-t", "someone@remote.test"])
                .arg(server.addr.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.map(|s| s.success()).unwrap_or(false) {
                println!("(smtp-source failed against {})", server.name);
                return;
            }
            rates.push(2000.0 / start.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<(f64, Option<f64>)> = rates.iter_mut().map(|r| (median(r), None)).collect();
    let label = "smtp-source -s 20 -m 2000 -l 4096 (a connection per message):";
    println!("{}\n", median_line(label, servers, &medians));
}

/// Accepts everything, keeps nothing, counts messages: the far end of the delivery run.
struct Sink {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                thread::spawn(move || sink_session(stream, &counter));
            }
        });
        Sink { addr, count }
    }
}

fn sink_session(stream: TcpStream, count: &AtomicUsize) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // Replies to a pipelined batch go out together, as a real server sends them.
    let mut replies = b"220 sink ESMTP\r\n".to_vec();
    let mut line = Vec::new();
    loop {
        if reader.buffer().is_empty() && !replies.is_empty() {
            if out.write_all(&replies).is_err() {
                return;
            }
            replies.clear();
        }
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = String::from_utf8_lossy(&line).to_ascii_uppercase();
        if verb.starts_with("EHLO") {
            replies.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        } else if verb.starts_with("DATA") {
            replies.extend_from_slice(b"354 go on\r\n");
            if out.write_all(&replies).is_err() {
                return;
            }
            replies.clear();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == b".\r\n" => break,
                    Ok(_) => {}
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            replies.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if verb.starts_with("QUIT") {
            let _ = out.write_all(b"221 bye\r\n");
            return;
        } else {
            replies.extend_from_slice(b"250 2.0.0 ok\r\n");
        }
    }
}

/// `LABEL median: postilion R msg/s (C CPU s/1k), postfix ..., ratio X`: a load's summary from
/// each server's median rate and CPU seconds per 1000 messages.
fn median_line(label: &str, servers: &[Target], medians: &[(f64, Option<f64>)]) -> String {
    let mut line = format!("{label} median:");
    for (i, (server, (rate, cpu))) in servers.iter().zip(medians).enumerate() {
        let sep = if i == 0 { "" } else { "," };
        line += &format!("{sep} {} {rate:.0} msg/s", server.name);
        if let Some(cpu) = cpu {
            line += &format!(" ({cpu:.2} CPU s/1k)");
        }
    }
    if let [(ours, _), (theirs, _)] = medians {
        line += &format!(", ratio {:.2}x", ours / theirs);
    }
    line
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A field of /proc/PID/status in bytes (VmRSS now, VmHWM peak).
fn rss(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

/// A 4 KiB message of 76-column text lines.
fn message() -> Vec<u8> {
    let mut m =
        b"From: bench@client.test\r\nTo: someone@remote.test\r\nSubject: load\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again...\r\n";
    while m.len() + line.len() <= MESSAGE_SIZE {
        m.extend_from_slice(line);
    }
    m.resize(MESSAGE_SIZE - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{addr} never accepted connections"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// An SMTP client session over plain TCP or, after STARTTLS, TLS.
struct Session<S: Read + Write = TcpStream> {
    conn: BufReader<S>,
}

impl Session {
    /// Connects, reads the greeting and says EHLO.
    fn open(addr: SocketAddr) -> Session {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let _ = stream.set_nodelay(true);
        let mut s = Session {
            conn: BufReader::new(stream),
        };
        s.expect(b'2');
        s.ehlo();
        s
    }

    /// STARTTLS, then EHLO over TLS (the handshake happens on its first write).
    fn starttls(
        mut self,
        tls: &Arc<ClientConfig>,
    ) -> Session<StreamOwned<ClientConnection, TcpStream>> {
        self.write(b"STARTTLS\r\n");
        self.expect(b'2');
        assert!(
            self.conn.buffer().is_empty(),
            "server sent more than its STARTTLS reply"
        );
        let name = ServerName::try_from(CERT_NAME).expect("server name");
        let client = ClientConnection::new(Arc::clone(tls), name).expect("TLS client");
        let mut s = Session {
            conn: BufReader::new(StreamOwned::new(client, self.conn.into_inner())),
        };
        s.ehlo();
        let version = s.conn.get_ref().conn.protocol_version();
        assert_eq!(version, Some(ProtocolVersion::TLSv1_3), "TLS version");
        s
    }
}

impl<S: Read + Write> Session<S> {
    fn write(&mut self, bytes: &[u8]) {
        let stream = self.conn.get_mut();
        stream.write_all(bytes).expect("write");
        stream.flush().expect("flush");
    }

    fn ehlo(&mut self) {
        self.write(b"EHLO client.test\r\n");
        self.expect(b'2');
    }

    /// Reads one reply and checks its first digit.
    fn expect(&mut self, class: u8) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.conn.read_line(&mut line).expect("read reply");
            assert!(n > 0, "server closed the connection");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert_eq!(line.as_bytes()[0], class, "unexpected reply: {line}");
    }

    fn send(&mut self, message: &[u8]) {
        self.send_to(&["someone@remote.test"], message);
    }

    fn send_to(&mut self, rcpts: &[&str], message: &[u8]) {
        let mut commands = b"MAIL FROM:<bench@client.test>\r\n".to_vec();
        for rcpt in rcpts {
            commands.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        }
        commands.extend_from_slice(b"DATA\r\n");
        self.write(&commands);
        for _ in 0..=rcpts.len() {
            self.expect(b'2');
        }
        self.expect(b'3');
        let mut data = Vec::with_capacity(message.len() + 3);
        data.extend_from_slice(message);
        data.extend_from_slice(b".\r\n");
        self.write(&data);
        self.expect(b'2');
    }

    fn quit(mut self) {
        self.write(b"QUIT\r\n");
        self.expect(b'2');
    }
}

fn idle_connection(addr: SocketAddr) -> TcpStream {
    Session::open(addr).conn.into_inner()
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU seconds of the server per 1000 messages, where known.
    cpu: Option<f64>,
}

impl Run {
    fn print(&self, label: &str, server: &str) {
        let cpu = self.cpu.map(|c| format!("{c:.2}")).unwrap_or_default();
        println!(
            "{label:>8}  {server:<9}  {:>9.0}  {:>8.2}  {:>8.2}  {cpu:>8}",
            self.rate,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        );
    }
}

/// `sessions` clients at once, each sending `per_session` messages on one connection.
fn load(addr: SocketAddr, sessions: usize, per_session: usize, message: &[u8]) -> Run {
    concurrently(sessions, |latencies| {
        let mut session = Session::open(addr);
        for _ in 0..per_session {
            let t = Instant::now();
            session.send(message);
            latencies.push(t.elapsed());
        }
        session.quit();
    })
}

/// `sessions` clients at once, each sending `per_session` messages, every one on a new
/// connection; its latency runs from connect to the 250 after the message.
fn per_connection_load(
    addr: SocketAddr,
    sessions: usize,
    per_session: usize,
    message: &[u8],
) -> Run {
    concurrently(sessions, |latencies| {
        for _ in 0..per_session {
            let t = Instant::now();
            let mut session = Session::open(addr);
            session.send(message);
            latencies.push(t.elapsed());
            session.quit();
        }
    })
}

/// `sessions` clients at once, each sending `per_session` messages, every one on a new
/// connection with STARTTLS; its latency runs from connect to the 250 after the message.
fn tls_load(
    addr: SocketAddr,
    sessions: usize,
    per_session: usize,
    message: &[u8],
    tls: &Arc<ClientConfig>,
) -> Run {
    concurrently(sessions, |latencies| {
        for _ in 0..per_session {
            let t = Instant::now();
            let mut session = Session::open(addr).starttls(tls);
            session.send(message);
            latencies.push(t.elapsed());
            session.quit();
        }
    })
}

/// Runs `client` on `sessions` threads at once; each pushes the latency of every message.
fn concurrently(sessions: usize, client: impl Fn(&mut Vec<Duration>) + Sync) -> Run {
    let start = Instant::now();
    let mut latencies: Vec<Duration> = thread::scope(|scope| {
        let workers: Vec<_> = (0..sessions)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    client(&mut latencies);
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("load session failed"))
            .collect()
    });
    let elapsed = start.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        cpu: None,
    }
}

/// CPU seconds (user + system) spent so far by process `pid` and its descendants: the live
/// ones from their /proc/PID/stat, those gone (and reaped) in their parents' cutime + cstime.
fn cpu_seconds(pid: u32) -> f64 {
    // (pid, parent, ticks) of every process.
    let mut processes = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses and may hold anything.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<u64> = fields
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Fields 4 (ppid) and 14 to 17 (utime, stime, cutime, cstime) of proc(5).
        if let Some(times) = fields.get(10..14) {
            processes.push((p, fields[0], times.iter().sum::<u64>()));
        }
    }
    let (mut pending, mut ticks) = (vec![u64::from(pid)], 0);
    while let Some(parent) = pending.pop() {
        for &(p, ppid, t) in &processes {
            if p == parent {
                ticks += t;
            }
            if ppid == parent {
                pending.push(p);
            }
        }
    }
    ticks as f64 / clock_ticks()
}

/// Clock ticks per second, the unit of /proc/PID/stat times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

struct Postilion {
    child: Child,
    addr: SocketAddr,
}

impl Postilion {
    /// Starts the release binary and waits until it accepts connections.
    fn start(dir: &Path, extra: &[&str]) -> Postilion {
        let server = Postilion::spawn(Path::new(BIN), dir, extra, None);
        wait_for_port(server.addr);
        server
    }

    /// Starts `binary` and waits for its READY=1 on a notify socket of its own: started,
    /// and no connection made to find out.
    fn start_ready(binary: &Path, dir: &Path, extra: &[&str]) -> Postilion {
        fs::create_dir_all(dir).expect("bench dir");
        let path = dir.join("notify");
        let _ = fs::remove_file(&path);
        let notify = UnixDatagram::bind(&path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("notify time-out");
        let server = Postilion::spawn(binary, dir, extra, Some(&path));
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
        assert!(
            String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
            "unexpected notification"
        );
        server
    }

    fn spawn(binary: &Path, dir: &Path, extra: &[&str], notify: Option<&Path>) -> Postilion {
        fs::create_dir_all(dir).expect("bench dir");
        let log = fs::File::create(dir.join("log")).expect("log file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new(binary);
        // Root or not, as it is (see make run).
        command
            .args(["serve", "--allow-root"])
            .args(["--listen", &addr.to_string()])
            .args(["--spool", &dir.join("spool").to_string_lossy()])
            .args(["--mailbox-root", &dir.join("mail").to_string_lossy()])
            .args([
                "--max-connections",
                "300",
                "--max-connections-per-ip",
                "300",
            ])
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(path) = notify {
            // The memory figures: with the debug line that says when pages were given back.
            command
                .env("NOTIFY_SOCKET", path)
                .env("RUST_LOG", "info,postilion=debug");
        }
        let child = command.spawn().expect("start postilion");
        Postilion { child, addr }
    }
}

impl Drop for Postilion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postfix instance: own config and queue directories, a loopback port.
struct Postfix {
    config: PathBuf,
    addr: SocketAddr,
    /// The master process, parent of smtpd, cleanup, qmgr and the others.
    pid: Option<u32>,
}

impl Postfix {
    /// `extra` ends main.cf: what to do with accepted mail.
    fn start(dir: &Path, extra: &str) -> Option<Postfix> {
        Command::new("postfix").arg("-h").output().ok()?;
        let master_dist = [
            "/usr/share/postfix/master.cf.dist",
            "/etc/postfix/master.cf",
        ]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())?;
        let config = dir.join("etc");
        for sub in ["etc", "queue", "data"] {
            fs::create_dir_all(dir.join(sub)).ok()?;
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n\
             myhostname = bench.test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtp_dns_support_level = disabled\n\
             {extra}",
            queue = dir.join("queue").display(),
            data = dir.join("data").display(),
            log = dir.join("maillog").display(),
            dir = dir.display(),
        );
        fs::write(config.join("main.cf"), main_cf).ok()?;
        let master: String = master_dist
            .lines()
            .map(|line| {
                if line.starts_with("smtp ") && line.contains(" inet ") {
                    format!("{addr} inet n - n - - smtpd")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(config.join("master.cf"), master + "\n").ok()?;
        let postfix = |action: &str| {
            Command::new("postfix")
                .arg("-c")
                .arg(&config)
                .arg(action)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        // The queue and data directories belong to the postfix user.
        let _ = Command::new("chown")
            .arg("postfix:postfix")
            .arg(dir.join("data"))
            .status();
        postfix("set-permissions");
        if !postfix("start") {
            println!(
                "(Postfix is installed but the private instance did not start; see {})",
                dir.display()
            );
            return None;
        }
        wait_for_port(addr);
        let pid = fs::read_to_string(dir.join("queue/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Some(Postfix { config, addr, pid })
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
