//! The postmaster's queue actions in the running daemon (`postilion queue delete|hold|
//! release|flush|bounce`, asked over the control socket), made race-free against the
//! delivery threads. Whoever works on a message claims its id first: a worker from before it
//! loads the envelope until after its last write, an action for the time of its edit. An
//! action on a message a worker has is recorded for that worker, which applies it as it lets
//! go; the tool's answer waits for that, up to `PATIENCE`. Nothing is promised that is not
//! on disk: an action not done by then (or when the daemon stops) is withdrawn, logged at
//! warn, and answered 451 "repeat the command", so no recorded action outlives its request.
//! No outcome is ever written into a deleted or edited message and a deleted one is never
//! re-created. Owns the claims and the set of messages on hold; the edits themselves are
//! `queue/edit.rs`, the files `spool.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::datetime;
use crate::envelope::Envelope;
use crate::queue::edit::{self, Effect};
use crate::queue::request::{Reply, Request, Verb};
use crate::spool::Spool;

/// How long an action on a message a worker has waits for the worker to let go and the
/// action to be done: most attempts end within it, and it is well inside the tool's own wait
/// for an answer. After it, the tool is told to repeat the command.
const PATIENCE: Duration = Duration::from_secs(10);

/// What an action on one message came to.
type Outcome = Result<Effect, Reply>;

/// What became of an action on one message.
enum Acted {
    Done(Effect),
    /// A worker has it now (only for `flush` of the whole queue, which leaves it alone).
    BeingDelivered,
    Failed(Reply),
}

/// An action asked while a worker has the message, for the worker to apply as it lets go.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    verb: Verb,
    /// Who asked, for the log.
    origin: String,
    /// Where the outcome is handed to the request waiting for it.
    ticket: u64,
}

/// Who has a message now.
enum Claim {
    /// A delivery thread, with the actions asked for meanwhile, to apply as it lets go.
    Worker(Vec<Recorded>),
    /// A queue action, for the time of its edit.
    Action,
}

/// What asking for a message for an action gave.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Claimed,
    /// A worker has it: the action is recorded; its outcome comes under this ticket.
    Recorded(u64),
    /// A worker has it, and the action was not to be recorded.
    BeingDelivered,
    /// Another action has it (never with one control thread; kept safe anyway).
    Busy,
}

/// Everything the claims' lock guards.
#[derive(Default)]
struct Book {
    claimed: HashMap<String, Claim>,
    /// Outcomes of recorded actions, by ticket, until their request takes them.
    outcomes: HashMap<u64, Outcome>,
    last_ticket: u64,
    /// The daemon is stopping: no request waits any more.
    stopping: bool,
}

#[derive(Default)]
pub(super) struct Claims {
    book: Mutex<Book>,
    /// Signalled whenever a claim is let go, an outcome is in, or the daemon stops.
    changed: Condvar,
    /// Messages found on hold: the periodic scan leaves them alone.
    held: Mutex<HashSet<String>>,
}

impl Claims {
    /// A worker may start on `id` unless an action has it.
    pub(super) fn claim_for_worker(&self, id: &str) -> bool {
        let Ok(mut book) = self.book.lock() else {
            return false;
        };
        if book.claimed.contains_key(id) {
            return false;
        }
        book.claimed
            .insert(id.to_string(), Claim::Worker(Vec::new()));
        true
    }

    /// The worker is done writing: the actions recorded meanwhile (the claim is kept for
    /// them), or none and the claim is let go.
    fn worker_done(&self, id: &str) -> Vec<Recorded> {
        let Ok(mut book) = self.book.lock() else {
            return Vec::new();
        };
        match book.claimed.get_mut(id) {
            Some(Claim::Worker(recorded)) if !recorded.is_empty() => std::mem::take(recorded),
            _ => {
                book.claimed.remove(id);
                self.changed.notify_all();
                Vec::new()
            }
        }
    }

    /// Claims `id` for an action; when a worker has it, records `record` (verb and who
    /// asked) for the worker, or says so when there is nothing to record.
    fn ask(&self, id: &str, record: Option<(Verb, &str)>) -> Asked {
        let Ok(mut book) = self.book.lock() else {
            return Asked::Busy;
        };
        let book = &mut *book;
        match (book.claimed.get_mut(id), record) {
            (None, _) => {
                book.claimed.insert(id.to_string(), Claim::Action);
                Asked::Claimed
            }
            (Some(Claim::Worker(_)), None) => Asked::BeingDelivered,
            (Some(Claim::Worker(recorded)), Some((verb, origin))) => {
                book.last_ticket += 1;
                recorded.push(Recorded {
                    verb,
                    origin: origin.to_string(),
                    ticket: book.last_ticket,
                });
                Asked::Recorded(book.last_ticket)
            }
            (Some(Claim::Action), _) => Asked::Busy,
        }
    }

