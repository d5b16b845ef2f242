//! Listeners and connections: blocking `std::net`, one small-stack thread per client, capped
//! in total and per client address, with the RFC 5321 server timeouts.
//!
//! A thin loop around `smtp::session`: read (bounded), hand bytes over, carry out its outputs
//! (write replies, stream the message into the spool, commit, start TLS), repeat. Protocol
//! decisions live in the session, durability in the spool; this file only moves bytes and
//! logs. Each listener has a role (smtp, submission, submissions): the submissions role
//! speaks TLS from the first byte.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::{Config, Role};
use crate::directory::Directory;
use crate::envelope::Envelope;
use crate::missing_headers::{Defaults, HeaderFill};
use crate::smtp::received;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::Password;
use crate::smtp::session::{AuthVerdict, Output, Session, SessionConfig, Timeout};
use crate::spool::{Incoming, Spool, SpoolError};
use crate::stream::Stream;
use crate::tls::ServerTls;
use crate::users::UsersFile;

/// Stack of a connection thread: the session lives on the heap, so little is needed.
const STACK_SIZE: usize = 256 * 1024;
/// The most read from a client at once; bounds what one read can make the session queue.
const READ_BUFFER: usize = 32 * 1024;

/// Pending connections the kernel may hold while the accept loop catches up.
const BACKLOG: i32 = 1024;
/// The longest a read waits before the connection looks whether the server is stopping.
const TICK: Duration = Duration::from_secs(1);
/// A zero time-out means "none" to the socket: never ask for less than this.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// How long the last bytes to a client may take once its place is given back: the overload
/// reply, or the final replies of a closed session.
const PARTING_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// A wrong password is answered after this pause (Postfix's `smtpd_error_sleep_time`).
const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// After this many AUTH failures from one client (IPv6: one /64) within the window, its
/// AUTH commands get 454 unchecked until the window passes without another.
const MAX_AUTH_FAILURES: u32 = 10;
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Clients whose failures are remembered before old entries are dropped.
const MAX_AUTH_FAILURE_CLIENTS: usize = 10_000;

/// Binds a listener. An IPv6 address serves IPv6 only, so `0.0.0.0:25` and `[::]:25` can be
/// listed together (Linux would otherwise give `[::]` IPv4 too, and the second bind fails).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Everything connection threads share.
pub struct Server {
    pub config: Arc<Config>,
    session_configs: HashMap<Role, Arc<SessionConfig>>,
    /// The certificate, when one is configured.
    tls: Option<ServerTls>,
    /// The users who may authenticate, when there is a `users_file`.
    users: Option<UsersFile>,
    /// Recent AUTH failures by client (`limit_key`): how many, and when the last was.
    auth_failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Held while a password is checked: one argon2 check (19 MiB) at a time, however many
    /// clients try at once, so memory stays small on a small box.
    verifying: Mutex<()>,
    pub spool: Arc<Spool>,
    pub directory: Arc<Directory>,
    /// Queue ids of committed messages, for the delivery side.
    pub queued: Sender<String>,
    limits: Limits,
    next_id: AtomicU64,
    /// Set once a stop was asked for: when transactions in flight must be over.
    shutdown: OnceLock<Instant>,
    /// Connection threads running (a stop waits for their last replies to be written).
    alive: Alive,
}

impl Server {
    pub fn new(
        config: Arc<Config>,
        tls: Option<ServerTls>,
        users: Option<UsersFile>,
        spool: Arc<Spool>,
        directory: Arc<Directory>,
        queued: Sender<String>,
    ) -> Server {
        let session_configs = [Role::Smtp, Role::Submission, Role::Submissions]
            .into_iter()
            .map(|role| {
                let session_config = SessionConfig {
                    hostname: config.hostname.clone(),
                    message_size_limit: config.message_size_limit,
                    max_recipients: config.max_recipients,
                    bare_newline: config.bare_newline,
                    local_domains: config.local_domains.clone(),
                    role,
                    starttls: tls.is_some() && role != Role::Submissions,
                    auth: users.is_some() && (role != Role::Smtp || config.smtp_auth),
                    sender_login_match: config.sender_login_match,
                };
                (role, Arc::new(session_config))
            })
            .collect();
        let limits = Limits {
            max_total: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            counts: Mutex::new((0, HashMap::new())),
        };
        Server {
            config,
            session_configs,
            tls,
            users,
            auth_failures: Mutex::default(),
            verifying: Mutex::default(),
            spool,
            directory,
            queued,
            limits,
            next_id: AtomicU64::new(1),
            shutdown: OnceLock::new(),
            alive: Alive::default(),
        }
    }

