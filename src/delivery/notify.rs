//! Telling people what happened: failure reports (bounces) and delay warnings, built by
//! `bounce.rs` and queued from `<>` like any other message.

use super::bounce::{self, Failure};
use super::headers::Headers;
use super::outcome::DsnStatus;
use super::{Context, Job};
use crate::datetime;
use crate::envelope::{Envelope, Recipient, Status};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::spool::SpoolError;

impl Context {
    /// Queues a DSN to the sender for failures not yet reported; false (logged) if the spool
    /// refused. Mail from `<>` (a bounce, a delay warning, a notice) that fails is logged and
    /// dropped: no notice is ever made about a notice, whatever the aliases say (invariant 7).
    pub(super) fn report_failures(&self, job: &mut Job) -> bool {
        let unreported: Vec<usize> = (0..job.env.recipients.len())
            .filter(|&i| {
                let rcpt = &job.env.recipients[i];
                rcpt.status == Status::Failed && !rcpt.reported
            })
            .collect();
        if unreported.is_empty() {
            return true;
        }
        match &job.env.reverse_path {
            ReversePath::Mailbox(sender) => {
                let to = ForwardPath::Mailbox(sender.clone());
                if !self.notify(job, &unreported, to, bounce::Kind::Failed) {
                    return false;
                }
            }
            ReversePath::Null => {
                for &i in &unreported {
                    let rcpt = &job.env.recipients[i];
                    log::error!(
                        "{}: undeliverable mail from <> to {} dropped, no notice is sent about a notice: {}",
                        job.id,
                        rcpt.path,
                        rcpt.last_reply.as_deref().unwrap_or("")
                    );
                }
            }
        }
        for i in unreported {
            job.env.recipients[i].reported = true;
        }
        self.save(job)
    }

    /// Warns the sender once that some recipients are still waiting, after
    /// `delay_warning_time`; never for mail from `<>`. False (logged) if the spool refused.
    pub(super) fn warn_delay(&self, job: &mut Job) -> bool {
        let Some(after) = self.config.delay_warning_time else {
            return true;
        };
        let ReversePath::Mailbox(sender) = &job.env.reverse_path else {
            return true;
        };
        let pending: Vec<usize> = (0..job.env.recipients.len())
            .filter(|&i| job.env.recipients[i].status == Status::Pending)
            .collect();
        if job.env.delay_warned
            || pending.is_empty()
            || job.now < job.env.arrival.saturating_add(after.as_secs())
        {
            return true;
        }
        let until = job
            .env
            .arrival
            .saturating_add(self.config.max_queue_lifetime.as_secs());
        let to = ForwardPath::Mailbox(sender.clone());
        if !self.notify(job, &pending, to, bounce::Kind::Delayed { until }) {
            return false;
        }
        job.env.delay_warned = true;
        self.save(job)
    }

    /// Builds and queues a DSN about the recipients at `indexes`.
    fn notify(&self, job: &Job, indexes: &[usize], to: ForwardPath, kind: bounce::Kind) -> bool {
        let failures: Vec<Failure> = indexes
            .iter()
            .map(|&i| self.failure(&job.env.recipients[i], kind))
            .collect();
        let to_text = match &to {
            ForwardPath::Postmaster => format!("postmaster@{}", self.config.hostname),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        let original = Headers::read(&job.message);
        let dsn = bounce::build(&bounce::Report {
            kind,
            hostname: &self.config.hostname,
            queue_id: job.id,
            to: &to_text,
            arrival: job.env.arrival,
            now: job.now,
            failures: &failures,
            original_headers: &original.bytes,
        });
        let what = match kind {
            bounce::Kind::Failed => "non-delivery notification",
            bounce::Kind::Delayed { .. } => "delay notification",
        };
        match self.queue_notification(&dsn, to) {
            Ok(dsn_id) => {
                log::info!("{}: sender {what}: {dsn_id}", job.id);
                true
            }
            Err(e) => {
                log::error!("{}: cannot queue a {what}, will retry: {e}", job.id);
                false
            }
        }
    }

    /// One recipient as a DSN reports it, with the status its last attempt recorded.
    fn failure(&self, rcpt: &Recipient, kind: bounce::Kind) -> Failure {
        let reply = rcpt.last_reply.clone().unwrap_or_default();
        let fallback = match kind {
            bounce::Kind::Failed => DsnStatus::new(5, 0, 0),
            bounce::Kind::Delayed { .. } => DsnStatus::new(4, 0, 0),
        };
        Failure {
            recipient: match &rcpt.path {
                ForwardPath::Postmaster => format!("postmaster@{}", self.config.hostname),
                ForwardPath::Mailbox(m) => m.to_string(),
            },
            status: rcpt.last_status.unwrap_or(fallback).to_string(),
            diagnostic: reply,
            remote_mta: None,
        }
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
            held: false,
            auth: None,
        };
        let mut incoming = self.spool.incoming(&envelope)?;
        incoming.write(message);
        let id = incoming.commit(&mut envelope)?.id().to_string();
        let _ = self.queued.send(id.clone());
        Ok(id)
    }
}
