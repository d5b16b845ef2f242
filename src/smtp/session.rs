//! The server side of one SMTP connection as a state machine: bytes in, outputs out.
//!
//! The caller moves bytes (`handle_input`), reports what happened outside (`handle_committed`,
//! `handle_eof`, `handle_timeout`) and drains `poll_output` after each call. No sockets, files,
//! clocks or DNS in here, so every reply is unit-tested and the whole thing can be fuzzed.
//! Commands pipelined in one read are answered in order: input stops being consumed at the end
//! of a message until the caller has reported the spool's verdict on it.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::address::{ForwardPath, ReversePath};
use super::command::{self, Command, MailParams, ParseError};
use super::data::{BareNewline, DataReader, Verdict};
use super::policy::{self, RecipientRules, Refusal};
use super::reply::Reply;
use super::sasl::{Exchange, Password};
use crate::config::Role;
use crate::envelope::{Envelope, Recipient};
use crate::spool::{Queued, SpoolError};
use crate::users::Login;

/// RFC 5321 4.5.3.1.4: 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 4: an AUTH command or response line, CRLF included.
pub const MAX_AUTH_LINE: usize = 12288;
/// RCPT commands past `max_recipients` answered 452 before each more counts as an error, as
/// Postfix's `smtpd_recipient_overshoot_limit`: a client that never stops is cut off.
pub const MAX_RECIPIENT_OVERSHOOT: usize = 1000;
/// Errors (4xx/5xx replies) before we give up on a client, as Postfix's hard limit. A 452 for
/// too many recipients is not counted (the client did nothing wrong), and a refused message
/// counts once however many BDAT chunks are answered with its refusal.
pub const MAX_ERRORS: u32 = 20;

/// The settings a session needs, shared by all sessions.
#[derive(Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub bare_newline: BareNewline,
    /// Lower-case.
    pub local_domains: Vec<String>,
    pub role: Role,
    /// A certificate is configured: STARTTLS is offered (until TLS is on).
    pub starttls: bool,
    /// AUTH is offered on this role (over TLS only).
    pub auth: bool,
    /// An authenticated user may use only its own addresses in MAIL FROM.
    pub sender_login_match: bool,
}

/// What checking a user's credentials came to.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    Accepted(Login),
    Refused,
    /// Too many failures from this client lately: not even checked.
    Throttled,
    /// The users cannot be read now (a users file edited into a bad state).
    Unavailable,
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Reply(Reply),
    /// An error reply to a command, with that command (escaped) for the log.
    Refusal(Reply, String),
    /// DATA was accepted: open a spool file for this envelope.
    MessageStart(Envelope),
    /// Message content: dot-unstuffed, CRLF line ends.
    MessageData(Vec<u8>),
    /// The message ended well: commit it and call `handle_committed`.
    MessageEnd,
    /// Throw the message away (too big, refused, or the client went away).
    MessageAbort,
    /// Close the connection after sending the replies before this.
    Close,
    /// Check these credentials and call `handle_auth_result`.
    Authenticate {
        name: String,
        password: Password,
    },
    /// Send the replies before this, drop whatever else the client sent (it was pipelined
    /// behind STARTTLS: CVE-2011-0411), do the TLS handshake, then call
    /// `handle_tls_started`, or close if it fails.
    StartTls,
}

/// Which RFC 5321 4.5.3.2 server timeout applies while waiting for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Command,
    Data,
}

#[derive(Clone, Debug)]
struct Helo {
    name: String,
    extended: bool,
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    /// Distinct addresses: a repeated one is delivered once.
    recipients: Vec<ForwardPath>,
    /// RCPT commands accepted, a repeated address too: what `max_recipients` bounds.
    accepted_rcpts: usize,
    refused_recipients: usize,
    /// RCPT commands past `max_recipients`.
    overshoot: usize,
    /// A BDAT chunk was refused for want of recipients; later ones are, too, uncounted.
    chunk_refused: bool,
}