    /// Accepts on every listener, each in a thread of its own, until the process ends.
    pub fn run(self: &Arc<Self>, listeners: Vec<(Role, TcpListener)>) -> io::Result<()> {
        for (role, listener) in listeners {
            let server = Arc::clone(self);
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || server.accept_loop(role, listener))?;
        }
        Ok(())
    }

    fn accept_loop(self: Arc<Self>, role: Role, listener: TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => self.admit(role, stream, peer),
                Err(e) => {
                    // EMFILE and friends pass; exiting would drop every other client.
                    log::warn!("accept failed: {e}; pausing briefly");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Stops taking mail: new connections get 421, idle sessions are closed with 421, and
    /// transactions in flight may finish until `deadline`. Returns once no session is left,
    /// or at the deadline, with the number of sessions still open.
    /// SIGHUP: the certificate and the local recipients (users and aliases) read again now.
    pub fn reload(&self) {
        if let Some(tls) = &self.tls {
            tls.reload_now();
        }
        let table = self.directory.table();
        log::info!(
            "SIGHUP: local recipients: {} users, {} aliases",
            table.users.len(),
            table.aliases.len()
        );
    }

    pub fn shut_down(&self, deadline: Instant) -> usize {
        let _ = self.shutdown.set(deadline);
        // Sessions look at the clock every `TICK`: give those cut at the deadline the time
        // to say 421.
        self.alive.wait_for_none(deadline + 2 * TICK)
    }

    fn admit(self: &Arc<Self>, role: Role, mut stream: TcpStream, peer: SocketAddr) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.shutdown.get().is_some() {
            log::info!("c{id} reject: connection from {peer}: shutting down");
            refuse(&mut stream, Reply::shutting_down());
            return;
        }
        let key = limit_key(peer.ip());
        if !self.limits.take(key) {
            log::warn!("c{id} reject: connection from {peer}: too many connections");
            refuse(&mut stream, Reply::too_many_connections());
            return;
        }
        let server = Arc::clone(self);
        self.alive.enter();
        let spawned = thread::Builder::new()
            .name(format!("smtp-c{id}"))
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let _alive = Leave(&server.alive);
                let slot = Slot {
                    limits: &server.limits,
                    key: Some(key),
                };
                server.serve(role, stream, peer, id, slot);
            });
        if let Err(e) = spawned {
            log::error!("c{id} cannot start a thread for {peer}: {e}");
            self.alive.leave();
            self.limits.release(key);
        }
    }

    fn serve<'a>(
        &'a self,
        role: Role,
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        slot: Slot<'a>,
    ) {
        match role {
            Role::Smtp => log::info!("c{id} connect from {peer}"),
            _ => log::info!("c{id} connect from {peer} ({})", role.name()),
        }
        let mut stream = Stream::new(stream);
        let mut tls = None;
        if role == Role::Submissions {
            match self.start_tls(id, role, &mut stream) {
                Ok(agreed) => tls = Some(agreed),
                Err(e) => {
                    log::info!("c{id} disconnect from {peer}: TLS handshake failed: {e}");
                    return;
                }
            }
        }
        let may_relay = self
            .config
            .relay_networks
            .iter()
            .any(|n| n.contains(peer.ip()));
        let session = Session::new(
            Arc::clone(&self.session_configs[&role]),
            peer,
            may_relay,
            self.directory.names(),
            tls,
        );
        let mut conn = Connection {
            server: self,
            role,
            peer,
            id,
            slot,
            stream,
            session,
            may_relay,
            message: Message::None,
            out: Vec::with_capacity(512),
            messages: 0,
        };
        let end = conn.run();
        log::info!(
            "c{id} disconnect from {peer}: {end}, {} queued",
            conn.messages
        );
    }
}

