//! `make bench`: load figures for the real binary, beside a private Postfix where installed.
//!
//! Sends 4 KiB messages over loopback at 1 and 20 concurrent sessions (pipelined MAIL, RCPT,
//! DATA, as an MTA client sends them) and prints messages/s, p50/p99 transaction latency, the
//! server's RSS (idle, with 100 idle connections, peak) and the binary size. Postfix, when
//! `postfix` is on the PATH, gets its own config and queue under target/bench, a loopback port,
//! stock settings otherwise; accepted mail is put on hold, as Postilion's waits in queue/.
//! Rounds alternate between the two servers so disk drift hits both alike.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

    let postilion = Postilion::start(&work.join("postilion"));
    let postfix = Postfix::start(&work.join("postfix"));
    if postfix.is_none() {
        println!("(Postfix not installed: `apt-get install postfix` to compare in the same run)");
    }

    println!(
        "binary: {:.2} MiB (release, stripped)",
        mib(fs::metadata(BIN).map(|m| m.len()).unwrap_or(0))
    );
    println!(
        "idle RSS: {:.2} MiB",
        mib(rss(postilion.child.id(), "VmRSS"))
    );
    let idle: Vec<TcpStream> = (0..100).map(|_| idle_connection(postilion.addr)).collect();
    println!(
        "RSS with 100 idle connections: {:.2} MiB",
        mib(rss(postilion.child.id(), "VmRSS"))
    );
    drop(idle);

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
    fn start(dir: &Path) -> Postilion {
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
    fn start(dir: &Path) -> Option<Postfix> {
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
             # Accepted mail waits on hold, as Postilion's waits in queue/: nothing is sent.\n\
             smtpd_data_restrictions = check_client_access static:HOLD\n",
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
