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
    /// or hangs up gets an error, within `timeout` (at most `HANDSHAKE_TIMEOUT`).
    pub fn start_tls(
        &mut self,
        connection: ServerConnection,
        timeout: Duration,
    ) -> io::Result<String> {
        let tcp = self.tcp().try_clone()?;
        let mut tls = StreamOwned::new(connection, tcp.try_clone()?);
        // Every read and write of the handshake gets only what is left of the deadline: a
        // client trickling its ClientHello a byte at a time is cut off on time.
        let mut io = Deadline {
            tcp: &tcp,
            by: Instant::now() + timeout.min(HANDSHAKE_TIMEOUT),
        };
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut io) {
                Ok((0, 0)) if tls.conn.wants_read() => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            }
        }
        let agreed = crate::tls::describe(&tls.conn);
        *self = Stream::Tls(Box::new(tls));
        Ok(agreed)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "handshake time-out")
}

/// A socket whose every operation must be over by `by`.
struct Deadline<'a> {
    tcp: &'a TcpStream,
    by: Instant,
}

impl Deadline<'_> {
    fn arm(&self) -> io::Result<()> {
        let left = self.by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        let mut tcp = self.tcp;
        tcp.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        let mut tcp = self.tcp;
        tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut tcp = self.tcp;
        tcp.flush()
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
