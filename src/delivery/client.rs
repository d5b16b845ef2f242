//! The SMTP client: one transaction with one server for the recipients of one domain.
//!
//! EHLO (HELO if refused), STARTTLS as `smtp_tls` says, SIZE checked before sending,
//! PIPELINING when offered, dot-stuffing, a reply per recipient, classified by
//! `Outcome::from_reply`; a connection lost before the final reply defers whatever was still
//! open. A server that cannot be used at all (refused connection, time-out, a greeting other
//! than 220, a 421 or a lost connection before MAIL) is reported so the caller tries the
//! next. Each reply must come whole within its time-out and all tries for the domain within
//! one deadline, so a server that trickles bytes cannot hold a delivery thread for hours. The
//! connection is handed back open after the last reply: the caller records the outcomes,
//! then says QUIT.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::outcome::{DsnStatus, Outcome};
use crate::auth::{self, Credentials};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::spool::MessageFile;
use crate::tls::TlsMode;

/// A hostile server cannot make us hold more than this for one reply.
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 100;

/// RFC 5321 4.5.3.2 client time-outs.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT, DATA and QUIT replies.
    pub command: Duration,
    /// Sending the message and waiting for the final reply.
    pub data: Duration,
    /// Everything, for every server of the domain tried, must be over by then.
    pub end: Instant,
}

/// What to send: the envelope and the queued message file.
pub struct Message<'a> {
    pub from: &'a ReversePath,
    pub recipients: &'a [ForwardPath],
    pub file: &'a MessageFile,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// How to protect the connection to one server: TLS, and AUTH for a smarthost.
pub struct Security<'a> {
    pub mode: TlsMode,
    pub config: Arc<ClientConfig>,
    /// The host name, for SNI and (in `verify` mode) the certificate check.
    pub server_name: &'a str,
    /// TLS from the first byte (port 465) instead of STARTTLS.
    pub implicit: bool,
    /// Authenticate with these; never without TLS.
    pub auth: Option<&'a Credentials>,
}

pub enum Attempt {
    /// This server could not be used; the reason. The caller tries the next one.
    NextServer(String),
    /// The transaction ran: one outcome per recipient, in order, whether it was encrypted,
    /// and the connection to close with `quit` once the outcomes are recorded (`None` when
    /// it was lost).
    Done {
        outcomes: Vec<Outcome>,
        tls: bool,
        connection: Option<Connection>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// The lines' texts, joined with a space.
    pub text: String,
    /// Each line's text, for EHLO keywords.
    pub lines: Vec<String>,
}

impl ServerReply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    /// `550 5.1.1 text` for logs and envelopes.
    fn summary(&self) -> String {
        format!("{} {}", self.code, self.text)
    }

    /// The outcome this reply gives to what it answers.
    fn outcome(&self, context: &str) -> Outcome {
        Outcome::from_reply(self.code, &self.text, context)
    }
}

/// The ESMTP extensions we use, from an EHLO reply.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// `AUTH` mechanisms, upper-case.
    pub auth: Vec<String>,
    /// `SIZE n`; `Some(0)` means "no fixed limit".
    pub size: Option<u64>,
}

pub fn extensions(ehlo: &ServerReply) -> Extensions {
    let mut ext = Extensions::default();
    for line in ehlo.lines.iter().skip(1) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("PIPELINING") => ext.pipelining = true,
            Some("8BITMIME") => ext.eight_bit = true,
            Some("SMTPUTF8") => ext.smtputf8 = true,
            Some("STARTTLS") => ext.starttls = true,
            Some("AUTH") => ext.auth = words.by_ref().map(str::to_ascii_uppercase).collect(),
            Some("SIZE") => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            _ => {}
        }
    }
    ext
}