    /// Hands the outcome of a recorded action to the request waiting for it.
    fn settle(&self, ticket: u64, outcome: Outcome) {
        if let Ok(mut book) = self.book.lock() {
            book.outcomes.insert(ticket, outcome);
            self.changed.notify_all();
        }
    }

    /// Waits up to `patience` (less when the daemon stops) for the outcome of the action
    /// recorded under `ticket` on `id`. `None` when it did not come: the action is then
    /// withdrawn, never done later. One the worker has begun is waited for: it is one write.
    fn await_outcome(&self, id: &str, ticket: u64, patience: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + patience;
        // A worker that took the action but never settles it (it cannot, short of a bug)
        // does not hold the control thread forever.
        let last_resort = deadline + patience;
        let Ok(mut book) = self.book.lock() else {
            return None;
        };
        loop {
            if let Some(outcome) = book.outcomes.remove(&ticket) {
                return Some(outcome);
            }
            let now = Instant::now();
            if now >= deadline || book.stopping {
                if let Some(Claim::Worker(recorded)) = book.claimed.get_mut(id) {
                    if let Some(i) = recorded.iter().position(|r| r.ticket == ticket) {
                        recorded.remove(i);
                        return None;
                    }
                }
                if now >= last_resort {
                    return None;
                }
            }
            let until = if now < deadline && !book.stopping {
                deadline
            } else {
                last_resort
            };
            book = match self.changed.wait_timeout(book, until - now) {
                Ok((book, _)) => book,
                Err(_) => return None,
            };
        }
    }

    fn release(&self, id: &str) {
        if let Ok(mut book) = self.book.lock() {
            book.claimed.remove(id);
            self.changed.notify_all();
        }
    }

    /// The daemon stops: requests waiting for a worker are answered at once.
    pub(super) fn stop(&self) {
        if let Ok(mut book) = self.book.lock() {
            book.stopping = true;
            self.changed.notify_all();
        }
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.book.lock().is_ok_and(|book| book.stopping)
    }

    pub(super) fn is_held(&self, id: &str) -> bool {
        self.held.lock().is_ok_and(|held| held.contains(id))
    }

    pub(super) fn set_held(&self, id: &str, on_hold: bool) {
        if let Ok(mut held) = self.held.lock() {
            match on_hold {
                true => held.insert(id.to_string()),
                false => held.remove(id),
            };
        }
    }
}

/// The daemon's side of the queue tools.
pub struct Control {
    pub(super) claims: Arc<Claims>,
    spool: Arc<Spool>,
    /// Where a message that should go on after an action is handed to the scheduler.
    queued: Sender<String>,
    /// The workers' envelopes not yet written (a full disk): newer than the files.
    unsaved: Arc<Mutex<HashMap<String, Envelope>>>,
}

impl Control {
    pub(super) fn new(
        spool: Arc<Spool>,
        queued: Sender<String>,
        unsaved: Arc<Mutex<HashMap<String, Envelope>>>,
    ) -> Control {
        Control {
            claims: Arc::default(),
            spool,
            queued,
            unsaved,
        }
    }

    /// Answers one request; `origin` says who asked, for the log.
    pub fn handle(&self, request: &Request, origin: &str) -> Reply {
        match &request.id {
            Some(id) => self.act(request.verb, id, origin, PATIENCE),
            None => self.flush_all(origin),
        }
    }

    fn act(&self, verb: Verb, id: &str, origin: &str, patience: Duration) -> Reply {
        match self.act_on(verb, id, origin, Some(patience)) {
            Acted::Done(effect) => Reply::ok(format!("{id}: {}", effect.text)),
            Acted::BeingDelivered => Reply::new(451, not_done_yet(id)),
            Acted::Failed(reply) => reply,
        }
    }

