//! The queue tools: `postilion queue list|show|flush|delete|hold|release|bounce` (and `mailq`,
//! the same as `queue list`). Decides who may use them (root and the mail user) and where each
//! goes: `list` and `show` read envelopes directly (replaced by rename, never half-written);
//! the actions are asked of the running daemon over `spool/control`, or, when no daemon runs,
//! done on the files under the spool lock. Run by root on a spool another user owns, a tool
//! first becomes that user (so what it writes is the daemon's to read, and no link planted in
//! the spool makes root read elsewhere). Prints, and maps outcomes to sysexits codes.

pub mod edit;
pub mod listing;
pub mod request;
pub mod socket;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::datetime;
use crate::privileges;
use crate::spool::{self, Spool, SpoolError};
use request::{is_queue_id, Reply, Request, Verb};
use socket::AskError;

// An unknown or malformed queue id is EX_DATAERR; a daemon that holds the spool but does not
// answer, EX_TEMPFAIL; neither root nor the mail user, EX_NOPERM.
use crate::sysexits::{EX_CONFIG, EX_DATAERR, EX_IOERR, EX_NOPERM, EX_TEMPFAIL, EX_USAGE};

/// How long an action waits for a daemon that holds the spool lock to open its socket.
const STARTING_PATIENCE: Duration = Duration::from_secs(3);

const USAGE: &str = "usage: postilion queue list|show ID [--body]|flush [ID]|delete ID|hold ID|\
                     release ID|bounce ID [--config FILE] [--spool DIR]";

/// Runs `postilion queue ARGS` (`mailq ARGS` is `queue list ARGS`); `load_config` reads
/// `--config FILE` and any `--KEY VALUE` flags as `serve` does.
pub fn run(args: &[String], load_config: &dyn Fn(&[String]) -> Result<Config, String>) -> ExitCode {
    let (words, flags, body) = split_args(args);
    let config = match load_config(&flags) {
        Ok(config) => config,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    if let Err(why) = may_use(&config) {
        return fail(EX_NOPERM, &why);
    }
    let spool = config.spool.as_path();
    if let Err(why) = privileges::become_owner_of(&spool.join("queue")) {
        return fail(EX_NOPERM, &why);
    }
    match words.as_slice() {
        ["list"] => list(spool),
        ["show", id] => show(spool, id, body),
        [verb, rest @ ..] if Verb::from_name(verb).is_some() && rest.len() <= 1 => {
            match Request::parse(&words.join(" ")) {
                Ok(request) => act(spool, &request),
                Err(why) if why.contains("not a queue id") => fail(EX_DATAERR, &why),
                Err(why) => fail(EX_USAGE, &format!("{why}\n{USAGE}")),
            }
        }
        _ => fail(EX_USAGE, USAGE),
    }
}

/// The command words, the flags for the configuration, and `--body`.
fn split_args(args: &[String]) -> (Vec<&str>, Vec<String>, bool) {
    let (mut words, mut flags, mut body) = (Vec::new(), Vec::new(), false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--body" {
            body = true;
        } else if arg.starts_with("--") {
            flags.push(arg.clone());
            if !arg.contains('=') {
                flags.extend(args.next().cloned());
            }
        } else {
            words.push(arg.as_str());
        }
    }
    (words, flags, body)
}

fn fail(code: u8, why: &str) -> ExitCode {
    eprintln!("postilion queue: {why}");
    ExitCode::from(code)
}

/// Root, the spool's owner, or the configured `user`: those who can read the spool (0700).
fn may_use(config: &Config) -> Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    if fs::metadata(&config.spool).is_ok_and(|meta| meta.uid() == euid) {
        return Ok(());
    }
    if let Ok(Some(user)) = crate::passwd::user_by_name(&config.user) {
        if user.uid == euid {
            return Ok(());
        }
    }
    Err(format!(
        "permission denied: only root and the mail user ({}, the owner of {}) may use the \
         queue tools",
        config.user,
        config.spool.display()
    ))
}

