//! Delivery: a scheduler thread hands due queue ids to a pool of at most `delivery_threads`
//! worker threads, started as work comes (an idle server has none: each costs memory); a
//! worker delivers each due recipient of one message (local Maildir, or remote), writes each
//! outcome into the envelope right after its attempt, bounces what failed, and removes the
//! message when every recipient is done.
//!
//! Only this module dials out or writes Maildirs; the spool is still written only through
//! `spool.rs`. Sessions hand over ids without blocking (an unbounded channel).

pub mod bounce;
mod client;
pub mod control;
mod headers;
mod local;
mod maildir;
mod mx;
mod notify;
pub mod outcome;
mod remote;
pub mod route;
pub mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};

use crate::auth::Credentials;
use crate::config::Config;
use crate::datetime;
use crate::directory::Directory;
use crate::envelope::{Envelope, Recipient, Status};
use crate::queue::socket::ControlSocket;
use crate::smtp::address::ForwardPath;
use crate::spool::{MessageFile, Spool};
use crate::tls::ClientTls;
use control::Control;
use headers::Headers;
use mx::Dns;
use outcome::{Action, DsnStatus, Outcome};
use schedule::Schedule;

/// Mail with more `Received:` headers than this is looping: bounced with 5.4.6, as Postfix's
/// `hopcount_limit`.
const MAX_HOPS: usize = 50;
/// A temporary failure expires the message only after this many attempts, whatever its age:
/// a clock stepped forward (a box without a real-time clock, then NTP) must not bounce mail
/// at its first hiccup.
const MIN_ATTEMPTS_TO_EXPIRE: u32 = 3;

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
    /// Envelopes whose outcomes are achieved but could not be written (a full disk): kept
    /// here, never repeated, until the write succeeds (invariant 6).
    unsaved: Arc<Mutex<HashMap<String, Envelope>>>,
    /// The postmaster's queue actions, and who has which message.
    control: Arc<Control>,
    /// A stop was asked for: no new message or remote transaction is begun.
    stopping: AtomicBool,
    /// Ids found in the queue at start or by a later scan: an earlier run (or another
    /// program's) may have written their Maildir files without recording it.
    recovered: Mutex<HashSet<String>>,
}

/// One message being worked on.
struct Job<'a> {
    id: &'a str,
    env: Envelope,
    now: u64,
    /// Where the message's bytes are.
    message: MessageFile,
    /// Every recipient was done at a save, and the message's files are gone.
    removed: bool,
}

/// The running delivery side: where sessions announce new mail, and how it stops.
pub struct Delivery {
    /// Queue ids of newly committed messages.
    pub queued: Sender<String>,
    /// Dropped to stop the scheduler (which then drops the workers' channel).
    stop: Option<Sender<()>>,
    scheduler: Option<thread::JoinHandle<()>>,
    /// The delivery threads started so far (by the scheduler, as work comes).
    workers: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
    context: Option<Arc<Context>>,
    /// The queue tools' way in, served on `spool/control` by `serve_control`.
    control: Arc<Control>,
    control_socket: Option<ControlSocket>,
}

/// What a forced exit can still do for delivery: write the outcomes held in memory.
pub struct LastWords(Option<Arc<Context>>);

impl LastWords {
    pub fn write_unsaved(&self) {
        if let Some(context) = &self.0 {
            context.write_unsaved();
        }
    }
}

impl Delivery {
    /// Answers the queue tools on `spool/control` until the stop.
    pub fn serve_control(&mut self, spool: &std::path::Path) -> std::io::Result<()> {
        let control = Arc::clone(&self.control);
        let socket = crate::queue::socket::serve(spool, move |request, origin| {
            control.handle(request, origin)
        })?;
        self.control_socket = Some(socket);
        Ok(())
    }

    pub fn last_words(&self) -> LastWords {
        LastWords(self.context.clone())
    }