#[derive(Debug)]
enum State {
    /// Greeted; no HELO/EHLO yet.
    Fresh,
    Ready(Helo),
    Mail(Helo, Transaction),
    /// Reading message content; `aborted` once `MessageAbort` was sent.
    Data {
        helo: Helo,
        reader: DataReader,
        aborted: bool,
    },
    /// A BDAT transaction: `remaining` octets of the current chunk are still to come; at 0
    /// the next command is read (more BDAT, or RSET). `last` marks the final chunk.
    /// `refusal_sent` once a chunk was answered with the message's refusal (counted once).
    Bdat {
        helo: Helo,
        reader: DataReader,
        aborted: bool,
        refusal_sent: bool,
        chunk: u64,
        remaining: u64,
        last: bool,
    },
    /// `MessageEnd` sent; waiting for `handle_committed`.
    Committing(Helo),
    /// `StartTls` sent: input is dropped until `handle_tls_started`.
    StartingTls,
    /// An AUTH exchange: the next line is the client's response to a 334.
    Auth(Helo, Exchange),
    /// `Authenticate` sent; waiting for `handle_auth_result`.
    Authenticating(Helo),
    Closed,
}

pub struct Session {
    config: Arc<SessionConfig>,
    client: SocketAddr,
    may_relay: bool,
    local_names: Arc<HashSet<String>>,
    /// What the connection's TLS agreed on (`TLSv1.3 with cipher ...`), once there is TLS.
    tls: Option<String>,
    /// The user that authenticated.
    login: Option<Login>,
    state: State,
    /// The command line read so far (bounded by `MAX_COMMAND_LINE`).
    line: Vec<u8>,
    /// The current line went over the limit: discard up to its LF, then answer 500.
    line_too_long: bool,
    /// Octets of a refused BDAT chunk still to be read and thrown away.
    skip: u64,
    errors: u32,
    outputs: VecDeque<Output>,
    /// The last command, escaped and shortened, for log lines.
    last_command: String,
}

