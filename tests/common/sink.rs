//! A scriptable receiving SMTP server: answers 2xx by default, or 4xx/5xx per recipient or
//! per message, or drops the connection in the middle of DATA, on command; offers STARTTLS
//! (rustls, an rcgen certificate) and AUTH PLAIN/LOGIN when told to. It records every
//! message it accepted, with the raw bytes as they arrived (dot-stuffed) and unstuffed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A server TLS configuration with a fresh self-signed certificate for `name`.
pub fn tls_config(name: &str) -> Arc<ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    Arc::new(config)
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn handshake(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<Stream> {
    let mut tls = StreamOwned::new(
        ServerConnection::new(config).map_err(io::Error::other)?,
        tcp,
    );
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Stream::Tls(Box::new(tls)))
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Holds replies back until the test opens it; counts who waits.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::default()
    }

    /// Blocks until the gate is open.
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    pub fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    /// How many have come to the gate (and waited, or passed).
    pub fn arrived(&self) -> usize {
        self.state.lock().unwrap().1
    }
}

#[derive(Clone, Debug, Default)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// DATA as it came over the wire, terminator included.
    pub raw: Vec<u8>,
    /// The message after removing dot-stuffing.
    pub message: Vec<u8>,
    pub mail_params: String,
    /// The message came over TLS.
    pub tls: bool,
    /// The user that authenticated, if any.
    pub auth: Option<String>,
}

/// What the sink does; change it while it runs.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub ehlo: Vec<String>,
    /// Reply to RCPT by address (lower-case); others get 250.
    pub rcpt: HashMap<String, String>,
    /// Replies after DATA's final dot, used up one per message; then 250.
    pub final_replies: VecDeque<String>,
    /// Drop the connection after this many DATA lines, for the next N messages.
    pub drop_in_data: usize,
    /// Offer STARTTLS with this configuration.
    pub starttls: Option<Arc<ServerConfig>>,
    /// Speak TLS from the first byte (port 465 style).
    pub implicit_tls: Option<Arc<ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN (after TLS only) and accept this user and password.
    pub auth: Option<(String, String)>,
    /// After a message's final dot, never answer: wait for the client to go away.
    pub hold_final: bool,
    /// After a message's final dot, wait at this gate before answering.
    pub final_gate: Option<Arc<Gate>>,
    /// Answer EHLO with this instead (e.g. `421 4.3.2 busy`); HELO too.
    pub ehlo_refusal: Option<String>,
    /// Hang up right after reading EHLO, answering nothing.
    pub drop_at_ehlo: bool,
    /// Wait at this gate before answering QUIT.
    pub quit_gate: Option<Arc<Gate>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            ehlo: vec![
                "PIPELINING".into(),
                "8BITMIME".into(),
                "SIZE 10485760".into(),
                "SMTPUTF8".into(),
            ],
            rcpt: HashMap::new(),
            final_replies: VecDeque::new(),
            drop_in_data: 0,
            starttls: None,
            implicit_tls: None,
            auth: None,
            hold_final: false,
            final_gate: None,
            ehlo_refusal: None,
            drop_at_ehlo: false,
            quit_gate: None,
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Connections seen (also the dropped ones).
    pub connections: Arc<Mutex<usize>>,
    /// Messages read in full but held without a reply (`hold_final`).
    pub held: Arc<Mutex<usize>>,
}

impl Sink {
    /// Listens on `addr` (e.g. `127.0.0.3:0`, or a given port on another loopback address).
    pub fn start(addr: &str) -> Sink {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind sink {addr}: {e}"));
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            behaviour: Arc::default(),
            connections: Arc::default(),
            held: Arc::default(),
        };
        let (received, behaviour, connections, held) = (
            Arc::clone(&sink.received),
            Arc::clone(&sink.behaviour),
            Arc::clone(&sink.connections),
            Arc::clone(&sink.held),
        );
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                *connections.lock().unwrap() += 1;
                let (received, behaviour, held) = (
                    Arc::clone(&received),
                    Arc::clone(&behaviour),
                    Arc::clone(&held),
                );
                thread::spawn(move || {
                    let _ = serve(stream, &received, &behaviour, &held);
                });
            }
        });
        sink
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }
}

