//! Test harness: runs the real `postilion` binary on a loopback ephemeral port in a temp dir,
//! reads its log, and talks raw SMTP to it. No fixed ports, no sleeps: every wait polls an
//! observable condition under a deadline. A failed test's directory is kept for a look.
#![allow(dead_code)]

pub mod delivery;
pub mod dns;
pub mod sink;
pub mod tls;
pub mod user;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_postilion");
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The header fields a message from one of our own clients (127.0.0.1 is in the default
/// `relay_networks`) must have for nothing to be added to it (README, "Missing headers"):
/// for tests that compare what is stored with what was sent.
pub const COMPLETE: &str =
    "Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <test@client.test>\r\nFrom: ann@client.test\r\n";

/// A fresh directory under the system temp dir; removed on drop unless the test failed.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postilion-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed; its files are kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Polls `condition` until it holds or the deadline passes.
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, DEADLINE, condition);
}

/// Polls `condition` until it holds or `deadline` has passed.
pub fn wait_until_within(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        thread::yield_now();
        thread::park_timeout(Duration::from_millis(5));
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub spool: PathBuf,
    pub mail: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    // The directory outlives the process.
    _dir_guard: Option<Arc<TempDir>>,
    pub dir: PathBuf,
}

/// The standard test set-up: local domain `example.test`, one user `alice`, hostname `mx.test`,
/// delivery paused so that tests of receiving see what was queued.
pub fn base_args(dir: &Path) -> Vec<String> {
    let mail = dir.join("mail");
    fs::create_dir_all(mail.join("alice")).unwrap();
    [
        "--listen",
        "127.0.0.1:0",
        "--spool",
        dir.join("spool").to_str().unwrap(),
        "--mailbox-root",
        mail.to_str().unwrap(),
        "--hostname",
        "mx.test",
        "--local-domains",
        "example.test",
        "--delivery-threads",
        "0",
        // Never the system's resolver: tests talk to loopback only. Nothing answers here.
        "--dns-server",
        "127.0.0.1:1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The flags `base` followed by the flags `extra`: a test file's standard set plus one
/// test's own.
pub fn flags<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

impl Server {
    /// Starts a server in a new temp dir with `base_args` plus `extra`.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        let dir = Arc::new(TempDir::new(name));
        let path = dir.0.clone();
        Server::start_in(&path, extra, Some(dir))
    }

    /// Starts a server on an existing directory (for restarts).
    pub fn start_in(dir: &Path, extra: &[&str], guard: Option<Arc<TempDir>>) -> Server {
        // A flag in `extra` replaces the base one (flags come in `--name value` pairs).
        let mut args: Vec<String> = base_args(dir)
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0].as_str()))
            .flatten()
            .cloned()
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn(dir, &args, &[], guard)
    }

    pub fn spawn(
        dir: &Path,
        args: &[String],
        env: &[(&str, &str)],
        guard: Option<Arc<TempDir>>,
    ) -> Server {
        let mut command = Command::new(BIN);
        command.arg("serve");
        // The tests run as root, as CI does, where the server would switch to the user
        // `postilion`: it stays root unless a test names its own `--user` or `--allow-root`.
        if !args
            .iter()
            .any(|a| a == "--user" || a.starts_with("--allow-root"))
        {
            command.arg("--allow-root");
        }
        command
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start postilion");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = first_listen_addr(&rx, &mut child, &log);
        Server {
            child,
            addr,
            spool: dir.join("spool"),
            mail: dir.join("mail"),
            log,
            _dir_guard: guard,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, needle: &str) -> String {
        let mut found = None;
        wait_until(&format!("log line containing {needle:?}"), || {
            found = self.log_lines().into_iter().find(|l| l.contains(needle));
            found.is_some()
        });
        found.unwrap()
    }

    /// The log lines that contain every one of `parts`.
    pub fn log_lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits for a log line that contains every one of `parts`, and returns it.
    pub fn wait_for_log_with(&self, parts: &[&str]) -> String {
        let mut found = None;
        wait_until(&format!("a log line with {parts:?}"), || {
            found = self.log_lines_with(parts).into_iter().next();
            found.is_some()
        });
        found.unwrap()
    }

    /// The address the server listens on at `[::1]` (for a `--listen` that names `[::1]:0`),
    /// once its log says so.
    pub fn ipv6_addr(&self) -> SocketAddr {
        self.wait_for_log("listening on [::1]:")
            .rsplit("listening on ")
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Names in `spool/queue/` ending in `suffix`, sorted.
    pub fn queue_files(&self, suffix: &str) -> Vec<String> {
        list(&self.spool.join("queue"), suffix)
    }

    pub fn tmp_files(&self) -> Vec<String> {
        list(&self.spool.join("tmp"), "")
    }

    /// The queued message of an id: `ID.msg` past the envelope it carries.
    pub fn queued_message(&self, id: &str) -> Vec<u8> {
        let file = fs::read(self.spool.join("queue").join(format!("{id}.msg"))).unwrap();
        split_queue_file(&file).1.to_vec()
    }

    /// The envelope of an id: `ID.env` once there is one, else the one `ID.msg` carries.
    pub fn queued_envelope(&self, id: &str) -> String {
        let queue = self.spool.join("queue");
        match fs::read_to_string(queue.join(format!("{id}.env"))) {
            Ok(text) => text,
            Err(_) => {
                let file = fs::read(queue.join(format!("{id}.msg"))).unwrap();
                String::from_utf8(split_queue_file(&file).0.to_vec()).unwrap()
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ID.msg` as (the envelope it carries, the message): the envelope runs from the
/// `Version:` line to the first empty line.
pub fn split_queue_file(file: &[u8]) -> (&[u8], &[u8]) {
    if !file.starts_with(b"Version: ") {
        return (&[], file);
    }
    let end = file
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("the carried envelope ends with an empty line");
    (&file[..end + 1], &file[end + 2..])
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log_lines().join("\n"));
        }
    }
}

fn first_listen_addr(
    rx: &Receiver<String>,
    child: &mut Child,
    log: &Arc<Mutex<Vec<String>>>,
) -> SocketAddr {
    let start = Instant::now();
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
            return addr.parse().expect("listen address");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("postilion exited ({status}): {:?}", log.lock().unwrap());
        }
        assert!(
            start.elapsed() < DEADLINE,
            "postilion did not start listening"
        );
    }
}

pub fn list(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A raw SMTP client: send bytes, read whole replies.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    /// Reads one (possibly multi-line) reply; returns its lines joined with `\n`.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply; got {lines:?}"
            );
            let done = line.as_bytes().get(3) == Some(&b' ');
            lines.push(line.trim_end().to_string());
            if done {
                return lines.join("\n");
            }
        }
    }

    /// Sends a command and returns the reply.
    pub fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n"));
        self.reply()
    }

    /// Asserts the reply starts with `prefix` (e.g. "250 2.1.5").
    pub fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply();
        assert!(
            reply.starts_with(prefix) || reply.lines().last().unwrap_or("").starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// True once the server has closed the connection (reads to EOF).
    pub fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }

    /// Greeting and EHLO.
    pub fn hello(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.expect("220 ");
        c.send("EHLO client.test\r\n");
        c.expect("250 ");
        c
    }

    /// Pipelined MAIL, RCPT, DATA for a@client.test to alice@example.test, up to the 354.
    pub fn start_data(&mut self) {
        self.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
        self.expect("250 2.1.0");
        self.expect("250 2.1.5");
        self.expect("354 ");
    }

    /// A whole transaction; returns the final reply after the dot.
    pub fn send_message(&mut self, from: &str, to: &[&str], data: &[u8]) -> String {
        assert!(self
            .command(&format!("MAIL FROM:<{from}>"))
            .starts_with("250"));
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>"));
            assert!(reply.starts_with("250"), "{reply}");
        }
        assert!(self.command("DATA").starts_with("354"));
        self.send(data);
        self.send(b".\r\n");
        self.reply()
    }
}

/// Sends `data` as one message (from `from` to `to`) in a new session after EHLO, and returns
/// its queue id; panics unless the message is queued.
pub fn queue_message(server: &Server, from: &str, to: &[&str], data: &[u8]) -> String {
    queue_id(&Client::hello(server.addr).send_message(from, to, data))
}

/// Clients under load: each sends message after message in one session until stopped, and
/// what each message acknowledged with a 250 stands for is kept. Any failure (the server was
/// killed under it) ends a client quietly.
pub struct Load<T> {
    acked: Arc<Mutex<Vec<T>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Load<T> {
    /// Starts `clients` sessions to `addr` (greeting and EHLO done). Session `client` calls
    /// `send(&mut session, client, n)` for n = 0, 1, 2, ... until stopped; `send` sends message
    /// `n`, checks that it was queued, and returns what to keep for it.
    pub fn start<F>(addr: SocketAddr, clients: usize, send: F) -> Load<T>
    where
        F: Fn(&mut Client, usize, usize) -> T + Send + Sync + 'static,
    {
        let acked: Arc<Mutex<Vec<T>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let send = Arc::new(send);
        let clients = (0..clients)
            .map(|client| {
                let (acked, stop, send) =
                    (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&send));
                thread::spawn(move || {
                    // The server dies under it: any failure ends this client; panics are caught.
                    let _ = panic::catch_unwind(AssertUnwindSafe(move || {
                        let mut c = Client::hello(addr);
                        for n in 0.. {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let kept = send(&mut c, client, n);
                            acked.lock().unwrap().push(kept);
                        }
                    }));
                })
            })
            .collect();
        Load {
            acked,
            stop,
            clients,
        }
    }

    /// How many messages have been acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the clients, waits for them to end, and returns what was kept for each
    /// acknowledged message.
    pub fn stop(self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            let _ = c.join();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// A tmpfs mounted on a directory for a test (a real ENOSPC); unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (e.g. "256k") on it; `None` when that is
    /// not possible (not root). CI and the dev machines are root.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The messages in a Maildir's new/, read, oldest first.
pub fn maildir(user_dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = fs::read_dir(user_dir.join("new"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
        .collect()
}

/// The queue id in a "250 2.0.0 Ok: queued as ID" reply.
pub fn queue_id(reply: &str) -> String {
    reply
        .rsplit("queued as ")
        .next()
        .filter(|_| reply.starts_with("250 2.0.0"))
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"))
        .trim()
        .to_string()
}

/// Splits a queued message into our Received: header and the rest.
pub fn split_received(message: &[u8]) -> (String, Vec<u8>) {
    assert!(
        message.starts_with(b"Received: from "),
        "no Received: first"
    );
    // The header is folded over lines that start with a tab.
    let mut end = 0;
    loop {
        let line_end = message[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
            + end
            + 2;
        end = line_end;
        if message.get(end) != Some(&b'\t') {
            break;
        }
    }
    (
        String::from_utf8(message[..end].to_vec()).unwrap(),
        message[end..].to_vec(),
    )
}