    /// Hands out no more work, lets deliveries in progress finish until `deadline`, and
    /// writes outcomes still held in memory. Says how many deliveries were left running
    /// (their messages are simply delivered again after the next start).
    pub fn stop(mut self, deadline: Instant) -> usize {
        // A queue action waiting for a worker is answered "not done" now, not at its time.
        self.control.claims.stop();
        // No new delivery from now on, before the queue tools' channel is waited for: its
        // request in progress (a flush of a long queue) may take a while.
        if let Some(context) = &self.context {
            context.stopping.store(true, Ordering::Relaxed);
        }
        drop(self.stop.take());
        if let Some(socket) = self.control_socket.take() {
            socket.stop();
        }
        // The scheduler returns at once; once it has, no worker is started any more.
        let running = |workers: &Mutex<Vec<thread::JoinHandle<()>>>| {
            let workers = workers.lock().unwrap_or_else(|p| p.into_inner());
            workers.iter().filter(|w| !w.is_finished()).count()
        };
        // Polled: a worker may be deep in a remote transaction, with nothing to wake it.
        while Instant::now() < deadline
            && (self.scheduler.as_ref().is_some_and(|s| !s.is_finished())
                || running(&self.workers) > 0)
        {
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(context) = &self.context {
            context.write_unsaved();
        }
        running(&self.workers)
    }
}

/// Starts the scheduler and the workers with the ids recovered at start; `left_to_pickup`
/// were found too, and pickup hands them on (their Maildir copies are looked for in `cur/`
/// as well, as for every message an earlier run may have delivered).
pub fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    directory: Arc<Directory>,
    recovered: Vec<String>,
    left_to_pickup: &[String],
) -> std::io::Result<Delivery> {
    let (queued, queued_rx) = crossbeam_channel::unbounded();
    let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let unsaved = Arc::default();
    let control = Arc::new(Control::new(
        Arc::clone(&spool),
        queued.clone(),
        Arc::clone(&unsaved),
    ));
    let workers = Arc::new(Mutex::new(Vec::new()));
    if config.delivery_threads == 0 {
        log::warn!("delivery is paused (delivery_threads = 0): mail waits in queue/");
        return Ok(Delivery {
            queued,
            stop: Some(stop),
            scheduler: None,
            workers,
            context: None,
            control,
            control_socket: None,
        });
    }
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
        unsaved,
        control: Arc::clone(&control),
        stopping: AtomicBool::new(false),
        recovered: Mutex::new(recovered.iter().chain(left_to_pickup).cloned().collect()),
    });
    for id in recovered {
        let _ = queued.send(id);
    }
    let pool = Pool::new(Arc::clone(&context), Arc::clone(&workers));
    let scan_context = Arc::clone(&context);
    let scheduler = thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || scheduler(&scan_context, queued_rx, stop_rx, pool))?;
    Ok(Delivery {
        queued,
        stop: Some(stop),
        scheduler: Some(scheduler),
        workers,
        context: Some(context),
        control,
        control_socket: None,
    })
}

/// The delivery threads: at most `delivery_threads`, each started when a message is handed
/// out and every thread already started is busy. Owned by the scheduler.
struct Pool {
    context: Arc<Context>,
    work: Sender<String>,
    work_rx: Receiver<String>,
    results: Sender<(String, Option<u64>)>,
    /// What the workers say when they are done with a message.
    results_rx: Receiver<(String, Option<u64>)>,
    started: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
    /// Messages handed out and not yet finished.
    busy: usize,
}

impl Pool {
    fn new(context: Arc<Context>, started: Arc<Mutex<Vec<thread::JoinHandle<()>>>>) -> Pool {
        let (work, work_rx) = crossbeam_channel::unbounded();
        let (results, results_rx) = crossbeam_channel::unbounded();
        Pool {
            context,
            work,
            work_rx,
            results,
            results_rx,
            started,
            busy: 0,
        }
    }

    /// Gives `id` to an idle worker, starting one if none is idle and the pool may grow.
    /// Gives it back when there is no worker at all (none could be started).
    fn hand_out(&mut self, id: String) -> Result<(), String> {
        let count = self.started().len();
        if self.busy >= count && count < self.context.config.delivery_threads {
            self.start_worker(count);
        }
        if self.started().is_empty() {
            return Err(id);
        }
        self.busy += 1;
        let _ = self.work.send(id);
        Ok(())
    }

    fn started(&self) -> std::sync::MutexGuard<'_, Vec<thread::JoinHandle<()>>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker is done with a message.
    fn finished(&mut self) {
        self.busy = self.busy.saturating_sub(1);
    }

