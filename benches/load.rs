//! `make bench`: load figures for the real binary, beside a private Postfix where installed.
//!
//! Acceptance: 4 KiB messages over loopback at 1 and 20 concurrent sessions (pipelined MAIL,
//! RCPT, DATA, as an MTA client sends them): messages/s, p50/p99 transaction latency, the
//! server's RSS (idle, with 100 idle connections, peak) and the binary size; accepted mail is
//! held (Postilion: delivery paused; Postfix: HOLD). Delivery: 2000 such messages accepted
//! and relayed to a sink on loopback, end to end. Postfix, when `postfix` is on the PATH, gets
//! its own config and queue under target/bench, a loopback port, stock settings otherwise.
//! Rounds alternate between the two servers so disk drift hits both alike. Nothing leaves
//! the machine: relaying goes to the sink, and no DNS lookup is made.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_postilion");
const MESSAGE_SIZE: usize = 4096;
const ROUNDS: usize = 3;
/// Messages per round: (sessions, messages per session).
const LOADS: [(usize, usize); 2] = [(1, 300), (20, 100)];

fn main() {
    let work = PathBuf::from("target/bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("create target/bench");
    let work = work.canonicalize().expect("target/bench path");
    let message = message();

    let postilion = Postilion::start(&work.join("postilion"), &["--delivery-threads", "0"]);
    let postfix = Postfix::start(&work.join("postfix"), HOLD);
    if postfix.is_none() {
        println!("(Postfix not installed: `apt-get install postfix` to compare in the same run)");
    }

    println!(
        "binary: {:.2} MiB (release, stripped)",
        mib(fs::metadata(BIN).map(|m| m.len()).unwrap_or(0))
    );
    // RSS of a server in its default configuration (delivery threads running, idle).
    let idle_server = Postilion::start(
        &work.join("postilion-idle"),
        &["--dns-server", "127.0.0.1:1"],
    );
    println!(
        "idle RSS (default configuration): {:.2} MiB",
        mib(rss(idle_server.child.id(), "VmRSS"))
    );
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| idle_connection(idle_server.addr))
        .collect();
    println!(
        "RSS with 100 idle connections: {:.2} MiB",
        mib(rss(idle_server.child.id(), "VmRSS"))
    );
    drop(idle);
    drop(idle_server);

    println!();
    println!(
        "{:>8}  {:<9}  {:>9}  {:>8}  {:>8}",
        "sessions", "server", "msg/s", "p50 ms", "p99 ms"
    );
    for (sessions, per_session) in LOADS {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..ROUNDS {
            let run = load(postilion.addr, sessions, per_session, &message);
            run.print(sessions, "postilion");
            ours.push(run.rate);
            if let Some(postfix) = &postfix {
                let run = load(postfix.addr, sessions, per_session, &message);
                run.print(sessions, "postfix");
                theirs.push(run.rate);
            }
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        match postfix {
            Some(_) => println!(
                "{sessions:>8}  median: postilion {ours:.0} msg/s, postfix {theirs:.0} msg/s, ratio {:.2}x\n",
                ours / theirs
            ),
            None => println!("{sessions:>8}  median: postilion {ours:.0} msg/s\n"),
        }
    }
    println!(
        "peak RSS: {:.2} MiB",
        mib(rss(postilion.child.id(), "VmHWM"))
    );
    println!("(every message fsync'd before its 250: file, envelope and queue directory)");
    drop(postilion);
    drop(postfix);
    delivery(&work, &message);
}

const HOLD: &str =
    "# Accepted mail waits on hold, as Postilion's waits in queue/: nothing is sent.\n\
                    smtpd_data_restrictions = check_client_access static:HOLD\n";
const DELIVERY_MESSAGES: usize = 2000;

/// 2000 messages from 20 sessions, timed until the sink has every one.
fn delivery(work: &Path, message: &[u8]) {
    println!();
    println!(
        "delivery: {DELIVERY_MESSAGES} messages of 4 KiB accepted (20 sessions) and relayed to a sink on loopback"
    );
    let sink = Sink::start();
    let relay = sink.addr.to_string();
    let postilion = Postilion::start(
        &work.join("postilion-relay"),
        &["--relayhost", &relay, "--smtp-tls", "none"],
    );
    let ours = relay_run(postilion.addr, &sink, message);
    println!(
        "  postilion: {ours:.2} s end to end, {:.0} msg/s",
        DELIVERY_MESSAGES as f64 / ours
    );
    drop(postilion);
    let relayhost = format!("relayhost = [127.0.0.1]:{}\n", sink.addr.port());
    if let Some(postfix) = Postfix::start(&work.join("postfix-relay"), &relayhost) {
        let theirs = relay_run(postfix.addr, &sink, message);
        println!(
            "  postfix:   {theirs:.2} s end to end, {:.0} msg/s",
            DELIVERY_MESSAGES as f64 / theirs
        );
        println!("  ratio: {:.2}x", theirs / ours);
    }
}

fn relay_run(addr: SocketAddr, sink: &Sink, message: &[u8]) -> f64 {
    let before = sink.count.load(Ordering::SeqCst);
    let start = Instant::now();
    load(addr, 20, DELIVERY_MESSAGES / 20, message);
    while sink.count.load(Ordering::SeqCst) < before + DELIVERY_MESSAGES {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "relaying did not finish in 10 minutes"
        );
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed().as_secs_f64()
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

struct Session {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Session {
    fn open(addr: SocketAddr) -> Session {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let _ = stream.set_nodelay(true);
        let reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut s = Session { stream, reader };
        s.expect(b'2');
        s.stream.write_all(b"EHLO client.test\r\n").expect("write");
        s.expect(b'2');
        s
    }

    /// Reads one reply and checks its first digit.
    fn expect(&mut self, class: u8) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "server closed the connection");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert_eq!(line.as_bytes()[0], class, "unexpected reply: {line}");
    }

    fn send(&mut self, message: &[u8]) {
        self.stream
            .write_all(
                b"MAIL FROM:<bench@client.test>\r\nRCPT TO:<someone@remote.test>\r\nDATA\r\n",
            )
            .expect("write");
        self.expect(b'2');
        self.expect(b'2');
        self.expect(b'3');
        let mut data = Vec::with_capacity(message.len() + 3);
        data.extend_from_slice(message);
        data.extend_from_slice(b".\r\n");
        self.stream.write_all(&data).expect("write");
        self.expect(b'2');
    }
}

fn idle_connection(addr: SocketAddr) -> TcpStream {
    Session::open(addr).stream
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn print(&self, sessions: usize, server: &str) {
        println!(
            "{sessions:>8}  {server:<9}  {:>9.0}  {:>8.2}  {:>8.2}",
            self.rate,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        );
    }
}

fn load(addr: SocketAddr, sessions: usize, per_session: usize, message: &[u8]) -> Run {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let workers: Vec<_> = (0..sessions)
        .map(|_| {
            let (tx, message) = (tx.clone(), message.to_vec());
            thread::spawn(move || {
                let mut session = Session::open(addr);
                for _ in 0..per_session {
                    let t = Instant::now();
                    session.send(&message);
                    let _ = tx.send(t.elapsed());
                }
                let _ = session.stream.write_all(b"QUIT\r\n");
            })
        })
        .collect();
    drop(tx);
    let mut latencies: Vec<Duration> = rx.iter().collect();
    for w in workers {
        w.join().expect("load session failed");
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

struct Postilion {
    child: Child,
    addr: SocketAddr,
}

impl Postilion {
    fn start(dir: &Path, extra: &[&str]) -> Postilion {
        fs::create_dir_all(dir).expect("bench dir");
        let log = fs::File::create(dir.join("log")).expect("log file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(BIN)
            .arg("serve")
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postilion");
        wait_for_port(addr);
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
        Some(Postfix { config, addr })
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