/// The socket, before or after STARTTLS, under the connection's deadlines.
struct Transport {
    stream: Stream,
    /// The socket again, to set its time-outs whatever wraps it.
    tcp: TcpStream,
    /// How long one write may block, and the step's limit (see `Connection::timeout`).
    step: Duration,
    /// The reply being read must be complete by then.
    reply_by: Instant,
    /// The whole transaction must be over by then.
    end: Instant,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// Sets the socket's time-out to what is left before `by` (and the transaction's end).
    fn arm(&self, by: Instant) -> io::Result<()> {
        let left = by.min(self.end).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.expired(by));
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }

    /// The error for `by` (or the transaction's end, if sooner) having passed.
    fn expired(&self, by: Instant) -> io::Error {
        let what = match by < self.end {
            true => "time-out",
            false => "the transaction took too long",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    /// The socket's own time-out (EAGAIN on Linux) is the deadline `by` passing: says so.
    fn timed_out(&self, by: Instant, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(by),
            _ => e,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let by = self.reply_by;
        self.arm(by)?;
        let read = match &mut self.stream {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        };
        read.map_err(|e| self.timed_out(by, e))
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let by = Instant::now() + self.step;
        self.arm(by)?;
        let written = match &mut self.stream {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        };
        written.map_err(|e| self.timed_out(by, e))
    }
    fn flush(&mut self) -> io::Result<()> {
        let by = Instant::now() + self.step;
        self.arm(by)?;
        let flushed = match &mut self.stream {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        };
        flushed.map_err(|e| self.timed_out(by, e))
    }
}

/// An open connection to one server.
pub struct Connection {
    reader: BufReader<Transport>,
    /// Commands waiting for `flush`: a pipelined batch goes out in one write.
    out: Vec<u8>,
}

impl Connection {
    fn send(&mut self, line: &str) -> io::Result<()> {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let transport = self.reader.get_mut();
        transport.write_all(&self.out)?;
        self.out.clear();
        transport.flush()
    }

    /// Sends one command and reads its reply.
    fn command(&mut self, line: &str) -> io::Result<ServerReply> {
        self.send(line)?;
        self.flush()?;
        self.reply()
    }

    /// From now on each reply must come whole, and each write go out, within `timeout`.
    fn timeout(&mut self, timeout: Duration) {
        self.reader.get_mut().step = timeout;
    }

    fn is_tls(&self) -> bool {
        matches!(self.reader.get_ref().stream, Stream::Tls(_))
    }

    /// Ends the session politely; the outcomes are already recorded, so nothing hangs on it.
    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }

    /// After `220` to STARTTLS: the handshake, then everything goes through TLS. Bytes the
    /// server sent before the handshake would be an injection (CVE-2011-0411): refused.
    fn start_tls(&mut self, tls: &Security) -> io::Result<()> {
        if !self.reader.buffer().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data pipelined after STARTTLS",
            ));
        }
        let name = ServerName::try_from(tls.server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connection =
            ClientConnection::new(Arc::clone(&tls.config), name).map_err(io::Error::other)?;
        let transport = self.reader.get_mut();
        let by = Instant::now() + transport.step;
        let mut stream = StreamOwned::new(connection, transport.tcp.try_clone()?);
        while stream.conn.is_handshaking() {
            transport.arm(by)?;
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| transport.timed_out(by, e))?;
        }
        // The plain reader is empty (checked above) and its socket lives on in `stream`.
        transport.stream = Stream::Tls(Box::new(stream));
        Ok(())
    }

    /// Reads one reply, possibly multi-line, bounded in size and in time.
    fn reply(&mut self) -> io::Result<ServerReply> {
        let transport = self.reader.get_mut();
        transport.reply_by = Instant::now() + transport.step;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut lines = Vec::new();
        let mut code = 0;
        loop {
            let mut raw = Vec::new();
            (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut raw)?;
            if raw.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if !raw.ends_with(b"\n") {
                // Longer than we keep: the rest of the line is skipped, never taken for
                // the next reply.
                self.skip_line()?;
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let this: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad("malformed reply"))?;
            if !(200..600).contains(&this) || (code != 0 && this != code) {
                return Err(bad("malformed reply code"));
            }
            code = this;
            lines.push(line.get(4..).unwrap_or("").to_string());
            match line.as_bytes().get(3) {
                Some(b'-') if lines.len() < MAX_REPLY_LINES => {}
                Some(b'-') => return Err(bad("reply too long")),
                _ => break,
            }
        }
        Ok(ServerReply {
            code,
            text: lines.join(" "),
            lines,
        })
    }

    /// Reads and drops input up to and including the next LF (within the reply's deadline).
    fn skip_line(&mut self) -> io::Result<()> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    self.reader.consume(lf + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
    }
}

