//! The postmaster's queue actions in the running daemon (`postilion queue delete|hold|
//! release|flush|bounce`, asked over the control socket), made race-free against the
//! delivery threads. Whoever works on a message claims its id first: a worker from before it
//! loads the envelope until after its last write, an action for the time of its edit. An
//! action waits a few seconds for a worker that has its message; after that it is recorded
//! and applied by the worker as it lets go (the reply says so), so no outcome is ever written into a deleted or edited message and a
//! deleted one is never re-created. Owns the claims and the set of messages on hold; the
//! edits themselves are `queue/edit.rs`, the files `spool.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::datetime;
use crate::envelope::Envelope;
use crate::queue::edit::{self, Effect};
use crate::queue::request::{Reply, Request, Verb};
use crate::spool::Spool;

/// How long an action on one message waits for a worker that has it before leaving it to
/// the worker: long enough for a QUIT, short enough for a person at a prompt.
const PATIENCE: Duration = Duration::from_secs(3);

/// What became of an action on one message.
enum Acted {
    Done(Effect),
    /// Left to the worker that has the message.
    Recorded,
    Failed(Reply),
}

/// Who has a message now.
enum Claim {
    /// A delivery thread, with the actions asked for meanwhile, to apply as it lets go.
    Worker(Vec<Verb>),
    /// A queue action, for the time of its edit.
    Action,
}

/// What asking for a message for an action gave.
enum Asked {
    Claimed,
    /// A worker has it: the action is recorded and done when the worker lets go.
    Recorded,
    /// Another action has it (never with one control thread; kept safe anyway).
    Busy,
}

#[derive(Default)]
pub(super) struct Claims {
    claimed: Mutex<HashMap<String, Claim>>,
    /// Signalled whenever a claim is let go.
    released: Condvar,
    /// Messages found on hold: the periodic scan leaves them alone.
    held: Mutex<HashSet<String>>,
}

impl Claims {
    /// A worker may start on `id` unless an action has it.
    pub(super) fn claim_for_worker(&self, id: &str) -> bool {
        let Ok(mut claimed) = self.claimed.lock() else {
            return false;
        };
        if claimed.contains_key(id) {
            return false;
        }
        claimed.insert(id.to_string(), Claim::Worker(Vec::new()));
        true
    }

    /// The worker is done writing: the actions recorded meanwhile (the claim is kept for
    /// them), or none and the claim is let go.
    fn worker_done(&self, id: &str) -> Vec<Verb> {
        let Ok(mut claimed) = self.claimed.lock() else {
            return Vec::new();
        };
        match claimed.get_mut(id) {
            Some(Claim::Worker(recorded)) if !recorded.is_empty() => std::mem::take(recorded),
            _ => {
                claimed.remove(id);
                self.released.notify_all();
                Vec::new()
            }
        }
    }

    /// Claims `id` for an action, waiting up to `patience` for a worker that has it (most
    /// are only saying QUIT); after that the action is recorded for the worker.
    fn ask(&self, id: &str, verb: Verb, patience: Duration) -> Asked {
        let deadline = Instant::now() + patience;
        let Ok(mut claimed) = self.claimed.lock() else {
            return Asked::Busy;
        };
        loop {
            let now = Instant::now();
            match claimed.get_mut(id) {
                None => {
                    claimed.insert(id.to_string(), Claim::Action);
                    return Asked::Claimed;
                }
                Some(Claim::Worker(_)) if now < deadline => {
                    claimed = match self.released.wait_timeout(claimed, deadline - now) {
                        Ok((claimed, _)) => claimed,
                        Err(_) => return Asked::Busy,
                    };
                }
                Some(Claim::Worker(recorded)) => {
                    recorded.push(verb);
                    return Asked::Recorded;
                }
                Some(Claim::Action) => return Asked::Busy,
            }
        }
    }

