//! What each queue action does to a message: the edits of its envelope (pure, testable) and
//! the one function that applies an action to a message's files, always through `spool.rs`.
//! The caller makes sure nothing else writes the message meanwhile: the daemon claims the id
//! from its delivery threads, a tool holds the spool lock.

use super::request::{Reply, Verb};
use crate::delivery::outcome::DsnStatus;
use crate::envelope::{Envelope, Status};
use crate::spool::{Spool, SpoolError};

/// The reason given to each recipient a `queue bounce` returns to the sender.
pub const BOUNCE_REASON: &str = "5.0.0 returned to sender by the postmaster (queue bounce)";

/// What an action did to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// One line for the tool and the log, after the id: `deleted`, `put on hold`, ...
    pub text: String,
    /// The envelope (or the files) changed.
    pub changed: bool,
    /// The message is on hold after it (set by `apply`, which has the envelope).
    pub held: bool,
}

impl Effect {
    fn changed(text: impl Into<String>) -> Effect {
        Effect {
            text: text.into(),
            changed: true,
            held: false,
        }
    }

    fn unchanged(text: impl Into<String>) -> Effect {
        Effect {
            text: text.into(),
            changed: false,
            held: false,
        }
    }
}

/// Edits an envelope for `verb` (every verb but `Delete`, which removes the files).
pub fn edit(verb: Verb, env: &mut Envelope) -> Effect {
    let pending = |env: &mut Envelope| {
        env.recipients
            .iter()
            .filter(|r| r.status == Status::Pending)
            .count()
    };
    match verb {
        Verb::Delete => Effect::unchanged("not an edit"),
        Verb::Hold if env.held => Effect::unchanged("already on hold"),
        Verb::Hold => {
            env.held = true;
            Effect::changed("put on hold")
        }
        Verb::Release if !env.held => Effect::unchanged("not on hold"),
        Verb::Release => {
            env.held = false;
            due_now(env);
            Effect::changed("released from hold")
        }
        Verb::Flush if env.held => Effect::unchanged("on hold, not flushed (release it first)"),
        Verb::Flush => {
            due_now(env);
            Effect::changed("flushed")
        }
        Verb::Bounce => {
            let count = pending(env);
            env.held = false;
            for rcpt in &mut env.recipients {
                if rcpt.status == Status::Pending {
                    rcpt.status = Status::Failed;
                    rcpt.last_reply = Some(BOUNCE_REASON.into());
                    rcpt.last_status = Some(DsnStatus::new(5, 0, 0));
                    rcpt.reported = false;
                }
            }
            match count {
                0 => Effect::unchanged("no recipient left to return"),
                n => Effect::changed(format!("returned to sender ({n} recipient(s))")),
            }
        }
    }
}

/// Makes every pending recipient due at once.
fn due_now(env: &mut Envelope) {
    for rcpt in &mut env.recipients {
        if rcpt.status == Status::Pending {
            rcpt.next_attempt = 0;
        }
    }
}

/// Applies `verb` to message `id`. `current` is the envelope when the caller has a newer one
/// than the file (outcomes the daemon could not write yet); else the file is read. Errors
/// are the reply to give: 550 for an unknown id, 451 when the spool refused.
pub fn apply(
    spool: &Spool,
    verb: Verb,
    id: &str,
    current: Option<Envelope>,
) -> Result<Effect, Reply> {
    let io = |e: SpoolError| Reply::new(451, format!("{id}: {e}"));
    if current.is_none() && !spool.is_queued(id) {
        return Err(Reply::no_such_message(id));
    }
    if verb == Verb::Delete {
        spool.remove(id).map_err(io)?;
        return Ok(Effect::changed("deleted"));
    }
    let mut env = match current {
        Some(env) => env,
        None => spool.load(id).map_err(io)?,
    };
    let mut effect = edit(verb, &mut env);
    effect.held = env.held;
    if effect.changed {
        spool.update(id, &env).map_err(io)?;
    }
    Ok(effect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Recipient;
    use crate::smtp::address::ForwardPath;

    fn envelope() -> Envelope {
        let mut done = Recipient::pending(ForwardPath::Postmaster);
        done.status = Status::Delivered;
        let mut waiting = Recipient::pending(ForwardPath::Postmaster);
        waiting.next_attempt = 1_900_000_000;
        waiting.attempts = 2;
        Envelope {
            recipients: vec![done, waiting],
            size: 3,
            ..Envelope::for_tests()
        }
    }

    #[test]
    fn flush_makes_pending_recipients_due_now_unless_held() {
        let mut env = envelope();
        assert!(edit(Verb::Flush, &mut env).changed);
        assert_eq!(env.recipients[1].next_attempt, 0);
        let mut env = envelope();
        env.held = true;
        let effect = edit(Verb::Flush, &mut env);
        assert!(!effect.changed && effect.text.contains("release it first"));
        assert_eq!(env.recipients[1].next_attempt, 1_900_000_000);
    }

    #[test]
    fn hold_and_release_toggle_and_release_makes_it_due() {
        let mut env = envelope();
        assert!(edit(Verb::Hold, &mut env).changed);
        assert!(env.held);
        assert!(!edit(Verb::Hold, &mut env).changed);
        assert!(edit(Verb::Release, &mut env).changed);
        assert!(!env.held);
        assert_eq!(env.recipients[1].next_attempt, 0);
        assert!(!edit(Verb::Release, &mut env).changed);
    }

    #[test]
    fn bounce_fails_only_the_pending_recipients_and_lifts_a_hold() {
        let mut env = envelope();
        env.held = true;
        assert!(edit(Verb::Bounce, &mut env).changed);
        assert!(!env.held);
        assert_eq!(env.recipients[0].status, Status::Delivered);
        let rcpt = &env.recipients[1];
        assert_eq!(rcpt.status, Status::Failed);
        assert!(!rcpt.reported, "the normal path reports it");
        assert_eq!(rcpt.last_reply.as_deref(), Some(BOUNCE_REASON));
        assert_eq!(rcpt.last_status, Some(DsnStatus::new(5, 0, 0)));
        assert!(!edit(Verb::Bounce, &mut env).changed);
    }

    #[test]
    fn apply_works_on_the_files_and_knows_unknown_ids() {
        let dir = std::env::temp_dir().join(format!("postilion-edit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"x\r\n");
        let id = incoming.commit(&mut envelope()).unwrap().id().to_string();
        let held = apply(&spool, Verb::Hold, &id, None).unwrap();
        assert!(held.changed && held.held);
        assert!(spool.load(&id).unwrap().held);
        let still = apply(&spool, Verb::Flush, &id, None).unwrap();
        assert!(
            !still.changed && still.held,
            "said so even when nothing changed"
        );
        assert_eq!(
            apply(&spool, Verb::Delete, &id, None).unwrap().text,
            "deleted"
        );
        assert!(!spool.is_queued(&id));
        let unknown = apply(&spool, Verb::Hold, &id, None).unwrap_err();
        assert_eq!(unknown.code, 550);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