/// One transaction with the server at `addr`, which we greet as `helo`. In `may` mode a
/// failed TLS handshake is followed by a second try in plaintext, as Postfix does.
pub fn deliver(
    addr: SocketAddr,
    helo: &str,
    message: &Message,
    timeouts: Timeouts,
    tls: &Security,
) -> Attempt {
    match deliver_once(addr, helo, message, timeouts, tls) {
        Err(why) if tls.mode == TlsMode::May && tls.auth.is_none() && !tls.implicit => {
            log::info!("{addr}: {why}; trying again without TLS");
            let plain = Security {
                mode: TlsMode::None,
                config: Arc::clone(&tls.config),
                server_name: tls.server_name,
                implicit: false,
                auth: None,
            };
            deliver_once(addr, helo, message, timeouts, &plain).unwrap_or_else(Attempt::NextServer)
        }
        result => result.unwrap_or_else(Attempt::NextServer),
    }
}

/// `Err` when TLS could not be set up (so the caller may try without it).
fn deliver_once(
    addr: SocketAddr,
    helo: &str,
    message: &Message,
    timeouts: Timeouts,
    tls: &Security,
) -> Result<Attempt, String> {
    let start = Instant::now();
    let left = timeouts.end.saturating_duration_since(start);
    if left.is_zero() {
        return Ok(Attempt::NextServer("no time left for this domain".into()));
    }
    let stream = match TcpStream::connect_timeout(&addr, timeouts.connect.min(left)) {
        Ok(stream) => stream,
        Err(e) => return Ok(Attempt::NextServer(format!("connect to {addr}: {e}"))),
    };
    let _ = stream.set_nodelay(true);
    let tcp = match stream.try_clone() {
        Ok(tcp) => tcp,
        Err(e) => return Ok(Attempt::NextServer(format!("{addr}: {e}"))),
    };
    let mut conn = Connection {
        reader: BufReader::new(Transport {
            stream: Stream::Plain(stream),
            tcp,
            step: timeouts.command,
            reply_by: start,
            end: timeouts.end,
        }),
        out: Vec::with_capacity(1024),
    };
    if tls.implicit {
        if let Err(e) = conn.start_tls(tls) {
            return Ok(Attempt::NextServer(format!("TLS with {addr} failed: {e}")));
        }
    }
    let mut open: Vec<Option<Outcome>> = vec![None; message.recipients.len()];
    let result = hello(&mut conn, helo, tls).and_then(|hello| match hello {
        Ok(ext) => transaction(&mut conn, &ext, message, timeouts, &mut open).map(|()| None),
        Err(next_server) => Ok(Some(next_server)),
    });
    let outcomes = |open: Vec<Option<Outcome>>, lost: &str| -> Vec<Outcome> {
        open.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::deferred(DsnStatus::new(4, 4, 2), lost)))
            .collect()
    };
    match result {
        Ok(Some(next_server)) => Ok(Attempt::NextServer(next_server)),
        Ok(None) => {
            conn.timeout(timeouts.command);
            Ok(Attempt::Done {
                outcomes: outcomes(open, "451 4.4.2 no reply"),
                tls: conn.is_tls(),
                connection: Some(conn),
            })
        }
        Err((Stage::Tls, e)) => Err(format!("TLS with {addr} failed: {e}")),
        // Nothing was sent yet: as good as a refused connection.
        Err((stage @ (Stage::Greeting | Stage::Hello), e)) => {
            Ok(Attempt::NextServer(format!("{addr}: {e} while {stage}")))
        }
        Err((stage, e)) => {
            let lost = format!("451 4.4.2 lost connection with {addr} while {stage}: {e}");
            Ok(Attempt::Done {
                outcomes: outcomes(open, &lost),
                tls: conn.is_tls(),
                connection: None,
            })
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Greeting,
    Hello,
    Tls,
    Envelope,
    Data,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "waiting for the greeting",
            Stage::Hello => "saying hello",
            Stage::Tls => "starting TLS",
            Stage::Envelope => "sending the envelope",
            Stage::Data => "sending the message",
        })
    }
}

