//! A scriptable receiving SMTP server: answers 2xx by default, or 4xx/5xx per recipient or
//! per message, or drops the connection in the middle of DATA, on command. It records every
//! message it accepted, with the raw bytes as they arrived (dot-stuffed) and unstuffed.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Clone, Debug, Default)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// DATA as it came over the wire, terminator included.
    pub raw: Vec<u8>,
    /// The message after removing dot-stuffing.
    pub message: Vec<u8>,
    pub mail_params: String,
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
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Connections seen (also the dropped ones).
    pub connections: Arc<Mutex<usize>>,
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
        };
        let (received, behaviour, connections) = (
            Arc::clone(&sink.received),
            Arc::clone(&sink.behaviour),
            Arc::clone(&sink.connections),
        );
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                *connections.lock().unwrap() += 1;
                let (received, behaviour) = (Arc::clone(&received), Arc::clone(&behaviour));
                thread::spawn(move || {
                    let _ = serve(stream, &received, &behaviour);
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
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let mut current = Received::default();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let ehlo = behaviour.lock().unwrap().ehlo.clone();
                let mut lines = vec!["sink.test".to_string()];
                lines.extend(ehlo);
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                    .collect()
            }
            "HELO" => "250 sink.test\r\n".to_string(),
            "MAIL" => {
                current = Received::default();
                let rest = &command[10..];
                let end = rest.find('>').map_or(rest.len(), |i| i + 1);
                current.from = rest[..end].to_string();
                current.mail_params = rest[end..].trim().to_string();
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
                out.write_all(b"354 go ahead\r\n")?;
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
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => "500 5.5.2 unknown\r\n".to_string(),
        };
        out.write_all(reply.as_bytes())?;
    }
}