    /// Starts worker `n`. A failure is logged: the message waits for a worker already
    /// running, or is tried again later.
    fn start_worker(&self, n: usize) {
        let (context, work_rx, results) = (
            Arc::clone(&self.context),
            self.work_rx.clone(),
            self.results.clone(),
        );
        let spawned = thread::Builder::new()
            .name(format!("delivery-{n}"))
            .spawn(move || {
                let mut worker = Worker {
                    dns: None,
                    context,
                    random: seed(n as u64),
                };
                for id in work_rx.iter() {
                    // Stopping: what is still handed out waits for the next start.
                    if worker.context.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let next = worker.work(&id);
                    let _ = results.send((id, next));
                }
            });
        match spawned {
            Ok(handle) => self.started().push(handle),
            Err(e) => log::error!("cannot start delivery thread {n}: {e}"),
        }
    }
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
fn scheduler(context: &Context, queued: Receiver<String>, stop: Receiver<()>, mut pool: Pool) {
    let results = pool.results_rx.clone();
    let mut schedule = Schedule::default();
    let scan_every = context.config.queue_scan_interval.as_secs().max(1);
    let mut next_scan = datetime::now() + scan_every;
    loop {
        let now = datetime::now();
        for id in schedule.take_due(now) {
            if let Err(id) = pool.hand_out(id) {
                // No delivery thread could be started: try again in a minute.
                schedule.finished(&id, Some(now + 60), now);
            }
        }
        if now >= next_scan {
            match context.spool.queued_ids() {
                Ok(ids) => {
                    for id in ids {
                        // Still in maildrop/: pickup is taking it in and hands it over itself
                        // once the maildrop file is gone (delivered before that, a crash
                        // could make pickup take it in again).
                        let picking_up = context.spool.in_maildrop(&id);
                        if !schedule.knows(&id)
                            && !context.control.claims.is_held(&id)
                            && !picking_up
                        {
                            log::info!("{id}: found in queue/ by the periodic scan");
                            schedule.add(&id, now);
                            if let Ok(mut recovered) = context.recovered.lock() {
                                recovered.insert(id);
                            }
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
                // An id still in maildrop/ (asked for by a queue tool, say) is pickup's to hand
                // on, once the file is durably gone: delivered before, a crash could bring the
                // file back and the message with it.
                Ok(id) if context.spool.in_maildrop(&id) => {}
                Ok(id) => schedule.add(&id, datetime::now()),
                Err(_) => return,
            },
            recv(results) -> result => {
                if let Ok((id, next)) = result {
                    pool.finished();
                    schedule.finished(&id, next, datetime::now());
                }
            }
            // Stopping: dropping the pool's `work` ends each worker after its current message.
            recv(stop) -> _ => return,
            default(timeout) => {}
        }
    }
}

/// One delivery thread's own state: its resolver and its randomness.
struct Worker {
    context: Arc<Context>,
    /// Made at the first remote delivery: a box that only delivers locally never pays for
    /// it. A failure is not kept: the next remote delivery tries again (at boot,
    /// /etc/resolv.conf may not exist yet).
    dns: Option<Dns>,
    random: u64,
}

impl Worker {
    fn dns(&mut self) -> Result<&Dns, String> {
        if self.dns.is_none() {
            let config = &self.context.config;
            let timeout = config.smtp_command_timeout.min(Duration::from_secs(10));
            match Dns::new(config.dns_server, timeout) {
                Ok(dns) => self.dns = Some(dns),
                Err(e) => {
                    log::error!("no DNS resolver, remote mail will wait: {e}");
                    return Err(e);
                }
            }
        }
        self.dns.as_ref().ok_or_else(String::new)
    }

    /// Works on one message it claims first; a message a queue action has is left to it
    /// (the action hands it back to the scheduler unless it deleted or held it).
    fn work(&mut self, id: &str) -> Option<u64> {
        let context = Arc::clone(&self.context);
        if !context.control.claims.claim_for_worker(id) {
            return None;
        }
        let next = context.work(id, self);
        context.control.worker_done(id, next)
    }
}

impl<'a> Job<'a> {
    fn new(id: &'a str, env: Envelope, now: u64, message: MessageFile) -> Job<'a> {
        Job {
            id,
            env,
            now,
            message,
            removed: false,
        }
    }
}

impl Context {
    /// Works on one message; returns when it wants another go, if ever.
    fn work(&self, id: &str, worker: &mut Worker) -> Option<u64> {
        let now = datetime::now();
        let message = match self.spool.message(id) {
            Ok(message) => message,
            Err(e) => {
                log::error!("{id}: cannot open its message file: {e}");
                return None;
            }
        };
        let unsaved = self.unsaved.lock().ok().and_then(|mut u| u.remove(id));
        let mut job = match unsaved {
            Some(env) => {
                let mut job = Job::new(id, env, now, message);
                if !self.save(&mut job) {
                    return self.keep(job);
                }
                log::info!("{id}: delivery state recorded after all");
                job
            }
            None => match self.spool.load(id) {
                Ok(env) => Job::new(id, env, now, message),
                Err(e) => {
                    log::error!("{id}: cannot load: {e}");
                    return None;
                }
            },
        };
        if job.env.held {
            // Not delivered, nor expired, until released; the scan leaves it alone.
            self.control.claims.set_held(id, true);
            log::info!("{id}: on hold, not delivered until released");
            return None;
        }
        let headers = Headers::read(&job.message);
        if headers.hops > MAX_HOPS {
            let why = format!(
                "554 5.4.6 too many hops: {} Received: headers, the limit is {MAX_HOPS} (mail loop?)",
                headers.hops
            );
            for i in 0..job.env.recipients.len() {
                if is_due(&job.env.recipients[i], now) {
                    let loop_detected = Outcome::failed(DsnStatus::new(5, 4, 6), &why);
                    self.record(&mut job, i, loop_detected, "none", &mut worker.random);
                }
            }
            if !self.save(&mut job) {
                return self.keep(job);
            }
        }

        // Local recipients first: aliases may add remote ones to this same message.
        let table = self.directory.table();
        let mut i = 0;
        while i < job.env.recipients.len() {
            let rcpt = &job.env.recipients[i];
            if is_due(rcpt, now) && self.is_local(&rcpt.path) {
                let outcome = self.deliver_local(&mut job, i, &table, &headers);
                self.record(&mut job, i, outcome, "local", &mut worker.random);
                if !self.save(&mut job) {
                    return self.keep(job);
                }
            }
            i += 1;
        }

        // Remote recipients, one transaction per domain; each outcome is recorded before the
        // connection is closed, so a server slow to answer QUIT widens no crash window.
        let mut domains: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, rcpt) in job.env.recipients.iter().enumerate() {
            if let (true, ForwardPath::Mailbox(m)) = (is_due(rcpt, now), &rcpt.path) {
                domains.entry(m.domain.to_lowercase()).or_default().push(i);
            }
        }
        for (domain, indexes) in domains {
            if self.stopping.load(Ordering::Relaxed) {
                // The rest waits for the next start, as it is in the envelope.
                return Some(now);
            }
            let attempt = self.deliver_remote(&job, &domain, &indexes, worker);
            if attempt.outcomes.is_empty() {
                // Stopped before any server took the transaction: not an attempt.
                return Some(now);
            }
            for (&i, outcome) in indexes.iter().zip(attempt.outcomes) {
                self.record(&mut job, i, outcome, &attempt.relay, &mut worker.random);
            }
            let saved = self.save(&mut job);
            if let Some(connection) = attempt.connection {
                connection.quit();
            }
            if !saved {
                return self.keep(job);
            }
        }

        if job.removed {
            return None;
        }
        if !self.report_failures(&mut job) || !self.warn_delay(&mut job) {
            return self.keep(job);
        }
        if job.removed {
            // The report's save found every recipient done and removed the message.
            return None;
        }
        if job.env.recipients.iter().all(Recipient::is_done) {
            if let Err(e) = self.spool.remove(id) {
                log::error!("{id}: cannot remove: {e}");
            }
            log::info!("{id}: removed");
            return None;
        }
        job.env
            .recipients
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| r.next_attempt)
            .min()
            .or(Some(now + self.spool_retry()))
    }

    fn is_local(&self, path: &ForwardPath) -> bool {
        match path {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => route::is_local(&m.domain, &self.config.local_domains),
        }
    }

    /// Writes the envelope after an attempt; false (logged) if the spool refused. When every
    /// recipient is done the message is removed instead: its removal is the record, and an
    /// envelope written only to be deleted would cost a file, a rename and two fsyncs.
    fn save(&self, job: &mut Job) -> bool {
        if job.env.recipients.iter().all(Recipient::is_done) {
            match self.spool.remove(job.id) {
                Ok(()) => {
                    log::info!("{}: removed", job.id);
                    job.removed = true;
                    return true;
                }
                Err(e) => log::error!("{}: cannot remove, recording instead: {e}", job.id),
            }
        }
        match self.spool.update(job.id, &job.env) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "{}: cannot record delivery state, keeping it in memory: {e}",
                    job.id
                );
                false
            }
        }
    }