    /// Acts on one message; when a worker has it, the action is recorded for the worker and
    /// waited for up to `patience`, or (`None`) left alone.
    fn act_on(&self, verb: Verb, id: &str, origin: &str, patience: Option<Duration>) -> Acted {
        let record = patience.map(|_| (verb, origin));
        match self.claims.ask(id, record) {
            Asked::Busy => Acted::Failed(Reply::new(
                451,
                format!("{id}: busy with another action, try again"),
            )),
            Asked::BeingDelivered => Acted::BeingDelivered,
            Asked::Recorded(ticket) => {
                log::info!(
                    "{id}: queue {} asked by the postmaster ({origin}) while it is being \
                     delivered: done when this attempt ends",
                    verb.name()
                );
                let patience = patience.unwrap_or_default();
                match self.claims.await_outcome(id, ticket, patience) {
                    Some(Ok(effect)) => Acted::Done(effect),
                    Some(Err(reply)) => Acted::Failed(reply),
                    None => {
                        let why = match self.claims.is_stopping() {
                            true => "the daemon is stopping".to_string(),
                            false => format!("still being delivered after {patience:?}"),
                        };
                        log::warn!(
                            "{id}: queue {} asked by the postmaster ({origin}) dropped, not \
                             done: {why}; the tool was told to repeat it",
                            verb.name()
                        );
                        Acted::Failed(Reply::new(451, not_done_yet(id)))
                    }
                }
            }
            Asked::Claimed => {
                let result = self.apply_claimed(verb, id, origin);
                self.claims.release(id);
                // Handed back to the scheduler unless it is gone or on hold: a worker that
                // found it claimed meanwhile left it to this action, whatever it changed.
                let goes_on = match &result {
                    Ok(effect) => verb != Verb::Delete && !effect.held,
                    Err(reply) => reply.code != 550,
                };
                if goes_on {
                    let _ = self.queued.send(id.to_string());
                }
                match result {
                    Ok(effect) => Acted::Done(effect),
                    Err(reply) => Acted::Failed(reply),
                }
            }
        }
    }

    /// Applies an action to a message claimed for it, and logs it.
    fn apply_claimed(&self, verb: Verb, id: &str, origin: &str) -> Outcome {
        let current = self.unsaved.lock().ok().and_then(|mut u| u.remove(id));
        let kept = current.clone();
        let result = edit::apply(&self.spool, verb, id, current);
        match &result {
            Ok(effect) => {
                self.claims
                    .set_held(id, verb != Verb::Delete && effect.held);
                match effect.changed {
                    true => log::info!(
                        "{id}: {} by the postmaster (queue {}, {origin})",
                        effect.text,
                        verb.name()
                    ),
                    false => log::info!(
                        "{id}: queue {} by the postmaster ({origin}): {}",
                        verb.name(),
                        effect.text
                    ),
                }
            }
            Err(reply) => {
                if let (Some(env), true) = (kept, reply.code != 550) {
                    // Not written: the outcomes it holds stay for the worker to write.
                    if let Ok(mut unsaved) = self.unsaved.lock() {
                        unsaved.insert(id.to_string(), env);
                    }
                }
                log::warn!(
                    "queue {} {id} by the postmaster ({origin}) failed: {}",
                    verb.name(),
                    reply.lines.join(" ")
                );
            }
        }
        result
    }

    /// A worker is done with `id` (`next`: when it wants another go): applies what was
    /// asked meanwhile, hands each outcome to its request, then lets go. Returns when the
    /// message should be worked on next.
    pub(super) fn worker_done(&self, id: &str, mut next: Option<u64>) -> Option<u64> {
        loop {
            let recorded = self.claims.worker_done(id);
            if recorded.is_empty() {
                return next;
            }
            for Recorded {
                verb,
                origin,
                ticket,
            } in recorded
            {
                let origin = format!("{origin}, asked during a delivery attempt");
                let outcome = self.apply_claimed(verb, id, &origin);
                match &outcome {
                    Ok(effect) if effect.changed => {
                        next = match verb {
                            Verb::Delete | Verb::Hold => None,
                            Verb::Flush | Verb::Release | Verb::Bounce => Some(datetime::now()),
                        }
                    }
                    Ok(_) => {}
                    Err(reply) if reply.code == 550 => {
                        log::info!(
                            "{id}: queue {} not needed: the message was done meanwhile",
                            verb.name()
                        );
                        next = None;
                    }
                    // Logged at warn; the request is answered 451.
                    Err(_) => {}
                }
                self.claims.settle(ticket, outcome);
            }
        }
    }

