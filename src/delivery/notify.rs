//! Telling people what happened: failure reports (bounces) and delay warnings, built by
//! `bounce.rs` and queued from `<>` like any other message.

use std::fs::File;
use std::io::Read;

use super::bounce::{self, Failure};
use super::{Context, MAX_BOUNCE_HEADERS};
use crate::datetime;
use crate::envelope::{Envelope, Recipient, Status};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::spool::SpoolError;

impl Context {
    /// Queues a DSN for failures not yet reported; false (logged) if the spool refused.
    pub(super) fn report_failures(&self, id: &str, env: &mut Envelope, now: u64) -> bool {
        let unreported: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| env.recipients[i].status == Status::Failed && !env.recipients[i].reported)
            .collect();
        if unreported.is_empty() {
            return true;
        }
        let to = match &env.reverse_path {
            ReversePath::Mailbox(m) => Some(ForwardPath::Mailbox(m.clone())),
            // A bounce that failed goes to postmaster once; postmaster's own failure ends here.
            ReversePath::Null => {
                let to_postmaster = unreported
                    .iter()
                    .any(|&i| self.is_postmaster(&env.recipients[i].path));
                (!to_postmaster).then_some(ForwardPath::Postmaster)
            }
        };
        match to {
            Some(to) => {
                if !self.notify(id, env, &unreported, to, bounce::Kind::Failed, now) {
                    return false;
                }
            }
            None => log::error!("{id}: undeliverable notification to postmaster discarded"),
        }
        for i in unreported {
            env.recipients[i].reported = true;
        }
        self.save(id, env)
    }

    /// Warns the sender once that some recipients are still waiting, after
    /// `delay_warning_time`; never for mail from `<>`. False (logged) if the spool refused.
    pub(super) fn warn_delay(&self, id: &str, env: &mut Envelope, now: u64) -> bool {
        let Some(after) = self.config.delay_warning_time else {
            return true;
        };
        let ReversePath::Mailbox(sender) = &env.reverse_path else {
            return true;
        };
        let pending: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| env.recipients[i].status == Status::Pending)
            .collect();
        if env.delay_warned
            || pending.is_empty()
            || now < env.arrival.saturating_add(after.as_secs())
        {
            return true;
        }
        let until = env
            .arrival
            .saturating_add(self.config.max_queue_lifetime.as_secs());
        let to = ForwardPath::Mailbox(sender.clone());
        if !self.notify(id, env, &pending, to, bounce::Kind::Delayed { until }, now) {
            return false;
        }
        env.delay_warned = true;
        self.save(id, env)
    }

    /// Builds and queues a DSN about the recipients at `indexes`.
    fn notify(
        &self,
        id: &str,
        env: &Envelope,
        indexes: &[usize],
        to: ForwardPath,
        kind: bounce::Kind,
        now: u64,
    ) -> bool {
        let failures: Vec<Failure> = indexes
            .iter()
            .map(|&i| self.failure(&env.recipients[i]))
            .collect();
        let to_text = match &to {
            ForwardPath::Postmaster => format!("postmaster@{}", self.config.hostname),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        let dsn = bounce::build(&bounce::Report {
            kind,
            hostname: &self.config.hostname,
            queue_id: id,
            to: &to_text,
            arrival: env.arrival,
            now,
            failures: &failures,
            original_headers: &self.original_headers(id),
        });
        let what = match kind {
            bounce::Kind::Failed => "non-delivery notification",
            bounce::Kind::Delayed { .. } => "delay notification",
        };
        match self.queue_notification(&dsn, to) {
            Ok(dsn_id) => {
                log::info!("{id}: sender {what}: {dsn_id}");
                true
            }
            Err(e) => {
                log::error!("{id}: cannot queue a {what}, will retry: {e}");
                false
            }
        }
    }

    /// One recipient as a DSN reports it.
    fn failure(&self, rcpt: &Recipient) -> Failure {
        let reply = rcpt.last_reply.clone().unwrap_or_default();
        let status = match (rcpt.status, reply.contains("message expired")) {
            (_, true) => "4.4.7".to_string(),
            (Status::Pending, false) => bounce::status_of(&reply, "4.0.0"),
            _ => bounce::status_of(&reply, "5.0.0"),
        };
        Failure {
            recipient: match &rcpt.path {
                ForwardPath::Postmaster => format!("postmaster@{}", self.config.hostname),
                ForwardPath::Mailbox(m) => m.to_string(),
            },
            status,
            diagnostic: reply,
            remote_mta: None,
        }
    }

    fn is_postmaster(&self, path: &ForwardPath) -> bool {
        match path {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => {
                self.is_local(path) && m.local_unquoted().eq_ignore_ascii_case("postmaster")
            }
        }
    }

    /// The header section of a queued message, for bounces.
    fn original_headers(&self, id: &str) -> Vec<u8> {
        let mut head = Vec::new();
        if let Ok(file) = File::open(self.spool.message_path(id)) {
            let _ = file.take(MAX_BOUNCE_HEADERS).read_to_end(&mut head);
        }
        match head.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => head.truncate(end + 2),
            None => head.truncate(head.len()),
        }
        head
    }

    /// Queues a message made here (from `<>`) and announces it to the scheduler.
    fn queue_notification(&self, message: &[u8], to: ForwardPath) -> Result<String, SpoolError> {
        let smtputf8 = to.is_utf8();
        let mut envelope = Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::pending(to)],
            client: None,
            helo: self.config.hostname.clone(),
            protocol: "ESMTP".into(),
            eight_bit: true,
            smtputf8,
            arrival: datetime::now(),
            size: 0,
            delay_warned: false,
        };
        let mut incoming = self.spool.incoming()?;
        incoming.write(message);
        let id = incoming.commit(&mut envelope)?.id().to_string();
        let _ = self.queued.send(id.clone());
        Ok(id)
    }
}