type Step<T> = Result<T, (Stage, io::Error)>;

fn at(stage: Stage) -> impl Fn(io::Error) -> (Stage, io::Error) {
    move |e| (stage, e)
}

/// Greeting, EHLO (or HELO), STARTTLS. `Ok(Err(why))`: this server is not to be used.
fn hello(conn: &mut Connection, helo: &str, tls: &Security) -> Step<Result<Extensions, String>> {
    let greeting = conn.reply().map_err(at(Stage::Greeting))?;
    if greeting.code != 220 {
        return Ok(Err(format!("greeting: {}", greeting.summary())));
    }
    let ehlo = conn
        .command(&format!("EHLO {helo}"))
        .map_err(at(Stage::Hello))?;
    let must_encrypt = matches!(tls.mode, TlsMode::Encrypt | TlsMode::Verify) || tls.auth.is_some();
    if ehlo.class() == 4 {
        // 421: the server is closing (busy, or going down): the next one may take it.
        return Ok(Err(format!("EHLO: {}", ehlo.summary())));
    }
    if ehlo.class() != 2 {
        if must_encrypt {
            return Ok(Err(format!(
                "TLS is required but EHLO was refused: {}",
                ehlo.summary()
            )));
        }
        let reply = conn
            .command(&format!("HELO {helo}"))
            .map_err(at(Stage::Hello))?;
        if reply.class() != 2 {
            return Ok(Err(format!("HELO: {}", reply.summary())));
        }
        return Ok(Ok(Extensions::default()));
    }
    let ext = extensions(&ehlo);
    if conn.is_tls() || (!must_encrypt && (tls.mode == TlsMode::None || !ext.starttls)) {
        return authenticate(conn, ext, tls);
    }
    if !ext.starttls {
        return Ok(Err(format!(
            "TLS is required (smtp_tls = {}) but the server does not offer STARTTLS",
            tls.mode
        )));
    }
    let reply = conn.command("STARTTLS").map_err(at(Stage::Hello))?;
    if reply.code == 421 {
        // The server is closing; another may take the mail. (Other refusals in `may` mode
        // go on in plaintext, as Postfix does.)
        return Ok(Err(format!("STARTTLS: {}", reply.summary())));
    }
    if reply.code != 220 {
        return match must_encrypt {
            true => Ok(Err(format!("STARTTLS refused: {}", reply.summary()))),
            false => Ok(Ok(ext)),
        };
    }
    conn.start_tls(tls).map_err(at(Stage::Tls))?;
    // RFC 3207 4.2: forget what the server said before TLS; ask again.
    let ehlo = conn
        .command(&format!("EHLO {helo}"))
        .map_err(at(Stage::Hello))?;
    if ehlo.class() != 2 {
        return Ok(Err(format!("EHLO after STARTTLS: {}", ehlo.summary())));
    }
    authenticate(conn, extensions(&ehlo), tls)
}