    /// `flush` with no id: every queued message not on hold. One a worker has now is left
    /// to that attempt.
    fn flush_all(&self, origin: &str) -> Reply {
        let ids = match self.spool.queued_ids() {
            Ok(ids) => ids,
            Err(e) => return Reply::new(451, e.to_string()),
        };
        let (mut flushed, mut held, mut now, mut failed) = (0, 0, 0, 0);
        for id in &ids {
            if self.claims.is_stopping() {
                return Reply::new(451, "stopping: not all flushed; repeat the command");
            }
            match self.act_on(Verb::Flush, id, origin, None) {
                Acted::Done(effect) if effect.changed => flushed += 1,
                Acted::Done(_) => held += 1,
                Acted::BeingDelivered => now += 1,
                // Gone meanwhile (delivered).
                Acted::Failed(reply) if reply.code == 550 => {}
                // A spool error, logged.
                Acted::Failed(_) => failed += 1,
            }
        }
        let said = format!(
            "{flushed} message(s) flushed, {held} on hold left alone, {now} being delivered \
             now"
        );
        match failed {
            0 => Reply::ok(said),
            n => Reply::new(
                451,
                format!("{said}; {n} not flushed (a spool error, see the log): repeat the command"),
            ),
        }
    }
}

/// The answer to an action on a message being delivered that could not wait for it.
fn not_done_yet(id: &str) -> String {
    format!("{id}: not done yet: the message is being delivered; repeat the command")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_with_message(name: &str) -> (std::path::PathBuf, Arc<Spool>, String) {
        let dir =
            std::env::temp_dir().join(format!("postilion-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Arc::new(Spool::open(&dir, None).unwrap());
        let mut env = Envelope::for_tests();
        let mut incoming = spool.incoming(&env).unwrap();
        incoming.write(b"x\r\n");
        let id = incoming.commit(&mut env).unwrap().id().to_string();
        (dir, spool, id)
    }

    /// Polls until an action on `id` is recorded for its worker.
    fn wait_recorded(claims: &Claims, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let book = claims.book.lock().unwrap();
            if let Some(Claim::Worker(recorded)) = book.claimed.get(id) {
                if !recorded.is_empty() {
                    return;
                }
            }
            drop(book);
            assert!(Instant::now() < deadline, "never recorded");
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    fn request(verb: Verb, id: &str) -> Request {
        Request {
            verb,
            id: Some(id.to_string()),
        }
    }

    #[test]
    fn a_claimed_message_is_not_given_to_a_second_owner() {
        let claims = Claims::default();
        assert!(claims.claim_for_worker("a"));
        assert!(!claims.claim_for_worker("a"));
        assert_eq!(claims.ask("a", None), Asked::BeingDelivered);
        assert_eq!(claims.ask("a", Some((Verb::Hold, "t"))), Asked::Recorded(1));
        let recorded = claims.worker_done("a");
        assert_eq!(recorded.len(), 1, "kept for the worker");
        assert_eq!((recorded[0].verb, recorded[0].ticket), (Verb::Hold, 1));
        assert!(!claims.claim_for_worker("a"), "still the worker's");
        assert!(claims.worker_done("a").is_empty());
        assert_eq!(claims.ask("a", Some((Verb::Delete, "t"))), Asked::Claimed);
        assert!(!claims.claim_for_worker("a"), "an action has it");
        assert_eq!(claims.ask("a", Some((Verb::Delete, "t"))), Asked::Busy);
        claims.release("a");
        assert!(claims.claim_for_worker("a"));
    }

    #[test]
    fn an_action_asked_during_delivery_is_answered_when_the_worker_has_done_it() {
        let (dir, spool, id) = spool_with_message("recorded");
        let (queued, requeued) = crossbeam_channel::unbounded();
        let control = Arc::new(Control::new(Arc::clone(&spool), queued, Arc::default()));
        assert!(control.claims.claim_for_worker(&id));
        let asking = Arc::clone(&control);
        let asked_id = id.clone();
        let tool = std::thread::spawn(move || {
            asking.act(
                Verb::Delete,
                &asked_id,
                "uid 0, pid 1",
                Duration::from_secs(20),
            )
        });
        wait_recorded(&control.claims, &id);
        assert!(spool.is_queued(&id), "not under the worker's feet");
        assert!(!tool.is_finished(), "no answer before it is done");
        // The worker writes its outcome, then lets go: the delete happens then.
        spool.update(&id, &spool.load(&id).unwrap()).unwrap();
        assert_eq!(control.worker_done(&id, Some(99)), None);
        let reply = tool.join().unwrap();
        assert_eq!(
            (reply.code, reply.lines),
            (250, vec![format!("{id}: deleted")])
        );
        assert!(!spool.is_queued(&id));
        assert!(spool.message(&id).is_err(), "the message file is gone too");
        assert_eq!(
            control.handle(&request(Verb::Delete, &id), "test").code,
            550
        );
        assert!(
            requeued.try_recv().is_err(),
            "a deleted message is not handed out"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_action_the_worker_does_not_reach_in_time_is_withdrawn_and_answered_451() {
        let (dir, spool, id) = spool_with_message("withdrawn");
        let (queued, _requeued) = crossbeam_channel::unbounded();
        let control = Control::new(Arc::clone(&spool), queued, Arc::default());
        assert!(control.claims.claim_for_worker(&id));
        let reply = control.act(Verb::Hold, &id, "test", Duration::ZERO);
        assert_eq!(reply.code, 451);
        assert_eq!(
            reply.lines,
            [format!(
                "{id}: not done yet: the message is being delivered; repeat the command"
            )]
        );
        // Nothing left for the worker: it goes on as it would have.
        assert_eq!(control.worker_done(&id, Some(99)), Some(99));
        assert!(
            !spool.load(&id).unwrap().held,
            "not held behind the tool's back"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_waiting_action_is_answered_at_once_when_the_daemon_stops() {
        let (dir, spool, id) = spool_with_message("stopping");
        let (queued, _requeued) = crossbeam_channel::unbounded();
        let control = Arc::new(Control::new(Arc::clone(&spool), queued, Arc::default()));
        assert!(control.claims.claim_for_worker(&id));
        let asking = Arc::clone(&control);
        let asked_id = id.clone();
        let started = Instant::now();
        let tool = std::thread::spawn(move || {
            asking.act(Verb::Delete, &asked_id, "test", Duration::from_secs(60))
        });
        wait_recorded(&control.claims, &id);
        control.claims.stop();
        assert_eq!(tool.join().unwrap().code, 451);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(control.worker_done(&id, None), None);
        assert!(spool.is_queued(&id), "withdrawn, not done");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_recorded_action_that_cannot_be_written_is_answered_451() {
        let (dir, spool, id) = spool_with_message("unwritten");
        let (queued, _requeued) = crossbeam_channel::unbounded();
        let control = Arc::new(Control::new(Arc::clone(&spool), queued, Arc::default()));
        assert!(control.claims.claim_for_worker(&id));
        let asking = Arc::clone(&control);
        let asked_id = id.clone();
        let tool = std::thread::spawn(move || {
            asking.act(Verb::Hold, &asked_id, "test", Duration::from_secs(20))
        });
        wait_recorded(&control.claims, &id);
        // No tmp/ to write the new envelope in: the hold cannot be written.
        std::fs::remove_dir_all(dir.join("tmp")).unwrap();
        assert_eq!(control.worker_done(&id, Some(99)), Some(99));
        let reply = tool.join().unwrap();
        assert_eq!(reply.code, 451, "{reply:?}");
        std::fs::create_dir(dir.join("tmp")).unwrap();
        assert!(!spool.load(&id).unwrap().held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_action_hands_the_message_back_unless_deleted_or_held() {
        let (dir, spool, id) = spool_with_message("requeue");
        let (queued, requeued) = crossbeam_channel::unbounded();
        let control = Control::new(Arc::clone(&spool), queued, Arc::default());
        let ask = |verb| control.handle(&request(verb, &id), "test");
        // A release or bounce that changes nothing still hands it back: the worker that lost
        // the claim to it forgot it.
        assert!(ask(Verb::Release).lines[0].contains("not on hold"));
        assert_eq!(requeued.try_recv().ok(), Some(id.clone()));
        assert!(ask(Verb::Hold).is_ok());
        assert!(requeued.try_recv().is_err());
        assert!(control.claims.is_held(&id));
        assert!(ask(Verb::Hold).lines[0].contains("already on hold"));
        assert!(ask(Verb::Flush).lines[0].contains("release it first"));
        assert!(requeued.try_recv().is_err(), "held: not handed out");
        assert!(ask(Verb::Release).is_ok());
        assert_eq!(requeued.try_recv().ok(), Some(id.clone()));
        assert!(!control.claims.is_held(&id));
        assert!(ask(Verb::Flush).is_ok());
        assert_eq!(requeued.try_recv().ok(), Some(id.clone()));
        assert!(ask(Verb::Delete).is_ok());
        assert!(requeued.try_recv().is_err(), "deleted: not handed out");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