impl Server {
    /// Checks a user's credentials: a failure is answered after a pause, and a client with
    /// many recent failures is not even checked.
    fn authenticate(
        &self,
        id: u64,
        peer: SocketAddr,
        name: &str,
        password: &Password,
    ) -> AuthVerdict {
        let Some(users) = &self.users else {
            return AuthVerdict::Refused;
        };
        let key = limit_key(peer.ip());
        let checked = {
            // One check at a time, the throttle looked at and a failure counted inside it, so
            // that clients trying in parallel cannot all pass before the first failure counts.
            let _one_at_a_time = self.verifying.lock();
            if self.recent_failures(key) >= MAX_AUTH_FAILURES {
                log::warn!(
                    "c{id} AUTH refused unchecked: too many failures from {}",
                    peer.ip()
                );
                return AuthVerdict::Throttled;
            }
            let Some(users) = users.get() else {
                log::error!("c{id} AUTH refused: the users file cannot be read");
                return AuthVerdict::Unavailable;
            };
            let checked = users.verify(name, password.0.as_bytes());
            if checked.is_none() {
                self.count_failure(key);
            }
            checked
        };
        match checked {
            Some(login) => {
                log::info!("c{id} authenticated as {}", login.name);
                AuthVerdict::Accepted(login)
            }
            None => {
                let shown = escape_name(name);
                log::warn!("c{id} AUTH failed for '{shown}' from {}", peer.ip());
                thread::sleep(AUTH_FAILURE_DELAY);
                AuthVerdict::Refused
            }
        }
    }

    /// AUTH failures from `key` within the window.
    fn recent_failures(&self, key: IpAddr) -> u32 {
        // A poisoned lock still counts: the throttle never fails open.
        let failures = self
            .auth_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match failures.get(&key) {
            Some(&(count, last)) if last.elapsed() < AUTH_FAILURE_WINDOW => count,
            _ => 0,
        }
    }

    fn count_failure(&self, key: IpAddr) {
        let count = self.recent_failures(key) + 1;
        let mut failures = self
            .auth_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.insert(key, (count, Instant::now()));
        if failures.len() > MAX_AUTH_FAILURE_CLIENTS {
            failures.retain(|_, (_, last)| last.elapsed() < AUTH_FAILURE_WINDOW);
        }
        if failures.len() > MAX_AUTH_FAILURE_CLIENTS {
            // A flood from very many addresses: forget all but the clients being throttled.
            failures.retain(|_, (count, _)| *count >= MAX_AUTH_FAILURES);
        }
    }

    /// The TLS handshake on a client's stream, logged; says what was agreed.
    fn start_tls(&self, id: u64, role: Role, stream: &mut Stream) -> io::Result<String> {
        let Some(tls) = &self.tls else {
            return Err(io::Error::other("no certificate configured"));
        };
        let connection = tls.accept(role).map_err(io::Error::other)?;
        let agreed = stream.start_tls(connection, self.config.command_timeout)?;
        log::info!("c{id} TLS established: {agreed}");
        Ok(agreed)
    }
}