/// AUTH PLAIN (or LOGIN) when credentials are set, over TLS only; never logs them.
fn authenticate(
    conn: &mut Connection,
    ext: Extensions,
    security: &Security,
) -> Step<Result<Extensions, String>> {
    let Some(credentials) = security.auth else {
        return Ok(Ok(ext));
    };
    if !conn.is_tls() {
        return Ok(Err("refusing to send credentials without TLS".into()));
    }
    let hello = at(Stage::Hello);
    let reply = if ext.auth.iter().any(|m| m == "PLAIN") {
        conn.command(&format!("AUTH PLAIN {}", credentials.plain()))
            .map_err(&hello)?
    } else if ext.auth.iter().any(|m| m == "LOGIN") {
        let mut reply = conn.command("AUTH LOGIN").map_err(&hello)?;
        for answer in [&credentials.user, &credentials.password] {
            if reply.code != 334 {
                break;
            }
            reply = conn
                .command(&auth::base64(answer.as_bytes()))
                .map_err(&hello)?;
        }
        reply
    } else {
        return Ok(Err(
            "the server offers neither AUTH PLAIN nor AUTH LOGIN".into()
        ));
    };
    match reply.code {
        235 => Ok(Ok(ext)),
        _ => Ok(Err(format!(
            "authentication as {} failed: {}",
            credentials.user,
            reply.summary()
        ))),
    }
}

/// MAIL, RCPT, DATA and the message, filling `open` with each recipient's outcome.
fn transaction(
    conn: &mut Connection,
    ext: &Extensions,
    message: &Message,
    timeouts: Timeouts,
    open: &mut [Option<Outcome>],
) -> Step<()> {
    let fail_all = |open: &mut [Option<Outcome>], outcome: Outcome| {
        open.iter_mut().for_each(|o| *o = Some(outcome.clone()))
    };
    if let Some(limit) = ext.size.filter(|&limit| limit > 0 && message.size > limit) {
        let why = format!(
            "552 5.3.4 message of {} bytes exceeds the size limit {limit} of the server",
            message.size
        );
        fail_all(open, Outcome::failed(DsnStatus::new(5, 3, 4), why));
        return Ok(());
    }
    if message.smtputf8 && !ext.smtputf8 {
        let why = "553 5.6.7 the server does not support SMTPUTF8";
        fail_all(open, Outcome::failed(DsnStatus::new(5, 6, 7), why));
        return Ok(());
    }
    let mut mail = format!("MAIL FROM:{}", message.from);
    if ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", message.size));
    }
    if message.eight_bit && ext.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if message.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    let envelope = at(Stage::Envelope);
    conn.send(&mail).map_err(&envelope)?;
    let mail_reply = if ext.pipelining {
        for rcpt in message.recipients {
            conn.send(&format!("RCPT TO:{rcpt}")).map_err(&envelope)?;
        }
        conn.send("DATA").map_err(&envelope)?;
        conn.flush().map_err(&envelope)?;
        conn.reply().map_err(&envelope)?
    } else {
        conn.flush().map_err(&envelope)?;
        let reply = conn.reply().map_err(&envelope)?;
        if reply.class() != 2 {
            fail_all(open, reply.outcome("MAIL FROM"));
            return Ok(());
        }
        reply
    };
    let mut accepted = Vec::new();
    for (i, rcpt) in message.recipients.iter().enumerate() {
        let reply = if ext.pipelining {
            conn.reply()
        } else {
            conn.command(&format!("RCPT TO:{rcpt}"))
        }
        .map_err(&envelope)?;
        if mail_reply.class() != 2 {
            continue;
        }
        let context = format!("RCPT TO:{rcpt}");
        match reply.code {
            200..=299 => accepted.push(i),
            // RFC 5321 4.5.3.1.10: an old server's 552 for too many recipients is temporary.
            552 => {
                let text = format!("{} (in reply to {context})", reply.summary());
                let status = reply
                    .text
                    .split_whitespace()
                    .next()
                    .and_then(DsnStatus::parse)
                    .map_or(DsnStatus::new(4, 5, 3), |s| {
                        DsnStatus::new(4, s.subject, s.detail)
                    });
                open[i] = Some(Outcome::deferred(status, text));
            }
            _ => open[i] = Some(reply.outcome(&context)),
        }
    }
    let data_reply = match (ext.pipelining, accepted.is_empty()) {
        (true, _) => conn.reply().map_err(&envelope)?,
        (false, false) => conn.command("DATA").map_err(&envelope)?,
        (false, true) => return Ok(()),
    };
    if mail_reply.class() != 2 {
        fail_all(open, mail_reply.outcome("MAIL FROM"));
    }
    if data_reply.code != 354 {
        for &i in &accepted {
            open[i] = Some(data_reply.outcome("DATA"));
        }
        return Ok(());
    }
    conn.timeout(timeouts.data);
    if accepted.is_empty() || mail_reply.class() != 2 {
        // The server wants a message nobody will get: end it at once (RFC 2920 3.1).
        let _ = conn.command(".");
        return Ok(());
    }
    let mut writer = BufWriter::with_capacity(64 * 1024, conn.reader.get_mut());
    send_message(&mut writer, message.file)
        .and_then(|()| writer.flush())
        .map_err(at(Stage::Data))?;
    drop(writer);
    // The server has the whole message now: it gets its full time to answer, whatever is
    // left of the domain's (RFC 1047: giving up here is what makes duplicates).
    let transport = conn.reader.get_mut();
    transport.end = transport.end.max(Instant::now() + timeouts.data);
    let final_reply = conn.reply().map_err(at(Stage::Data))?;
    for &i in &accepted {
        open[i] = Some(final_reply.outcome("end of DATA"));
    }
    Ok(())
}