    /// Writes the envelopes held in memory (at a stop); those the spool still refuses are
    /// named, since their outcomes are lost with this process.
    fn write_unsaved(&self) {
        let Ok(mut unsaved) = self.unsaved.lock() else {
            return;
        };
        for (id, env) in unsaved.drain() {
            match self.spool.update(&id, &env) {
                Ok(()) => log::info!("{id}: delivery state recorded at stop"),
                Err(e) => log::error!(
                    "{id}: delivery state lost at stop, recipients already done may get the \
                     message again: {e}"
                ),
            }
        }
    }

    /// Keeps an envelope the spool refused, outcomes and all, for the next go: then only the
    /// write is tried again, never a delivery already made.
    fn keep(&self, job: Job) -> Option<u64> {
        if let Ok(mut unsaved) = self.unsaved.lock() {
            unsaved.insert(job.id.to_string(), job.env);
        }
        Some(job.now + self.spool_retry())
    }

    /// How soon a refused spool write is tried again: the first retry delay, at most a minute.
    fn spool_retry(&self) -> u64 {
        let first = self
            .config
            .retry_schedule
            .first()
            .map_or(60, Duration::as_secs);
        first.clamp(1, 60)
    }

    /// A temporary failure that ends the message's life: old enough, and tried often enough.
    fn expired(&self, arrival: u64, attempts: u32, now: u64) -> bool {
        let lifetime = self.config.max_queue_lifetime.as_secs();
        now >= arrival.saturating_add(lifetime) && attempts >= MIN_ATTEMPTS_TO_EXPIRE
    }

