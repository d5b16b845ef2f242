//! The control socket, `spool/control`: a Unix stream socket through which the queue tools
//! ask the running daemon to act (the daemon's side: an accepting thread, and a thread for
//! each request, one request per connection, bounded in size and time) and the tools' side (`ask`). Only root and the daemon's own uid
//! are answered, checked with SO_PEERCRED on top of the socket's mode 0600 in a 0700 spool.
//! The protocol is `request.rs`; what an action does is the handler's business.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::request::{Reply, Request, MAX_REQUEST};

/// How long a client may take to send its request or read the reply: a stuck one cannot
/// wedge the control thread for longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a tool waits for the daemon's answer (`flush` of a big queue writes every
/// envelope).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests answered at once; more are told to try again.
const MAX_REQUESTS: usize = 16;

/// The socket's path in a spool.
pub fn path(spool: &Path) -> PathBuf {
    spool.join("control")
}

/// The running control thread; `stop` ends it and removes the socket.
pub struct ControlSocket {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ControlSocket {
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wakes the accept; the thread then sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Requests still being answered are not waited for: actions waiting for a worker were
        // answered when delivery stopped, a flush of the whole queue stops at its next
        // message, and each edit is whole on disk whenever the process ends.
        let _ = fs::remove_file(&self.path);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `spool/control` afresh (a stale one from a crash is removed: the spool lock says
/// no other daemon uses this spool), mode 0600, and answers each request with `handle`
/// (given the request and who asked, for the log).
pub fn serve<F>(spool: &Path, handle: F) -> io::Result<ControlSocket>
where
    F: Fn(&Request, &str) -> Reply + Send + Sync + 'static,
{
    let path = path(spool);
    // Made under another name and renamed once 0600: never seen with another mode.
    let fresh = path.with_extension("new");
    for stale in [&path, &fresh] {
        match fs::remove_file(stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let listener = UnixListener::bind(&fresh)?;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o600))?;
    fs::rename(&fresh, &path)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stopping);
    // The threads answering requests, to count them (finished ones are dropped at each
    // new request).
    let running: Arc<Mutex<Vec<thread::JoinHandle<()>>>> = Arc::default();
    let handle = Arc::new(handle);
    let thread = thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        log::warn!("control socket: accept: {e}");
                        continue;
                    }
                };
                // A request may wait for a worker (up to its patience): each has a thread
                // of its own, so that none waits behind another past the tool's own wait.
                // Only root and the daemon's user can connect (0600).
                let mut running = lock(&running);
                running.retain(|request| !request.is_finished());
                if running.len() >= MAX_REQUESTS {
                    // A script asking in a loop: it is told to try again.
                    let _ = (&stream).write_all(b"451 busy: too many requests at once\r\n");
                    continue;
                }
                let handle = Arc::clone(&handle);
                let spawned = thread::Builder::new()
                    .name("control-request".into())
                    .spawn(move || answer(stream, &*handle));
                match spawned {
                    Ok(request) => running.push(request),
                    Err(e) => log::warn!("control socket: cannot start a thread: {e}"),
                }
            }
        })?;
    Ok(ControlSocket {
        path,
        stopping,
        thread: Some(thread),
    })
}

/// One connection: read one line, check the peer, answer, close. The line is read first
/// (bounded in size and time) so that a refused client reads its refusal.
fn answer(stream: UnixStream, handle: &impl Fn(&Request, &str) -> Reply) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut line = Vec::new();
    let read = BufReader::new(&stream)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut line);
    let peer = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            log::warn!("control socket: cannot tell who connected: {e}");
            return;
        }
    };
    let (uid, pid) = (peer.uid.as_raw(), peer.pid.as_raw_nonzero());
    let origin = format!("uid {uid}, pid {pid}");
    let reply = match read {
        Ok(0) => return, // connected and went away (or the stop's wake-up)
        _ if uid != 0 && uid != rustix::process::geteuid().as_raw() => {
            log::warn!(
                "control socket: refused uid {uid} (pid {pid}): only root and this daemon's \
                 user may use it"
            );
            Reply::new(530, "permission denied: only root and the mail user")
        }
        Ok(_) if line.last() == Some(&b'\n') => {
            line.pop();
            match std::str::from_utf8(&line).map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                Ok(text) => match Request::parse(text) {
                    Ok(request) => handle(&request, &origin),
                    Err(why) => Reply::new(500, why),
                },
                Err(_) => Reply::new(500, "not UTF-8"),
            }
        }
        Ok(_) => Reply::new(500, "request too long or not ended by a line end"),
        Err(e) => {
            log::warn!("control socket: reading a request ({origin}): {e}");
            return;
        }
    };
    if let Err(e) = (&stream).write_all(reply.to_text().as_bytes()) {
        log::warn!("control socket: answering ({origin}): {e}");
    }
}

/// Why `ask` got no answer.
#[derive(Debug)]
pub enum AskError {
    /// No socket, or nothing listening on it: the daemon is not running.
    NotRunning,
    /// Connected, but the answer did not come (or made no sense).
    NoAnswer(String),
}

/// Sends one request to the daemon of `spool` and reads its reply.
pub fn ask(spool: &Path, request: &Request) -> Result<Reply, AskError> {
    let stream = UnixStream::connect(path(spool)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AskError::NotRunning,
        _ => AskError::NoAnswer(format!("cannot connect to {}: {e}", path(spool).display())),
    })?;
    let no_answer = |e: io::Error| AskError::NoAnswer(e.to_string());
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(no_answer)?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(no_answer)?;
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(no_answer)?;
    let mut reply = Reply::default();
    for line in BufReader::new(&stream).take(1 << 20).lines() {
        let line = line.map_err(no_answer)?;
        if reply.read_line(&line).map_err(AskError::NoAnswer)? {
            return Ok(reply);
        }
    }
    Err(AskError::NoAnswer(
        "the daemon closed the connection without an answer".into(),
    ))
}
