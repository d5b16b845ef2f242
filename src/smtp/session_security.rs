//! The session's security commands, STARTTLS (RFC 3207) and AUTH (RFC 4954): when they may
//! run, and the AUTH exchange. Part of `session` (it sees the session's private state); the
//! exchange itself is `sasl.rs`, and checking a password is the caller's.

use super::{Helo, Output, Session, State};
use crate::config::Role;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Exchange, Step};

impl Session {
    /// STARTTLS (RFC 3207): after EHLO, outside a transaction, once.
    pub(super) fn start_tls(&mut self, state: State) -> State {
        let refusal = match &state {
            _ if !self.config.starttls => Some(Reply::not_implemented("STARTTLS")),
            _ if self.tls.is_some() => Some(Reply::tls_already_active()),
            State::Fresh => Some(Reply::need_helo()),
            State::Ready(_) => None,
            _ => Some(Reply::transaction_in_progress()),
        };
        if let Some(reply) = refusal {
            self.reply(reply);
            return state;
        }
        self.reply(Reply::ready_to_start_tls());
        self.outputs.push_back(Output::StartTls);
        // Half a command line read behind it is dropped with the rest.
        self.line.clear();
        self.line_too_long = false;
        State::StartingTls
    }

    /// AUTH (RFC 4954): over TLS, after EHLO, outside a transaction, once.
    pub(super) fn auth(&mut self, state: State, mechanism: &str, initial: Option<String>) -> State {
        let refusal = if !self.config.auth {
            Some(Reply::auth_not_enabled())
        } else if self.needs_tls_first() {
            Some(Reply::must_start_tls())
        } else if self.tls.is_none() {
            Some(Reply::auth_needs_tls())
        } else if self.login.is_some() {
            Some(Reply::already_authenticated())
        } else {
            None
        };
        match (refusal, state) {
            (None, State::Ready(helo)) => {
                let (step, exchange) = sasl::start(mechanism, initial.as_deref());
                self.auth_step(helo, step, exchange)
            }
            (refusal, state) => {
                self.reply(refusal.unwrap_or(match state {
                    State::Fresh => Reply::need_helo(),
                    _ => Reply::transaction_in_progress(),
                }));
                state
            }
        }
    }

    pub(super) fn handle_auth_response(&mut self, line: &[u8]) {
        let State::Auth(helo, exchange) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let line = String::from_utf8_lossy(line);
        let (step, exchange) = sasl::respond(exchange, line.trim());
        self.state = self.auth_step(helo, step, exchange);
    }

    fn auth_step(&mut self, helo: Helo, step: Step, exchange: Option<Exchange>) -> State {
        match (step, exchange) {
            (Step::Challenge(text), Some(exchange)) => {
                self.reply(Reply::auth_challenge(&text));
                State::Auth(helo, exchange)
            }
            (Step::Credentials { name, password }, _) => {
                self.outputs
                    .push_back(Output::Authenticate { name, password });
                State::Authenticating(helo)
            }
            (Step::Refused(reply), _) => {
                self.reply(reply);
                State::Ready(helo)
            }
            (Step::Challenge(_), None) => State::Ready(helo),
        }
    }

    /// A role that wants TLS first (submission) refuses what needs it with 530.
    pub(super) fn needs_tls_first(&self) -> bool {
        self.config.role != Role::Smtp && self.tls.is_none()
    }
}