    /// Applies one recipient's outcome and logs it, Postfix style.
    fn record(&self, job: &mut Job, i: usize, outcome: Outcome, relay: &str, random: &mut u64) {
        let (now, arrival) = (job.now, job.env.arrival);
        let rcpt = &mut job.env.recipients[i];
        rcpt.attempts += 1;
        let outcome = match outcome.action {
            Action::Deferred if self.expired(arrival, rcpt.attempts, now) => {
                let days = self.config.max_queue_lifetime.as_secs() as f64 / 86_400.0;
                let text = format!(
                    "{} (message expired: undeliverable for {days:.1} days, {} attempts)",
                    outcome.text, rcpt.attempts
                );
                Outcome::failed(DsnStatus::new(4, 4, 7), text)
            }
            _ => outcome,
        };
        let status = match outcome.action {
            Action::Delivered => {
                rcpt.status = Status::Delivered;
                "sent"
            }
            Action::Expanded => {
                rcpt.status = Status::Expanded;
                "expanded"
            }
            Action::Deferred => {
                let wait = schedule::retry_delay(
                    &self.config.retry_schedule,
                    rcpt.attempts,
                    next_random(random),
                );
                rcpt.next_attempt = now + wait;
                "deferred"
            }
            Action::Failed => {
                rcpt.status = Status::Failed;
                "bounced"
            }
        };
        log::info!(
            "{}: to={}, relay={relay}, delay={}, dsn={}, status={status} ({})",
            job.id,
            rcpt.path,
            now.saturating_sub(arrival),
            outcome.status,
            outcome.text
        );
        rcpt.last_reply = Some(outcome.text);
        rcpt.last_status = Some(outcome.status);
    }
}

fn is_due(rcpt: &Recipient, now: u64) -> bool {
    rcpt.status == Status::Pending && rcpt.next_attempt <= now
}