fn serve(
    stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    behaviour: &Mutex<Behaviour>,
    held: &Mutex<usize>,
) -> io::Result<()> {
    let implicit = behaviour.lock().unwrap().implicit_tls.clone();
    let mut reader = BufReader::new(match implicit {
        Some(config) => handshake(config, stream)?,
        None => Stream::Plain(stream),
    });
    reader
        .get_mut()
        .write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let mut current = Received::default();
    let mut authenticated: Option<String> = None;
    loop {
        let is_tls = matches!(reader.get_ref(), Stream::Tls(_));
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let refusal = behaviour.lock().unwrap().ehlo_refusal.clone();
        let drop_at_ehlo = behaviour.lock().unwrap().drop_at_ehlo;
        let reply = match verb.as_str() {
            "EHLO" | "HELO" if drop_at_ehlo => return Ok(()),
            "EHLO" | "HELO" if refusal.is_some() => format!("{}\r\n", refusal.unwrap_or_default()),
            "EHLO" => {
                let b = behaviour.lock().unwrap().clone();
                let mut lines = vec!["sink.test".to_string()];
                lines.extend(b.ehlo);
                if b.starttls.is_some() && !is_tls {
                    lines.push("STARTTLS".into());
                }
                if b.auth.is_some() && is_tls {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                    .collect()
            }
            "STARTTLS" => {
                let config = behaviour.lock().unwrap().starttls.clone();
                match (config, reader.into_inner()) {
                    (Some(config), Stream::Plain(mut tcp)) => {
                        tcp.write_all(b"220 2.0.0 go ahead\r\n")?;
                        reader = BufReader::new(handshake(config, tcp)?);
                        current = Received::default();
                        continue;
                    }
                    (_, stream) => {
                        reader = BufReader::new(stream);
                        "502 5.5.1 no TLS here\r\n".to_string()
                    }
                }
            }
            "AUTH" => {
                let expected = behaviour.lock().unwrap().auth.clone().filter(|_| is_tls);
                let Some((user, pass)) = expected else {
                    reader.get_mut().write_all(b"503 5.5.1 no AUTH here\r\n")?;
                    continue;
                };
                let words: Vec<&str> = command.split(' ').collect();
                let mut ask = |prompt: &[u8]| -> io::Result<String> {
                    reader.get_mut().write_all(prompt)?;
                    let mut answer = String::new();
                    reader.read_line(&mut answer)?;
                    Ok(answer.trim_end().to_string())
                };
                let ok = match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
                    Some("PLAIN") => {
                        let given = match words.get(2) {
                            Some(given) => given.to_string(),
                            None => ask(b"334 \r\n")?,
                        };
                        given == b64(format!("\0{user}\0{pass}").as_bytes())
                    }
                    Some("LOGIN") => {
                        let u = ask(b"334 VXNlcm5hbWU6\r\n")?;
                        let p = ask(b"334 UGFzc3dvcmQ6\r\n")?;
                        u == b64(user.as_bytes()) && p == b64(pass.as_bytes())
                    }
                    _ => false,
                };
                if ok {
                    authenticated = Some(user);
                    "235 2.7.0 authenticated\r\n".to_string()
                } else {
                    "535 5.7.8 bad credentials\r\n".to_string()
                }
            }
            "HELO" => "250 sink.test\r\n".to_string(),
            "MAIL" => {
                current = Received::default();
                let rest = &command[10..];
                let end = rest.find('>').map_or(rest.len(), |i| i + 1);
                current.from = rest[..end].to_string();
                current.mail_params = rest[end..].trim().to_string();
                current.tls = is_tls;
                current.auth = authenticated.clone();
                "250 2.1.0 ok\r\n".to_string()
            }
            "RCPT" => {
                let addr = command[8..]
                    .trim_matches(['<', '>'])
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_lowercase();
                let reply = behaviour.lock().unwrap().rcpt.get(&addr).cloned();
                match reply {
                    Some(reply) => format!("{reply}\r\n"),
                    None => {
                        current.rcpts.push(addr);
                        "250 2.1.5 ok\r\n".to_string()
                    }
                }
            }
            "DATA" if current.rcpts.is_empty() => "554 5.5.1 no valid recipients\r\n".to_string(),
            "DATA" => {
                reader.get_mut().write_all(b"354 go ahead\r\n")?;
                let drop_after = {
                    let mut b = behaviour.lock().unwrap();
                    if b.drop_in_data > 0 {
                        b.drop_in_data -= 1;
                        Some(2)
                    } else {
                        None
                    }
                };
                let mut lines = 0;
                loop {
                    let mut raw = Vec::new();
                    if reader.read_until(b'\n', &mut raw)? == 0 {
                        return Ok(());
                    }
                    current.raw.extend_from_slice(&raw);
                    lines += 1;
                    if drop_after == Some(lines) {
                        return Ok(()); // hang up mid-DATA
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    let unstuffed = if raw.starts_with(b".") {
                        &raw[1..]
                    } else {
                        &raw[..]
                    };
                    current.message.extend_from_slice(unstuffed);
                }
                if behaviour.lock().unwrap().hold_final {
                    *held.lock().unwrap() += 1;
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest); // until the client is gone
                    return Ok(());
                }
                let gate = behaviour.lock().unwrap().final_gate.clone();
                if let Some(gate) = gate {
                    gate.pass();
                }
                let reply = behaviour.lock().unwrap().final_replies.pop_front();
                match reply {
                    Some(reply) => format!("{reply}\r\n"),
                    None => {
                        received.lock().unwrap().push(std::mem::take(&mut current));
                        "250 2.0.0 accepted\r\n".to_string()
                    }
                }
            }
            "RSET" | "NOOP" => "250 2.0.0 ok\r\n".to_string(),
            "QUIT" => {
                let gate = behaviour.lock().unwrap().quit_gate.clone();
                if let Some(gate) = gate {
                    gate.pass();
                }
                reader.get_mut().write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => "500 5.5.2 unknown\r\n".to_string(),
        };
        reader.get_mut().write_all(reply.as_bytes())?;
    }
}
