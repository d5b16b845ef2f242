//! A client connection's byte stream, plaintext or TLS, and the server side of the TLS
//! handshake under a deadline of its own. Moves bytes only: what they mean is the session's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

/// The most a client may take over its part of a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    /// The socket underneath, for time-outs.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// Runs the server side of a handshake on this stream's socket and continues over TLS;
    /// says what was agreed (`TLSv1.3 with cipher ...`). A client that sends garbage, stalls
    /// or hangs up gets an error, within `HANDSHAKE_TIMEOUT`.
    pub fn start_tls(&mut self, connection: ServerConnection) -> io::Result<String> {
        let mut tls = StreamOwned::new(connection, self.tcp().try_clone()?);
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while tls.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake time-out",
                ));
            }
            tls.sock.set_read_timeout(Some(left))?;
            tls.sock.set_write_timeout(Some(left))?;
            match tls.conn.complete_io(&mut tls.sock) {
                Ok((0, 0)) if tls.conn.wants_read() => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "handshake time-out",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let agreed = crate::tls::describe(&tls.conn);
        *self = Stream::Tls(Box::new(tls));
        Ok(agreed)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}