impl Session {
    /// A session greeting its client; `tls` describes the connection's TLS when it has had
    /// it from the first byte (the submissions role).
    pub fn new(
        config: Arc<SessionConfig>,
        client: SocketAddr,
        may_relay: bool,
        local_names: Arc<HashSet<String>>,
        tls: Option<String>,
    ) -> Session {
        let mut outputs = VecDeque::new();
        outputs.push_back(Output::Reply(Reply::greeting(&config.hostname)));
        Session {
            config,
            client,
            may_relay,
            local_names,
            tls,
            login: None,
            state: State::Fresh,
            line: Vec::with_capacity(128),
            line_too_long: false,
            skip: 0,
            errors: 0,
            outputs,
            last_command: String::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn timeout(&self) -> Timeout {
        match self.state {
            State::Data { .. } => Timeout::Data,
            State::Bdat { remaining, .. } if remaining > 0 => Timeout::Data,
            _ if self.skip > 0 => Timeout::Data,
            _ => Timeout::Command,
        }
    }

    /// The last command line, escaped, for logs.
    pub fn last_command(&self) -> &str {
        &self.last_command
    }

    /// Consumes input; returns how much. Less than all of it only while a message awaits
    /// `handle_committed` (the rest must be offered again after that) or after closing.
    pub fn handle_input(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            used += match self.state {
                State::Closed => return input.len(),
                State::Committing(_) | State::Authenticating(_) => return used,
                // Pipelined behind STARTTLS: never executed (CVE-2011-0411).
                State::StartingTls => return input.len(),
                _ if self.skip > 0 => self.skip_chunk(&input[used..]),
                State::Data { .. } => self.read_data(&input[used..]),
                State::Bdat { remaining, .. } if remaining > 0 => self.read_chunk(&input[used..]),
                _ => self.read_command(&input[used..]),
            };
            self.enforce_error_limit();
        }
        used
    }

    /// The TLS handshake after `StartTls` succeeded; `tls` says what was agreed. The session
    /// starts over (RFC 3207 4.2): no HELO, no transaction.
    pub fn handle_tls_started(&mut self, tls: String) {
        if let State::StartingTls = self.state {
            self.state = State::Fresh;
            self.tls = Some(tls);
        }
    }

    /// The verdict on the credentials of the last `Authenticate`.
    pub fn handle_auth_result(&mut self, verdict: AuthVerdict) {
        let State::Authenticating(helo) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        self.state = State::Ready(helo);
        match verdict {
            AuthVerdict::Accepted(login) => {
                self.login = Some(login);
                self.reply(Reply::auth_ok());
            }
            AuthVerdict::Refused => self.reply(Reply::auth_failed()),
            AuthVerdict::Throttled => self.reply(Reply::auth_throttled()),
            AuthVerdict::Unavailable => self.reply(Reply::auth_unavailable()),
        }
    }

    /// The TLS of the connection, once there is some.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// The spool's verdict on the message of the last `MessageEnd`.
    pub fn handle_committed(&mut self, result: Result<Queued, SpoolError>) {
        let State::Committing(helo) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        self.state = State::Ready(helo);
        match result {
            Ok(queued) => self.reply(Reply::queued(queued.id())),
            Err(_) => self.reply(Reply::queue_write_error()),
        }
    }

    /// The client closed its side of the connection.
    pub fn handle_eof(&mut self) {
        self.abort_message();
        self.close();
    }

    /// A transaction is in flight (MAIL given, the message being read or committed, an AUTH
    /// or TLS exchange under way): a stopping server lets it finish.
    pub fn in_transaction(&self) -> bool {
        !matches!(self.state, State::Fresh | State::Ready(_) | State::Closed)
    }

    /// The server is stopping: `421 4.3.2`, and the connection closes (a message being read
    /// is thrown away; its client was never told 250 and will send it again).
    pub fn handle_shutdown(&mut self) {
        self.abort_message();
        self.outputs
            .push_back(Output::Reply(Reply::shutting_down()));
        self.close();
    }

    /// The client said nothing for the applicable timeout.
    pub fn handle_timeout(&mut self) {
        self.abort_message();
        self.outputs.push_back(Output::Reply(Reply::timeout()));
        self.close();
    }

    fn close(&mut self) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.outputs.push_back(Output::Close);
        }
    }

    fn abort_message(&mut self) {
        if let State::Data { aborted: false, .. } | State::Bdat { aborted: false, .. } = self.state
        {
            self.outputs.push_back(Output::MessageAbort);
        }
    }

    /// Sends a reply; an error reply counts toward `MAX_ERRORS`.
    fn reply(&mut self, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
        }
        self.reply_uncounted(reply);
    }

    /// Sends a reply that does not count as the client's error, even if it refuses.
    fn reply_uncounted(&mut self, reply: Reply) {
        if reply.is_error() {
            let command = self.last_command.clone();
            self.outputs.push_back(Output::Refusal(reply, command));
        } else {
            self.outputs.push_back(Output::Reply(reply));
        }
    }

    /// Sends a refusal that is repeated for one cause (each chunk of a refused message):
    /// counted only the first time, which `sent` records.
    fn refuse_once(&mut self, reply: Reply, sent: &mut bool) {
        if std::mem::replace(sent, true) {
            self.reply_uncounted(reply);
        } else {
            self.reply(reply);
        }
    }

    /// Hangs up on a client that keeps getting error replies.
    fn enforce_error_limit(&mut self) {
        if self.errors >= MAX_ERRORS && !self.is_closed() {
            self.outputs
                .push_back(Output::Reply(Reply::too_many_errors()));
            self.close();
        }
    }

    /// Reads up to one command line end; returns the bytes consumed.
    fn read_command(&mut self, input: &[u8]) -> usize {
        let (chunk, used, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(lf) => (&input[..lf], lf + 1, true),
            None => (input, input.len(), false),
        };
        let limit = self.line_limit(chunk);
        if !self.line_too_long {
            if self.line.len() + chunk.len() > limit {
                self.line_too_long = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(chunk);
            }
        }
        if complete {
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if std::mem::take(&mut self.line_too_long) || line.len() + 2 > limit {
                self.last_command = "(line too long)".into();
                // An AUTH exchange ends with it.
                self.state = match std::mem::replace(&mut self.state, State::Closed) {
                    State::Auth(helo, _) => State::Ready(helo),
                    other => other,
                };
                self.reply(Reply::line_too_long());
            } else if let State::Auth(..) = self.state {
                self.last_command = "(AUTH response)".into();
                self.handle_auth_response(&line);
            } else {
                self.last_command = escape_command(&line);
                self.handle_line(&line);
            }
            line.clear();
            self.line = line;
        }
        used
    }

    /// RFC 4954 4: AUTH lines may be 12288 octets, so may the responses of an exchange.
    fn line_limit(&self, chunk: &[u8]) -> usize {
        // The line's first five octets, wherever a read split them.
        let head: Vec<u8> = self.line.iter().chain(chunk).take(5).copied().collect();
        let is_auth = head.len() == 5
            && head[..4].eq_ignore_ascii_case(b"AUTH")
            && head[4].is_ascii_whitespace();
        match (&self.state, is_auth) {
            (State::Auth(..), _) | (_, true) => MAX_AUTH_LINE,
            _ => MAX_COMMAND_LINE,
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        match command::parse(line) {
            Ok(command) => self.handle_command(command),
            Err(ParseError::Http) => {
                self.reply(Reply::not_smtp());
                self.close();
            }
            Err(ParseError::Unknown) => self.reply(Reply::unknown_command()),
            Err(ParseError::Syntax(usage)) => self.reply(Reply::syntax(usage)),
            Err(ParseError::BadSender(e)) => self.reply(Reply::bad_sender_syntax(&e.to_string())),
            Err(ParseError::BadRecipient(e)) => {
                self.reply(Reply::bad_recipient_syntax(&e.to_string()))
            }
            Err(ParseError::UnknownParameter(p)) => self.reply(Reply::unknown_parameter(&p)),
        }
    }

    fn handle_command(&mut self, command: Command) {
        if let Command::Ehlo(_) | Command::Helo(_) | Command::Rset | Command::Quit = command {
            // These end a BDAT transaction in progress.
            self.abort_message();
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match (command, state) {
            (Command::Ehlo(name), _) => {
                self.reply(Reply::ehlo(
                    &self.config.hostname,
                    &format!("[{}]", self.client.ip()),
                    &self.extensions(),
                ));
                State::Ready(Helo {
                    name,
                    extended: true,
                })
            }
            (Command::Helo(name), _) => {
                self.reply(Reply::helo(&self.config.hostname));
                State::Ready(Helo {
                    name,
                    extended: false,
                })
            }
            (Command::Mail { from, params }, State::Ready(helo)) => self.mail(helo, from, params),
            (Command::Mail { .. }, state @ State::Mail(..)) => {
                self.reply(Reply::nested_mail());
                state
            }
            (Command::Rcpt(to), State::Mail(helo, tx)) => self.rcpt(helo, tx, to),
            (Command::Rcpt(_) | Command::Data, state @ State::Ready(_)) => {
                self.reply(Reply::need_mail());
                state
            }
            (Command::Data, State::Mail(helo, tx)) => self.data(helo, tx),
            (Command::Bdat { size, last }, State::Mail(helo, tx)) => {
                self.bdat(helo, tx, size, last)
            }
            (
                Command::Bdat { size, last },
                State::Bdat {
                    helo,
                    reader,
                    aborted,
                    refusal_sent,
                    ..
                },
            ) => self.next_chunk(helo, reader, aborted, refusal_sent, size, last),
            (Command::Mail { .. }, state @ State::Bdat { .. }) => {
                self.reply(Reply::nested_mail());
                state
            }
            (Command::Rcpt(_) | Command::Data, state @ State::Bdat { .. }) => {
                self.reply(Reply::bdat_in_progress());
                state
            }
            (Command::Bdat { size, .. }, state) => {
                // The chunk follows regardless: read it, but as nothing.
                self.skip = size;
                self.reply(match state {
                    State::Fresh => Reply::need_helo(),
                    _ => Reply::need_mail(),
                });
                state
            }
            (Command::Mail { .. } | Command::Rcpt(_) | Command::Data, state) => {
                self.reply(Reply::need_helo());
                state
            }
            (Command::Rset, State::Fresh) => {
                self.reply(Reply::ok());
                State::Fresh
            }
            (
                Command::Rset,
                State::Ready(helo) | State::Mail(helo, _) | State::Bdat { helo, .. },
            ) => {
                self.reply(Reply::ok());
                State::Ready(helo)
            }
            (Command::Noop, state) => {
                self.reply(Reply::ok());
                state
            }
            (Command::Vrfy, state) => {
                self.reply(Reply::cannot_vrfy());
                state
            }
            (Command::Help, state) => {
                self.reply(Reply::help());
                state
            }
            (Command::StartTls, state) => self.start_tls(state),
            (Command::Auth { mechanism, initial }, state) => self.auth(state, &mechanism, initial),
            (Command::NotImplemented(verb), state) => {
                self.reply(Reply::not_implemented(verb));
                state
            }
            (Command::Quit, _) => {
                self.reply(Reply::closing());
                self.outputs.push_back(Output::Close);
                State::Closed
            }
            // Commands are only read in the states above.
            (Command::Rset, state) => state,
        };
    }

    fn extensions(&self) -> Vec<String> {
        let mut extensions = vec![
            "PIPELINING".into(),
            format!("SIZE {}", self.config.message_size_limit),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "SMTPUTF8".into(),
            "HELP".into(),
        ];
        if self.config.starttls && self.tls.is_none() {
            extensions.push("STARTTLS".into());
        }
        if self.config.auth && self.tls.is_some() {
            extensions.push("AUTH PLAIN LOGIN".into());
        }
        extensions
    }

    fn mail(&mut self, helo: Helo, from: ReversePath, params: MailParams) -> State {
        if self.needs_tls_first() {
            self.reply(Reply::must_start_tls());
            return State::Ready(helo);
        }
        if self.config.role != Role::Smtp && self.login.is_none() {
            self.reply(Reply::auth_required());
            return State::Ready(helo);
        }
        if let (true, Some(login), ReversePath::Mailbox(sender)) =
            (self.config.sender_login_match, &self.login, &from)
        {
            if !login.may_send_as(sender, &self.config.local_domains) {
                let reply = Reply::sender_not_owned(&from.to_string(), &login.name);
                self.reply(reply);
                return State::Ready(helo);
            }
        }
        if !helo.extended && !params.is_empty() {
            self.reply(Reply::unknown_parameter("ESMTP parameters need EHLO"));
            return State::Ready(helo);
        }
        if params
            .size
            .is_some_and(|size| size > self.config.message_size_limit)
        {
            self.reply(Reply::message_too_big());
            return State::Ready(helo);
        }
        if matches!(&from, ReversePath::Mailbox(m) if m.is_utf8()) && !params.smtputf8 {
            self.reply(Reply::smtputf8_required());
            return State::Ready(helo);
        }
        self.reply(Reply::sender_ok());
        State::Mail(
            helo,
            Transaction {
                from,
                params,
                recipients: Vec::new(),
                accepted_rcpts: 0,
                refused_recipients: 0,
                overshoot: 0,
                chunk_refused: false,
            },
        )
    }

    fn rcpt(&mut self, helo: Helo, mut tx: Transaction, to: ForwardPath) -> State {
        let rules = RecipientRules {
            local_domains: &self.config.local_domains,
            local_names: &self.local_names,
            may_relay: self.may_relay || self.login.is_some(),
        };
        if tx.accepted_rcpts >= self.config.max_recipients {
            // Not the client's error (RFC 5321 4.5.3.1.10): it sends the rest in another
            // transaction. Postfix does not count it either, up to its overshoot limit.
            tx.refused_recipients += 1;
            tx.overshoot += 1;
            match tx.overshoot > MAX_RECIPIENT_OVERSHOOT {
                true => self.reply(Reply::too_many_recipients()),
                false => self.reply_uncounted(Reply::too_many_recipients()),
            }
            return State::Mail(helo, tx);
        }
        let refusal = if to.is_utf8() && !tx.params.smtputf8 {
            Some(Reply::smtputf8_required())
        } else {
            match policy::check_recipient(&to, &rules) {
                Ok(()) => None,
                Err(Refusal::UnknownUser) => Some(Reply::unknown_user(&to.to_string())),
                Err(Refusal::RelayDenied) => Some(Reply::relay_denied(&to.to_string())),
            }
        };
        match refusal {
            Some(reply) => {
                tx.refused_recipients += 1;
                self.reply(reply);
            }
            None => {
                tx.accepted_rcpts += 1;
                if !tx.recipients.contains(&to) {
                    tx.recipients.push(to);
                }
                self.reply(Reply::recipient_ok());
            }
        }
        State::Mail(helo, tx)
    }

    /// Starts the message of a transaction with recipients (`MessageStart`).
    fn start_message(&mut self, helo: &Helo, tx: Transaction) {
        // RFC 3848: an S for TLS, an A for AUTH.
        let protocol = match (helo.extended, tx.params.smtputf8) {
            (false, _) => "SMTP".to_string(),
            (true, utf8) => format!(
                "{}{}{}",
                if utf8 { "UTF8SMTP" } else { "ESMTP" },
                if self.tls.is_some() { "S" } else { "" },
                if self.login.is_some() { "A" } else { "" },
            ),
        };
        self.outputs.push_back(Output::MessageStart(Envelope {
            reverse_path: tx.from,
            recipients: tx.recipients.into_iter().map(Recipient::pending).collect(),
            client: Some(self.client),
            helo: helo.name.clone(),
            protocol,
            auth: self.login.as_ref().map(|l| l.name.clone()),
            eight_bit: tx.params.eight_bit,
            smtputf8: tx.params.smtputf8,
            arrival: 0,
            size: 0,
            delay_warned: false,
            held: false,
        }));
    }

    fn data(&mut self, helo: Helo, tx: Transaction) -> State {
        if let Some(reply) = without_recipients(&tx) {
            self.reply(reply);
            return State::Mail(helo, tx);
        }
        self.start_message(&helo, tx);
        self.reply(Reply::start_data());
        State::Data {
            helo,
            reader: DataReader::new(self.config.message_size_limit, self.config.bare_newline),
            aborted: false,
        }
    }

    fn bdat(&mut self, helo: Helo, mut tx: Transaction, size: u64, last: bool) -> State {
        if let Some(reply) = without_recipients(&tx) {
            self.skip = size;
            // Every pipelined chunk gets the refusal; it is one error, not one per chunk.
            self.refuse_once(reply, &mut tx.chunk_refused);
            return State::Mail(helo, tx);
        }
        self.start_message(&helo, tx);
        let reader = DataReader::chunked(self.config.message_size_limit, self.config.bare_newline);
        self.next_chunk(helo, reader, false, false, size, last)
    }

    /// Expects a chunk of `size` octets; an empty one is complete at once.
    fn next_chunk(
        &mut self,
        helo: Helo,
        reader: DataReader,
        aborted: bool,
        refusal_sent: bool,
        size: u64,
        last: bool,
    ) -> State {
        let state = State::Bdat {
            helo,
            reader,
            aborted,
            refusal_sent,
            chunk: size,
            remaining: size,
            last,
        };
        if size == 0 {
            self.end_chunk(state)
        } else {
            state
        }
    }

    fn skip_chunk(&mut self, input: &[u8]) -> usize {
        let n = input
            .len()
            .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
        self.skip -= n as u64;
        n
    }

    fn read_chunk(&mut self, input: &[u8]) -> usize {
        let State::Bdat {
            reader,
            aborted,
            remaining,
            ..
        } = &mut self.state
        else {
            return 0;
        };
        let n = input
            .len()
            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
        *remaining -= n as u64;
        let mut content = Vec::new();
        reader.feed(&input[..n], &mut content);
        let newly_refused = reader.verdict() != Verdict::Acceptable && !*aborted;
        *aborted |= newly_refused;
        if !content.is_empty() {
            self.outputs.push_back(Output::MessageData(content));
        }
        if newly_refused {
            self.outputs.push_back(Output::MessageAbort);
        }
        if *remaining == 0 {
            let state = std::mem::replace(&mut self.state, State::Closed);
            self.state = self.end_chunk(state);
        }
        n
    }

    /// A chunk is complete: answer it, and after the last one end the message.
    fn end_chunk(&mut self, state: State) -> State {
        let State::Bdat {
            helo,
            mut reader,
            mut aborted,
            mut refusal_sent,
            chunk,
            last,
            ..
        } = state
        else {
            return state;
        };
        if last {
            let mut content = Vec::new();
            reader.finish(&mut content);
            if !content.is_empty() && !aborted {
                self.outputs.push_back(Output::MessageData(content));
            }
            if reader.verdict() != Verdict::Acceptable && !aborted {
                self.outputs.push_back(Output::MessageAbort);
            }
            return self.end_message(helo, reader.verdict(), refusal_sent);
        }
        match refusal(reader.verdict()) {
            None => self.reply(Reply::chunk_received(chunk)),
            // Every chunk of a refused message is answered with the refusal (RFC 3030 4.2),
            // but it is one error.
            Some(reply) => {
                if !aborted {
                    aborted = true;
                    self.outputs.push_back(Output::MessageAbort);
                }
                self.refuse_once(reply, &mut refusal_sent);
            }
        }
        State::Bdat {
            helo,
            reader,
            aborted,
            refusal_sent,
            chunk,
            remaining: 0,
            last,
        }
    }

    /// The message is complete: commit it, or refuse it (`refusal_sent`: an earlier chunk
    /// was answered with this refusal already, and counted as the error).
    fn end_message(&mut self, helo: Helo, verdict: Verdict, refusal_sent: bool) -> State {
        match refusal(verdict) {
            None => {
                self.outputs.push_back(Output::MessageEnd);
                State::Committing(helo)
            }
            Some(reply) => {
                let mut sent = refusal_sent;
                self.refuse_once(reply, &mut sent);
                State::Ready(helo)
            }
        }
    }

    fn read_data(&mut self, input: &[u8]) -> usize {
        let State::Data {
            reader, aborted, ..
        } = &mut self.state
        else {
            return 0;
        };
        let mut content = Vec::new();
        let (used, ended) = reader.feed(input, &mut content);
        let verdict = reader.verdict();
        if !content.is_empty() {
            self.outputs.push_back(Output::MessageData(content));
        }
        if verdict != Verdict::Acceptable && !*aborted {
            *aborted = true;
            self.outputs.push_back(Output::MessageAbort);
        }
        if ended {
            if let State::Data { helo, .. } = std::mem::replace(&mut self.state, State::Closed) {
                self.state = self.end_message(helo, verdict, false);
            }
        }
        used
    }
}

/// The reply that refuses DATA or BDAT in a transaction with no recipient, if it has none.
fn without_recipients(tx: &Transaction) -> Option<Reply> {
    match (tx.recipients.is_empty(), tx.refused_recipients) {
        (false, _) => None,
        (true, 0) => Some(Reply::need_rcpt()),
        (true, _) => Some(Reply::no_valid_recipients()),
    }
}

/// The reply that refuses a message with this verdict, if any.
fn refusal(verdict: Verdict) -> Option<Reply> {
    match verdict {
        Verdict::Acceptable => None,
        Verdict::TooBig => Some(Reply::message_too_big()),
        Verdict::BareNewline => Some(Reply::bare_newline()),
    }
}

/// A command line for logs, with any AUTH initial response masked.
/// A command line for logs. Split on any white space, as the parser does, so that
/// `AUTH<TAB>PLAIN<TAB>secret` is masked too; a line that is not an SMTP command at all (a
/// SASL response sent after a refused AUTH, a POP3 `PASS` to the wrong port) shows only its
/// length, since it may be a password.
fn escape_command(line: &[u8]) -> String {
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    match (words.next(), words.next()) {
        (Some(verb), mechanism) if verb.eq_ignore_ascii_case(b"AUTH") => {
            let mechanism = mechanism.map_or(String::new(), |m| escape(&m[..m.len().min(20)]));
            format!("AUTH {mechanism} ********")
        }
        (Some(verb), _) if command::is_verb(verb) => escape(line),
        // An unknown verb shows if it looks like one, never what follows it.
        (Some(verb), rest) if verb.len() <= 12 && verb.iter().all(|b| b.is_ascii_uppercase()) => {
            match rest {
                None => escape(verb),
                Some(_) => format!("{} ({} more octets)", escape(verb), line.len() - verb.len()),
            }
        }
        _ => format!("(not a command, {} octets)", line.len()),
    }
}

/// A command line for logs: printable ASCII kept, the rest as `\xNN`, at most 100 bytes shown.
fn escape(line: &[u8]) -> String {
    let mut out = String::new();
    for &b in line.iter().take(100) {
        if (0x20..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if line.len() > 100 {
        out.push_str("...");
    }
    out
}

#[path = "session_security.rs"]
mod security;

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