fn list(spool: &Path) -> ExitCode {
    let ids = match spool::peek_ids(spool) {
        Ok(ids) => ids,
        Err(e) => return fail(EX_IOERR, &e.to_string()),
    };
    let mut messages = Vec::new();
    let mut unreadable = 0;
    for id in ids {
        match spool::peek(spool, &id) {
            Ok(Some(env)) => messages.push((id, env)),
            // Delivered and removed while listing.
            Ok(None) => {}
            Err(e) => {
                eprintln!("postilion queue: {id}: cannot read: {e}");
                unreadable += 1;
            }
        }
    }
    print!(
        "{}",
        listing::list(&messages, maildrop_count(spool), datetime::now())
    );
    match unreadable {
        0 => ExitCode::SUCCESS,
        n => fail(
            EX_IOERR,
            &format!("{n} message(s) could not be read and are not listed"),
        ),
    }
}

/// Regular files in `spool/maildrop/` not starting with `.`, when it exists.
fn maildrop_count(spool: &Path) -> usize {
    let Ok(entries) = fs::read_dir(spool.join("maildrop")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .count()
}

fn show(spool: &Path, id: &str, body: bool) -> ExitCode {
    if !is_queue_id(id) {
        return fail(EX_DATAERR, &format!("'{id}' is not a queue id"));
    }
    let gone = || fail(EX_DATAERR, &format!("{id}: no such message in the queue"));
    let env = match spool::peek(spool, id) {
        Ok(Some(env)) => env,
        Ok(None) => return gone(),
        Err(e) => return fail(EX_IOERR, &e),
    };
    let path = spool.join("queue").join(format!("{id}.msg"));
    let message = match fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return gone(),
        Err(e) => return fail(EX_IOERR, &format!("cannot read {}: {e}", path.display())),
    };
    let shown = if body {
        &message
    } else {
        listing::header(&message)
    };
    print!("{}", listing::show(id, &env, shown, datetime::now()));
    ExitCode::SUCCESS
}

/// An action: asked of the daemon, or done here under the spool lock when none runs. A
/// daemon that holds the lock with no socket yet (it makes it once started) is given
/// `STARTING_PATIENCE` to answer.
fn act(spool: &Path, request: &Request) -> ExitCode {
    let deadline = Instant::now() + STARTING_PATIENCE;
    loop {
        match socket::ask(spool, request) {
            Ok(reply) => return print_reply(&reply),
            Err(AskError::NoAnswer(why)) => {
                return fail(
                    EX_TEMPFAIL,
                    &format!(
                        "the daemon did not answer on {}: {why}",
                        socket::path(spool).display()
                    ),
                )
            }
            Err(AskError::NotRunning) => match Spool::open_existing(spool) {
                Ok(locked) => return print_reply(&act_on_files(&locked, request)),
                Err(SpoolError::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(SpoolError::Locked(_)) => {
                    return fail(
                        EX_TEMPFAIL,
                        &format!(
                            "the daemon holds the spool lock but does not answer on {} \
                             (starting or stopping?): try again",
                            socket::path(spool).display()
                        ),
                    )
                }
                Err(e) => return fail(EX_IOERR, &e.to_string()),
            },
        }
    }
}

/// The daemon is not running: the files alone, under the lock.
fn act_on_files(spool: &Spool, request: &Request) -> Reply {
    let later = match request.verb {
        Verb::Flush | Verb::Release | Verb::Bounce => {
            " (postilion is not running: this takes effect at its next start)"
        }
        Verb::Delete | Verb::Hold => "",
    };
    let ids = match &request.id {
        Some(id) => vec![id.clone()],
        None => match spool.queued_ids() {
            Ok(ids) => ids,
            Err(e) => return Reply::new(451, e.to_string()),
        },
    };
    let mut reply = Reply::new(250, "");
    reply.lines.clear();
    for id in &ids {
        match edit::apply(spool, request.verb, id, None) {
            Ok(effect) => reply.lines.push(format!("{id}: {}{later}", effect.text)),
            // Gone meanwhile: only an error when it was asked for by name.
            Err(e) if e.code == 550 && request.id.is_none() => {}
            Err(e) => return e,
        }
    }
    if reply.lines.is_empty() {
        reply
            .lines
            .push("nothing to flush: the queue is empty".into());
    }
    reply
}

fn print_reply(reply: &Reply) -> ExitCode {
    if reply.is_ok() {
        for line in &reply.lines {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    let code = match reply.code {
        550 => EX_DATAERR,
        530 => EX_NOPERM,
        500..=599 => EX_USAGE,
        _ => EX_TEMPFAIL,
    };
    for line in &reply.lines {
        eprintln!("postilion queue: {line}");
    }
    ExitCode::from(code)
}
