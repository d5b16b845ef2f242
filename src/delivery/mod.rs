//! Delivery: a scheduler thread hands due queue ids to a fixed pool of worker threads; a
//! worker delivers each due recipient of one message (local Maildir, or remote), writes each
//! outcome into the envelope right after its attempt, bounces what failed, and removes the
//! message when every recipient is done.
//!
//! Only this module dials out or writes Maildirs; the spool is still written only through
//! `spool.rs`. Sessions hand over ids without blocking (an unbounded channel).

pub mod bounce;
mod client;
mod maildir;
mod mx;
mod notify;
mod remote;
pub mod route;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};

use crate::auth::Credentials;
use crate::config::Config;
use crate::datetime;
use crate::directory::{Directory, LocalTable};
use crate::envelope::{Envelope, Recipient, Status};
use crate::smtp::address::ForwardPath;
use crate::spool::Spool;
use crate::tls::ClientTls;
use mx::Dns;
use route::Route;
use schedule::Schedule;

/// What became of one recipient's attempt; the text is the reply or our reason, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

/// The most header bytes of the original message put into a bounce.
const MAX_BOUNCE_HEADERS: u64 = 64 * 1024;
/// Retry delay after a spool write failed (a full disk, usually).
const SPOOL_RETRY: u64 = 60;

struct Context {
    config: Arc<Config>,
    spool: Arc<Spool>,
    directory: Arc<Directory>,
    /// Where new messages (bounces) are announced, as sessions do.
    queued: Sender<String>,
    /// Made at the first remote delivery, then shared.
    tls: std::sync::OnceLock<Result<ClientTls, String>>,
    /// For AUTH at the relayhost.
    relay_credentials: Option<Credentials>,
}

/// Starts the scheduler and the workers with the ids recovered at start; returns the sender
/// on which sessions announce newly queued messages.
pub fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    directory: Arc<Directory>,
    recovered: Vec<String>,
) -> std::io::Result<Sender<String>> {
    let (queued, queued_rx) = crossbeam_channel::unbounded();
    if config.delivery_threads == 0 {
        log::warn!("delivery is paused (delivery_threads = 0): mail waits in queue/");
        return Ok(queued);
    }
    let (work, work_rx) = crossbeam_channel::unbounded::<String>();
    let (results, results_rx) = crossbeam_channel::unbounded();
    let context = Arc::new(Context {
        config: Arc::clone(&config),
        spool,
        directory,
        queued: queued.clone(),
        tls: std::sync::OnceLock::new(),
        relay_credentials: match &config.relayhost_auth_file {
            Some(path) => Some(Credentials::load(path).map_err(std::io::Error::other)?),
            None => None,
        },
    });
    for n in 0..config.delivery_threads {
        let (context, work_rx, results) = (Arc::clone(&context), work_rx.clone(), results.clone());
        thread::Builder::new()
            .name(format!("delivery-{n}"))
            .spawn(move || {
                let mut worker = Worker {
                    dns: None,
                    context,
                    random: seed(n as u64),
                };
                for id in work_rx.iter() {
                    let next = worker.work(&id);
                    let _ = results.send((id, next));
                }
            })?;
    }
    for id in recovered {
        let _ = queued.send(id);
    }
    let scan_context = Arc::clone(&context);
    thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || scheduler(&scan_context, queued_rx, results_rx, work))?;
    Ok(queued)
}