/// Copies the message with dot-stuffing, then the terminator. The queued message ends with
/// CRLF and has CRLF line ends only, so what leaves is what was queued.
fn send_message(out: &mut impl Write, message: &MessageFile) -> io::Result<()> {
    let mut file = message.open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut line_start = true;
    let mut last_two = [b'\r', b'\n'];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut from = 0;
        for i in 0..n {
            if line_start && buf[i] == b'.' {
                out.write_all(&buf[from..i])?;
                out.write_all(b".")?;
                from = i;
            }
            line_start = buf[i] == b'\n';
        }
        out.write_all(&buf[from..n])?;
        last_two = match n {
            1 => [last_two[1], buf[0]],
            _ => [buf[n - 2], buf[n - 1]],
        };
    }
    if last_two != [b'\r', b'\n'] {
        out.write_all(b"\r\n")?;
    }
    out.write_all(b".\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> ServerReply {
        ServerReply {
            code,
            text: lines.join(" "),
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn ehlo_keywords() {
        let ext = extensions(&reply(
            250,
            &[
                "mx hello",
                "PIPELINING",
                "SIZE 1000",
                "8BITMIME",
                "smtputf8",
                "STARTTLS",
            ],
        ));
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                eight_bit: true,
                smtputf8: true,
                starttls: true,
                auth: Vec::new(),
                size: Some(1000)
            }
        );
        assert_eq!(extensions(&reply(250, &["mx", "SIZE"])).size, Some(0));
    }

    #[test]
    fn replies_give_outcomes_through_the_one_classifier() {
        let refused = reply(550, &["5.1.1 no such user"]).outcome("RCPT TO:<a@b>");
        assert_eq!(refused.status, DsnStatus::new(5, 1, 1));
        assert_eq!(
            refused.text,
            "550 5.1.1 no such user (in reply to RCPT TO:<a@b>)"
        );
        let odd = reply(354, &["go on"]).outcome("end of DATA");
        assert_eq!(odd.action, super::super::outcome::Action::Deferred);
    }

    #[test]
    fn dot_stuffing_keeps_bytes_and_adds_the_terminator() {
        let dir = std::env::temp_dir().join(format!("postilion-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m");
        std::fs::write(&path, b".one\r\ntwo.\r\n..three\r\n\xff8bit\r\n").unwrap();
        let mut out = Vec::new();
        send_message(&mut out, &MessageFile::whole(&path)).unwrap();
        assert_eq!(out, b"..one\r\ntwo.\r\n...three\r\n\xff8bit\r\n.\r\n");
        std::fs::write(&path, b"no final line end").unwrap();
        let mut out = Vec::new();
        send_message(&mut out, &MessageFile::whole(&path)).unwrap();
        assert_eq!(out, b"no final line end\r\n.\r\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
