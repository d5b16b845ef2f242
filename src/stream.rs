//! A client connection's byte stream, plaintext or TLS, and the server side of the TLS
//! handshake under a deadline of its own. Moves bytes only: what they mean is the session's.
//!
//! Every read waits at most until a deadline the caller sets (`read_within`), TLS or not: a
//! client trickling a TLS record a byte at a time cannot keep one `read` going past it (rustls
//! reads the socket again and again while a record is incomplete).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};

/// The most a client may take over its part of a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Stream {
    Plain(Timed),
    Tls(Box<StreamOwned<ServerConnection, Timed>>),
}

/// A socket whose reads must be over by `read_by`; writes keep the socket's own time-out.
pub struct Timed {
    pub tcp: TcpStream,
    read_by: Instant,
}

impl Timed {
    fn new(tcp: TcpStream) -> Timed {
        Timed {
            tcp,
            read_by: Instant::now() + HANDSHAKE_TIMEOUT,
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.read_by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Stream {
    pub fn new(tcp: TcpStream) -> Stream {
        Stream::Plain(Timed::new(tcp))
    }

    /// The socket underneath, for write time-outs.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(timed) => &timed.tcp,
            Stream::Tls(tls) => &tls.sock.tcp,
        }
    }

    /// The next read (however many socket reads it takes) waits at most `wait`.
    pub fn read_within(&mut self, wait: Duration) {
        let by = Instant::now() + wait;
        match self {
            Stream::Plain(timed) => timed.read_by = by,
            Stream::Tls(tls) => tls.sock.read_by = by,
        }
    }

    /// Runs the server side of a handshake on this stream's socket and continues over TLS;
    /// says what was agreed (`TLSv1.3 with cipher ...`). A client that sends garbage, stalls
    /// or hangs up gets an error, within `timeout` (at most `HANDSHAKE_TIMEOUT`).
    pub fn start_tls(
        &mut self,
        connection: ServerConnection,
        timeout: Duration,
    ) -> io::Result<String> {
        let limit = timeout.min(HANDSHAKE_TIMEOUT);
        let mut timed = Timed::new(self.tcp().try_clone()?);
        timed.read_by = Instant::now() + limit;
        timed.tcp.set_write_timeout(Some(limit))?;
        let mut tls = StreamOwned::new(connection, timed);
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok((0, 0)) if tls.conn.wants_read() => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
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
            Stream::Plain(timed) => timed.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(timed) => timed.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(timed) => timed.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}