fn seed(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (nanos ^ (n.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// xorshift64: enough randomness for retry jitter.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Hands out what is due, without busy waiting: sleeps until the next due time, a new id,
/// a finished worker, or the next scan of `queue/`.
fn scheduler(
    context: &Context,
    queued: Receiver<String>,
    results: Receiver<(String, Option<u64>)>,
    work: Sender<String>,
) {
    let mut schedule = Schedule::default();
    let scan_every = context.config.queue_scan_interval.as_secs().max(1);
    let mut next_scan = datetime::now() + scan_every;
    loop {
        let now = datetime::now();
        for id in schedule.take_due(now) {
            let _ = work.send(id);
        }
        if now >= next_scan {
            match context.spool.queued_ids() {
                Ok(ids) => {
                    for id in ids {
                        if !schedule.knows(&id) {
                            log::info!("{id}: found in queue/ by the periodic scan");
                            schedule.add(&id, now);
                        }
                    }
                }
                Err(e) => log::error!("queue scan failed: {e}"),
            }
            next_scan = now + scan_every;
            continue;
        }
        let wake = schedule.next_due().unwrap_or(u64::MAX).min(next_scan);
        let timeout = Duration::from_secs(wake.saturating_sub(now));
        select! {
            recv(queued) -> id => match id {
                Ok(id) => schedule.add(&id, datetime::now()),
                Err(_) => return,
            },
            recv(results) -> result => {
                if let Ok((id, next)) = result {
                    schedule.finished(&id, next, datetime::now());
                }
            }
            default(timeout) => {}
        }
    }
}

/// One delivery thread's own state: its resolver and its randomness.
struct Worker {
    context: Arc<Context>,
    /// Made at the first remote delivery: a box that only delivers locally never pays for it.
    dns: Option<Result<Dns, String>>,
    random: u64,
}

impl Worker {
    fn dns(&mut self) -> Result<&Dns, &String> {
        let config = &self.context.config;
        let timeout = config.smtp_command_timeout.min(Duration::from_secs(10));
        let dns = self.dns.get_or_insert_with(|| {
            let dns = Dns::new(config.dns_server, timeout);
            if let Err(e) = &dns {
                log::error!("no DNS resolver, remote mail will wait: {e}");
            }
            dns
        });
        dns.as_ref()
    }

    fn work(&mut self, id: &str) -> Option<u64> {
        let context = Arc::clone(&self.context);
        context.work(id, self)
    }
}

impl Context {
    /// Works on one message; returns when it wants another go, if ever.
    fn work(&self, id: &str, worker: &mut Worker) -> Option<u64> {
        let mut env = match self.spool.load(id) {
            Ok(env) => env,
            Err(e) => {
                log::error!("{id}: cannot load: {e}");
                return None;
            }
        };
        let now = datetime::now();
        let message = self.spool.message_path(id);
        let table = self.directory.table();

        // Local recipients first: aliases may add remote ones to this same message.
        let mut i = 0;
        while i < env.recipients.len() {
            if is_due(&env.recipients[i], now) && self.is_local(&env.recipients[i].path) {
                let outcome = self.deliver_local(&mut env, i, &table, &message);
                self.record(
                    id,
                    &mut env,
                    &[i],
                    &[outcome],
                    "local",
                    now,
                    &mut worker.random,
                );
                if !self.save(id, &env) {
                    return Some(now + SPOOL_RETRY);
                }
            }
            i += 1;
        }

        // Remote recipients, one transaction per domain.
        let mut domains: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, rcpt) in env.recipients.iter().enumerate() {
            if let (true, ForwardPath::Mailbox(m)) = (is_due(rcpt, now), &rcpt.path) {
                domains.entry(m.domain.to_lowercase()).or_default().push(i);
            }
        }
        for (domain, indexes) in domains {
            let (outcomes, relay) = self.deliver_remote(&env, &domain, &indexes, &message, worker);
            self.record(
                id,
                &mut env,
                &indexes,
                &outcomes,
                &relay,
                now,
                &mut worker.random,
            );
            if !self.save(id, &env) {
                return Some(now + SPOOL_RETRY);
            }
        }

        if !self.report_failures(id, &mut env, now) || !self.warn_delay(id, &mut env, now) {
            return Some(now + SPOOL_RETRY);
        }
        if env.recipients.iter().all(Recipient::is_done) {
            if let Err(e) = self.spool.remove(id) {
                log::error!("{id}: cannot remove: {e}");
            }
            log::info!("{id}: removed");
            return None;
        }
        env.recipients
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| r.next_attempt)
            .min()
            .or(Some(now + SPOOL_RETRY))
    }

    fn is_local(&self, path: &ForwardPath) -> bool {
        match path {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => route::is_local(&m.domain, &self.config.local_domains),
        }
    }

    /// Writes the envelope after an attempt; false (logged) if the spool refused.
    fn save(&self, id: &str, env: &Envelope) -> bool {
        match self.spool.update(id, env) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{id}: cannot record delivery state, will retry: {e}");
                false
            }
        }
    }

    /// Delivers to the Maildirs a local recipient resolves to; remote alias targets are added
    /// to the envelope as new recipients of this message.
    fn deliver_local(
        &self,
        env: &mut Envelope,
        index: usize,
        table: &LocalTable,
        message: &std::path::Path,
    ) -> Outcome {
        let rcpt = env.recipients[index].path.clone();
        let expansion = route::resolve(&rcpt, &self.config.local_domains, table);
        for problem in &expansion.problems {
            log::warn!("{rcpt}: {problem}");
        }
        if expansion.routes.is_empty() {
            let why = expansion.problems.join("; ");
            return Outcome::Failed(format!("550 5.1.1 {rcpt}: {why}"));
        }
        let domain = match &rcpt {
            ForwardPath::Mailbox(m) => m.domain.to_lowercase(),
            ForwardPath::Postmaster => self.config.hostname.clone(),
        };
        let mut delivered = Vec::new();
        for route in expansion.routes {
            match route {
                Route::Local(user) => {
                    let headers = format!(
                        "Return-Path: {}\r\nDelivered-To: {user}@{domain}\r\n",
                        env.reverse_path
                    );
                    // The directory as it is named on disk (user names match in any case).
                    let dir = table.users.get(&user).map_or(user.as_str(), String::as_str);
                    let maildir = self.config.mailbox_root.join(dir);
                    if let Err(e) =
                        maildir::deliver(&maildir, &self.config.hostname, &headers, message)
                    {
                        return Outcome::Deferred(format!(
                            "451 4.3.0 cannot write to the Maildir of {user}: {e}"
                        ));
                    }
                    delivered.push(format!("maildir of {user}"));
                }
                Route::Remote(mailbox) => {
                    let path = ForwardPath::Mailbox(mailbox);
                    if !env.recipients.iter().any(|r| r.path == path) {
                        delivered.push(format!("{path} (queued)"));
                        env.recipients.push(Recipient::pending(path));
                    }
                }
            }
        }
        Outcome::Delivered(format!("250 2.0.0 delivered to {}", delivered.join(", ")))
    }

    /// Applies the outcomes (one per recipient at `indexes`, or one for all) and logs each,
    /// Postfix style.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        id: &str,
        env: &mut Envelope,
        indexes: &[usize],
        outcomes: &[Outcome],
        relay: &str,
        now: u64,
        random: &mut u64,
    ) {
        let delay = now.saturating_sub(env.arrival);
        let expired = now
            >= env
                .arrival
                .saturating_add(self.config.max_queue_lifetime.as_secs());
        for (&i, outcome) in indexes.iter().zip(outcomes.iter().cycle()) {
            let rcpt = &mut env.recipients[i];
            rcpt.attempts += 1;
            let (status, text) = match outcome {
                Outcome::Delivered(reply) => {
                    rcpt.status = Status::Delivered;
                    ("sent", reply.clone())
                }
                Outcome::Deferred(reply) if expired => {
                    rcpt.status = Status::Failed;
                    let days = self.config.max_queue_lifetime.as_secs() as f64 / 86_400.0;
                    (
                        "bounced",
                        format!("{reply} (message expired: undeliverable for {days:.1} days)"),
                    )
                }
                Outcome::Deferred(reply) => {
                    let wait = schedule::retry_delay(
                        &self.config.retry_schedule,
                        rcpt.attempts,
                        next_random(random),
                    );
                    rcpt.next_attempt = now + wait;
                    ("deferred", reply.clone())
                }
                Outcome::Failed(reply) => {
                    rcpt.status = Status::Failed;
                    ("bounced", reply.clone())
                }
            };
            rcpt.last_reply = Some(text.clone());
            log::info!(
                "{id}: to={}, relay={relay}, delay={delay}, status={status} ({text})",
                rcpt.path
            );
        }
    }
}

fn is_due(rcpt: &Recipient, now: u64) -> bool {
    rcpt.status == Status::Pending && rcpt.next_attempt <= now
}