    fn release(&self, id: &str) {
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.remove(id);
            self.released.notify_all();
        }
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
    /// Where a flushed or released message is handed to the scheduler.
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
        match self.act_on(verb, id, origin, patience) {
            Acted::Done(effect) => Reply::ok(format!("{id}: {}", effect.text)),
            Acted::Recorded => Reply::ok(format!(
                "{id}: being delivered now; {} when this attempt ends",
                done_word(verb)
            )),
            Acted::Failed(reply) => reply,
        }
    }

    fn act_on(&self, verb: Verb, id: &str, origin: &str, patience: Duration) -> Acted {
        match self.claims.ask(id, verb, patience) {
            Asked::Busy => Acted::Failed(Reply::new(
                451,
                format!("{id}: busy with another action, try again"),
            )),
            Asked::Recorded => {
                log::info!(
                    "{id}: queue {} asked by the postmaster ({origin}) while it is being \
                     delivered: done when this attempt ends",
                    verb.name()
                );
                Acted::Recorded
            }
            Asked::Claimed => {
                let result = self.apply_claimed(verb, id, origin);
                self.claims.release(id);
                // Handed back to the scheduler when it should go on (after a spool error too:
                // the worker that skipped it meanwhile left it to this action).
                let goes_on = match &result {
                    Ok(effect) => effect.changed,
                    Err(reply) => reply.code != 550,
                };
                if goes_on && matches!(verb, Verb::Flush | Verb::Release | Verb::Bounce) {
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
    fn apply_claimed(&self, verb: Verb, id: &str, origin: &str) -> Result<Effect, Reply> {
        let current = self.unsaved.lock().ok().and_then(|mut u| u.remove(id));
        let kept = current.clone();
        let result = edit::apply(&self.spool, verb, id, current);
        match &result {
            Ok(effect) if effect.changed => {
                match verb {
                    Verb::Hold => self.claims.set_held(id, true),
                    Verb::Flush => {}
                    Verb::Release | Verb::Bounce | Verb::Delete => self.claims.set_held(id, false),
                }
                log::info!(
                    "{id}: {} by the postmaster (queue {}, {origin})",
                    effect.text,
                    verb.name()
                );
            }
            Ok(effect) => log::info!(
                "{id}: queue {} by the postmaster ({origin}): {}",
                verb.name(),
                effect.text
            ),
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
    /// asked meanwhile, then lets go. Returns when the message should be worked on next.
    pub(super) fn worker_done(&self, id: &str, mut next: Option<u64>) -> Option<u64> {
        loop {
            let recorded = self.claims.worker_done(id);
            if recorded.is_empty() {
                return next;
            }
            for verb in recorded {
                let origin = "asked during a delivery attempt";
                match self.apply_claimed(verb, id, origin) {
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
                    Err(_) => {}
                }
            }
        }
    }

    /// `flush` with no id: every queued message not on hold.
    fn flush_all(&self, origin: &str) -> Reply {
        let ids = match self.spool.queued_ids() {
            Ok(ids) => ids,
            Err(e) => return Reply::new(451, e.to_string()),
        };
        let (mut flushed, mut held, mut later) = (0, 0, 0);
        for id in &ids {
            match self.act_on(Verb::Flush, id, origin, Duration::ZERO) {
                Acted::Done(effect) if effect.changed => flushed += 1,
                Acted::Done(_) => held += 1,
                Acted::Recorded => later += 1,
                // Gone meanwhile (delivered), or a spool error already logged.
                Acted::Failed(_) => {}
            }
        }
        Reply::ok(format!(
            "{flushed} message(s) flushed, {held} on hold left alone, {later} being delivered \
             now (flushed when their attempt ends)"
        ))
    }
}

/// `deleted`, `put on hold`, ...: what the reply promises for later.
fn done_word(verb: Verb) -> &'static str {
    match verb {
        Verb::Delete => "deleted",
        Verb::Hold => "put on hold",
        Verb::Release => "released",
        Verb::Flush => "flushed",
        Verb::Bounce => "returned to sender",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Recipient;
    use crate::smtp::address::{ForwardPath, ReversePath};

    fn spool_with_message(name: &str) -> (std::path::PathBuf, Arc<Spool>, String) {
        let dir =
            std::env::temp_dir().join(format!("postilion-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Arc::new(Spool::open(&dir, None).unwrap());
        let mut env = Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::pending(ForwardPath::Postmaster)],
            client: None,
            helo: "h".into(),
            protocol: "ESMTP".into(),
            eight_bit: false,
            smtputf8: false,
            arrival: 1,
            size: 0,
            delay_warned: false,
            auth: None,
            held: false,
        };
        let mut incoming = spool.incoming(&env).unwrap();
        incoming.write(b"x\r\n");
        let id = incoming.commit(&mut env).unwrap().id().to_string();
        (dir, spool, id)
    }

    #[test]
    fn a_claimed_message_is_not_given_to_a_second_owner() {
        let claims = Claims::default();
        assert!(claims.claim_for_worker("a"));
        assert!(!claims.claim_for_worker("a"));
        assert!(matches!(
            claims.ask("a", Verb::Hold, Duration::ZERO),
            Asked::Recorded
        ));
        assert_eq!(claims.worker_done("a"), [Verb::Hold], "kept for the worker");
        assert!(!claims.claim_for_worker("a"), "still the worker's");
        assert!(claims.worker_done("a").is_empty());
        assert!(matches!(
            claims.ask("a", Verb::Delete, Duration::ZERO),
            Asked::Claimed
        ));
        assert!(!claims.claim_for_worker("a"), "an action has it");
        assert!(matches!(
            claims.ask("a", Verb::Delete, Duration::ZERO),
            Asked::Busy
        ));
        claims.release("a");
        assert!(claims.claim_for_worker("a"));
    }

    #[test]
    fn an_action_waits_for_a_worker_that_lets_go() {
        let claims = Arc::new(Claims::default());
        assert!(claims.claim_for_worker("a"));
        let worker = Arc::clone(&claims);
        let done = std::thread::spawn(move || worker.worker_done("a"));
        let asked = claims.ask("a", Verb::Delete, Duration::from_secs(20));
        assert!(matches!(asked, Asked::Claimed));
        assert!(done.join().unwrap().is_empty());
    }

    #[test]
    fn a_delete_asked_during_delivery_is_done_when_the_worker_lets_go() {
        let (dir, spool, id) = spool_with_message("recorded");
        let (queued, requeued) = crossbeam_channel::unbounded();
        let control = Control::new(Arc::clone(&spool), queued, Arc::default());
        assert!(control.claims.claim_for_worker(&id));
        let request = Request {
            verb: Verb::Delete,
            id: Some(id.clone()),
        };
        // Short of its patience in a test: the worker is not coming back.
        let reply = control.act(Verb::Delete, &id, "test", Duration::ZERO);
        assert_eq!(
            reply.lines,
            [format!(
                "{id}: being delivered now; deleted when this attempt ends"
            )]
        );
        assert!(spool.is_queued(&id), "not under the worker's feet");
        // The worker writes its outcome, then lets go: the delete happens then.
        spool.update(&id, &spool.load(&id).unwrap()).unwrap();
        assert_eq!(control.worker_done(&id, Some(99)), None);
        assert!(!spool.is_queued(&id));
        assert!(spool.message(&id).is_err(), "the message file is gone too");
        assert_eq!(control.handle(&request, "test").code, 550);
        assert!(
            requeued.try_recv().is_err(),
            "a deleted message is not handed out"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flush_and_release_hand_the_message_back_hold_does_not() {
        let (dir, spool, id) = spool_with_message("requeue");
        let (queued, requeued) = crossbeam_channel::unbounded();
        let control = Control::new(Arc::clone(&spool), queued, Arc::default());
        let ask = |verb| {
            control.handle(
                &Request {
                    verb,
                    id: Some(id.clone()),
                },
                "test",
            )
        };
        assert!(ask(Verb::Hold).is_ok());
        assert!(requeued.try_recv().is_err());
        assert!(control.claims.is_held(&id));
        assert!(ask(Verb::Flush).lines[0].contains("release it first"));
        assert!(requeued.try_recv().is_err(), "held: not handed out");
        assert!(ask(Verb::Release).is_ok());
        assert_eq!(requeued.try_recv().ok(), Some(id.clone()));
        assert!(!control.claims.is_held(&id));
        assert!(ask(Verb::Flush).is_ok());
        assert_eq!(requeued.try_recv().ok(), Some(id.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