/// A login name as the log shows it: printable ASCII, at most 64 characters.
fn escape_name(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Writes a refusal (overload, shutdown) without blocking the accept loop for long.
fn refuse(stream: &mut TcpStream, reply: Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = stream.set_write_timeout(Some(PARTING_WRITE_TIMEOUT));
    let _ = stream.write_all(&out);
}

/// The address a client's connections are counted under: an IPv4 address (also when mapped
/// into IPv6) as itself, an IPv6 address by its /64, the least one site is given, so that a
/// client cannot pass the limit by using many addresses of its own network.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// Connection counts, total and per client address (`limit_key`).
struct Limits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Limits {
    /// Counts a new connection from `ip`, unless that would pass a limit.
    fn take(&self, ip: IpAddr) -> bool {
        let Ok(mut counts) = self.counts.lock() else {
            return false;
        };
        let (total, per_ip) = &mut *counts;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max_total || mine >= self.max_per_ip {
            return false;
        }
        per_ip.insert(ip, mine + 1);
        *total += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut counts) = self.counts.lock() {
            let (total, per_ip) = &mut *counts;
            *total = total.saturating_sub(1);
            if let Some(mine) = per_ip.get_mut(&ip) {
                *mine -= 1;
                if *mine == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// How many connection threads run, for a stop to wait on.
#[derive(Default)]
struct Alive {
    count: Mutex<usize>,
    ended: Condvar,
}

impl Alive {
    fn enter(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn leave(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        self.ended.notify_all();
    }

    /// Waits until no connection thread is left or `deadline` passes; how many are left.
    fn wait_for_none(&self, deadline: Instant) -> usize {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = match self.ended.wait_timeout(count, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *count
    }
}

/// Counts a connection thread out when it ends, however it ends.
struct Leave<'a>(&'a Alive);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// One admitted connection's place. Given back when its session closes, before the client can
/// read the final reply and connect again; or, at the latest, when its thread ends. Once only.
struct Slot<'a> {
    limits: &'a Limits,
    /// The `limit_key` it is counted under; `None` once given back.
    key: Option<IpAddr>,
}

impl Slot<'_> {
    fn release(&mut self) {
        if let Some(key) = self.key.take() {
            self.limits.release(key);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The message being received, if any.
// One per connection, never copied around: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Message<'a> {
    None,
    /// With what fills in missing headers, for clients whose headers we complete.
    Open(Incoming<'a>, Envelope, Option<HeaderFill>),
    /// The spool could not even start it; DATA is read and answered 451.
    Failed(SpoolError),
}

struct Connection<'a> {
    server: &'a Server,
    role: Role,
    peer: SocketAddr,
    id: u64,
    slot: Slot<'a>,
    stream: Stream,
    session: Session,
    /// The client is in `relay_networks`: its messages get missing headers added.
    may_relay: bool,
    message: Message<'a>,
    /// Replies waiting to be written.
    out: Vec<u8>,
    messages: usize,
}

impl Connection<'_> {
    /// Serves until the session closes or the socket fails; says how it ended.
    fn run(&mut self) -> String {
        let mut buf = vec![0u8; READ_BUFFER];
        // When the client last sent something: the RFC 5321 timeouts count from there.
        let mut heard = Instant::now();
        loop {
            if let Err(end) = self.carry_out() {
                return end;
            }
            if self.session.is_closed() {
                return "closed".into();
            }
            let timeout = match self.session.timeout() {
                Timeout::Command => self.server.config.command_timeout,
                Timeout::Data => self.server.config.data_timeout,
            };
            if let Some(&deadline) = self.server.shutdown.get() {
                // Stopping: an idle session ends now, one in a transaction at the deadline.
                if !self.session.in_transaction() || Instant::now() >= deadline {
                    self.note_lost("shutting down");
                    self.session.handle_shutdown();
                    continue;
                }
            }
            // Reads wake up at least every second, to notice a stop.
            let left = timeout.saturating_sub(heard.elapsed());
            self.stream.read_within(left.clamp(MIN_WAIT, TICK));
            let _ = self.stream.tcp().set_write_timeout(Some(timeout));
            let read = self.stream.read(&mut buf);
            if read.is_ok() {
                heard = Instant::now();
            }
            match read {
                Ok(0) => {
                    self.note_lost("client closed the connection");
                    self.session.handle_eof();
                }
                Ok(n) => {
                    let mut used = 0;
                    while used < n && !self.session.is_closed() {
                        used += self.session.handle_input(&buf[used..n]);
                        if let Err(end) = self.carry_out() {
                            return end;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && heard.elapsed() < timeout => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    log::info!("c{} timeout after {}", self.id, self.session.last_command());
                    self.note_lost("timeout");
                    self.session.handle_timeout();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.note_lost(&e.to_string());
                    self.session.handle_eof();
                }
            }
        }
    }

    fn note_lost(&self, why: &str) {
        if !matches!(self.message, Message::None) {
            log::warn!(
                "c{} lost connection in DATA ({why}): message discarded",
                self.id
            );
        }
    }

    /// Drains the session's outputs and writes its replies; `Err` says why the connection
    /// cannot go on.
    fn carry_out(&mut self) -> Result<(), String> {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Reply(reply) => {
                    if reply.is_error() {
                        log::info!("c{} {reply}", self.id);
                    }
                    reply.write_to(&mut self.out);
                }
                Output::Refusal(reply, command) => {
                    log::info!("c{} reject: {command}: {reply}", self.id);
                    reply.write_to(&mut self.out);
                }
                Output::MessageStart(envelope) => self.start_message(envelope),
                Output::MessageData(bytes) => {
                    if let Message::Open(incoming, _, fill) = &mut self.message {
                        match fill {
                            Some(fill) => {
                                let mut out = Vec::with_capacity(bytes.len());
                                fill.feed(&bytes, &mut out);
                                incoming.write(&out);
                            }
                            None => incoming.write(&bytes),
                        }
                    }
                }
                Output::MessageEnd => self.commit(),
                // Dropping the Incoming removes its temp file.
                Output::MessageAbort => self.message = Message::None,
                // The replies drained so far end the session: the client may reconnect as
                // soon as it reads them, so its place is free first. The place no longer
                // bounds this thread, so neither may a client that stops reading.
                Output::Close => {
                    self.slot.release();
                    let _ = self
                        .stream
                        .tcp()
                        .set_write_timeout(Some(PARTING_WRITE_TIMEOUT));
                }
                Output::Authenticate { name, password } => {
                    let verdict = self
                        .server
                        .authenticate(self.id, self.peer, &name, &password);
                    self.session.handle_auth_result(verdict);
                }
                // The session drops what was pipelined behind STARTTLS; the 220 goes first.
                Output::StartTls => {
                    self.write_out()?;
                    match self.server.start_tls(self.id, self.role, &mut self.stream) {
                        Ok(agreed) => self.session.handle_tls_started(agreed),
                        Err(e) => return Err(format!("TLS handshake failed: {e}")),
                    }
                }
            }
        }
        self.write_out()
    }

    fn write_out(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            let result = self.stream.write_all(&self.out);
            self.out.clear();
            result.map_err(|e| format!("write failed: {e}"))?;
        }
        Ok(())
    }

    fn start_message(&mut self, mut envelope: Envelope) {
        envelope.arrival = crate::datetime::now();
        self.message = match self.server.spool.incoming(&envelope) {
            Ok(mut incoming) => {
                let header = received::header(
                    &envelope,
                    &self.server.config.hostname,
                    incoming.id(),
                    envelope.arrival,
                    self.session.tls(),
                );
                incoming.write(header.as_bytes());
                // As Postfix does for its local clients: Date:, Message-ID: and From: when
                // missing, for our own networks and users, never for the world's mail.
                let fill = (self.may_relay || envelope.auth.is_some()).then(|| {
                    HeaderFill::new(Defaults::new(
                        envelope.arrival,
                        incoming.id(),
                        &self.server.config.hostname,
                        &envelope.reverse_path,
                        None,
                    ))
                });
                Message::Open(incoming, envelope, fill)
            }
            Err(e) => Message::Failed(e),
        };
    }

    fn commit(&mut self) {
        let result = match std::mem::replace(&mut self.message, Message::None) {
            Message::Open(mut incoming, mut envelope, fill) => {
                if let Some(mut fill) = fill {
                    let mut out = Vec::new();
                    fill.finish(&mut out);
                    incoming.write(&out);
                }
                let result = incoming.commit(&mut envelope);
                if let Ok(queued) = &result {
                    self.accepted(queued.id(), &envelope);
                }
                result
            }
            Message::Failed(e) => Err(e),
            Message::None => Err(SpoolError::Io {
                action: "commit",
                path: self.server.spool.root().into(),
                source: io::ErrorKind::NotFound.into(),
            }),
        };
        if let Err(e) = &result {
            log::error!("c{} queue write failed: {e}", self.id);
        }
        self.session.handle_committed(result);
    }

    fn accepted(&mut self, id: &str, envelope: &Envelope) {
        self.messages += 1;
        let to: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.path.to_string())
            .collect();
        let auth = envelope
            .auth
            .as_ref()
            .map_or(String::new(), |name| format!(" auth={name}"));
        log::info!(
            "c{} {id}: from={} to={} size={} nrcpt={}{auth}",
            self.id,
            envelope.reverse_path,
            to.join(","),
            envelope.size,
            to.len()
        );
        // Unbounded: a session never blocks on delivery.
        let _ = self.server.queued.send(id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> IpAddr {
        limit_key(ip.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2:abcd::9"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), key("::"));
    }

    #[test]
    fn ipv4_clients_are_counted_by_their_address_also_when_mapped() {
        assert_eq!(key("192.0.2.1"), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
    }

    #[test]
    fn a_slot_is_given_back_once() {
        let limits = Limits {
            max_total: 2,
            max_per_ip: 1,
            counts: Mutex::new((0, HashMap::new())),
        };
        let client = key("192.0.2.1");
        assert!(limits.take(client));
        assert!(!limits.take(client));
        let mut slot = Slot {
            limits: &limits,
            key: Some(client),
        };
        slot.release();
        // Another connection takes the place; the first slot's drop must not free it too.
        assert!(limits.take(client));
        drop(slot);
        assert!(!limits.take(client));
    }
}
