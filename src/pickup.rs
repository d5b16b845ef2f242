//! The daemon's side of sendmail: takes the files left in `spool/maildrop/` into the queue.
//!
//! At start (before delivery starts) everything there is taken; then a thread watches the
//! directory with inotify, waking at least every second to notice a stop, and scans it again
//! every `queue_scan_interval` in case an event was missed. At a stop it takes nothing new.
//!
//! Who sent a file is its owner (fstat of the file opened without following a link), named
//! from `/etc/passwd`: a file whose owner is not there, with more than one link (a hard link
//! to someone else's file), not a regular file, too big or unreadable goes to `corrupt/` with
//! a log line, never lost and never delivered. The envelope sender is `login@hostname`, or the
//! `-f` value for the logins in `trusted_senders`. The file's name (a queue id, strictly
//! checked) becomes the message's queue id, so that a crash between the commit and the
//! removal of the file cannot queue it twice: a file whose id is queued already is removed.
//! The spool is written only through `spool.rs`.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

use crate::config::Config;
use crate::datetime;
use crate::envelope::{Envelope, Recipient};
use crate::maildrop::{self, Submission};
use crate::missing_headers::{Defaults, HeaderFill};
use crate::passwd;
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::received;
use crate::spool::Spool;

/// How often the watching thread looks at the stop flag.
const TICK: Duration = Duration::from_secs(1);
/// Room for the file's own lines on top of `message_size_limit`.
const HEADER_ROOM: u64 = 64 * 1024;

/// What happened to one maildrop file.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Queued(String),
    /// Left where it is for now (gone meanwhile, a temporary failure, logged).
    Left,
    /// Removed, its id being queued already; or moved to `corrupt/`.
    Done,
}

/// The file taken in: what the queue gets.
struct Message {
    envelope: Envelope,
    /// CRLF line ends, `Bcc:` removed, before the missing headers are added.
    content: Vec<u8>,
    full_name: Option<String>,
    /// `-f` given but not used: the user may not choose its sender.
    sender_ignored: bool,
}

/// Builds the envelope and content of a maildrop file from `login`. Pure; an error says why
/// the file cannot be taken.
fn build(
    submission: &Submission,
    message: &[u8],
    login: &str,
    config: &Config,
    now: u64,
) -> Result<Message, String> {
    let hostname = &config.hostname;
    let trusted = config.trusted_senders.iter().any(|t| t == login);
    let own = maildrop::mailbox(login, hostname)
        .map(ReversePath::Mailbox)
        .map_err(|e| format!("the login name is no address: {e}"))?;
    let (reverse_path, sender_ignored) = match &submission.sender {
        Some(sender) if trusted => (maildrop::sender(sender, hostname)?, false),
        Some(_) => (own, true),
        None => (own, false),
    };
    let message = maildrop::crlf(message);
    // Bcc: never shows, with -t or without (as Postfix's cleanup).
    let (in_headers, content) = maildrop::extract_recipients(&message);
    let mut asked: Vec<&str> = submission.recipients.iter().map(String::as_str).collect();
    if submission.extract {
        // As Postfix: recipients named as arguments are added to those of the header.
        asked.extend(in_headers.iter().map(String::as_str));
    }
    let mut recipients: Vec<ForwardPath> = Vec::new();
    for arg in asked {
        match maildrop::recipient(arg, hostname) {
            Ok(path) if !recipients.contains(&path) => recipients.push(path),
            Ok(_) => {}
            Err(e) => log::warn!("sendmail from {login}: recipient {e}: skipped"),
        }
    }
    if recipients.is_empty() {
        return Err("no valid recipient".into());
    }
    if recipients.len() > config.max_recipients {
        return Err(format!(
            "{} recipients, more than max_recipients ({})",
            recipients.len(),
            config.max_recipients
        ));
    }
    Ok(Message {
        envelope: Envelope {
            reverse_path,
            recipients: recipients.into_iter().map(Recipient::pending).collect(),
            client: None,
            helo: hostname.clone(),
            protocol: "sendmail".into(),
            eight_bit: !content.is_ascii(),
            smtputf8: false,
            arrival: now,
            size: 0,
            delay_warned: false,
            auth: None,
            held: false,
        },
        content,
        full_name: submission.full_name.clone(),
        sender_ignored,
    })
}

/// Takes every finished file in `maildrop/` in; returns the queue ids made.
pub fn scan(config: &Config, spool: &Spool, stopping: &AtomicBool) -> Vec<String> {
    let mut names = Vec::new();
    match std::fs::read_dir(spool.maildrop()) {
        Ok(entries) => {
            for entry in entries.flatten() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) => {
            log::error!("maildrop: cannot list {}: {e}", spool.maildrop().display());
            return Vec::new();
        }
    }
    names.sort();
    let mut queued = Vec::new();
    for name in names {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        // Being written by sendmail.
        if name.starts_with('.') {
            continue;
        }
        if let Taken::Queued(id) = take(config, spool, &name) {
            queued.push(id);
        }
    }
    queued
}

/// Moves a file that cannot be taken in to `corrupt/`, with one log line.
fn quarantine(spool: &Spool, name: &str, why: &str) -> Taken {
    match spool.quarantine_maildrop(name) {
        Ok(to) => log::warn!(
            "maildrop: {name} not taken ({why}): moved to {}",
            to.display()
        ),
        Err(e) => log::error!("maildrop: {name} not taken ({why}), and {e}"),
    }
    Taken::Done
}

fn take(config: &Config, spool: &Spool, name: &str) -> Taken {
    if !maildrop::is_valid_name(name) {
        return quarantine(spool, name, "not a name sendmail gives");
    }
    if spool.is_queued(name) {
        // Committed before a crash, not yet removed.
        return match spool.remove_maildrop(name) {
            Ok(()) => {
                log::info!("maildrop: {name} is queued already: removed");
                Taken::Done
            }
            Err(e) => {
                log::error!("maildrop: {e}");
                Taken::Left
            }
        };
    }
    let path = spool.maildrop().join(name);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Left,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return quarantine(spool, name, "a symbolic link")
        }
        Err(e) => return quarantine(spool, name, &format!("cannot open it: {e}")),
    };
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return quarantine(spool, name, &format!("cannot stat it: {e}")),
    };
    if !meta.file_type().is_file() {
        return quarantine(spool, name, "not a regular file");
    }
    if meta.nlink() != 1 {
        return quarantine(spool, name, &format!("it has {} links", meta.nlink()));
    }
    let limit = config.message_size_limit + HEADER_ROOM;
    if meta.size() > limit {
        return quarantine(spool, name, &format!("{} bytes, too big", meta.size()));
    }
    let uid = meta.uid();
    let login = match passwd::user_by_uid(uid) {
        Ok(Some(user)) => user.name,
        Ok(None) => {
            return quarantine(
                spool,
                name,
                &format!("owner uid {uid} is not in /etc/passwd"),
            )
        }
        Err(e) => {
            log::error!(
                "maildrop: {name} waits: cannot read {}: {e}",
                passwd::PASSWD
            );
            return Taken::Left;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(limit + 1).read_to_end(&mut bytes) {
        return quarantine(spool, name, &format!("cannot read it: {e}"));
    }
    if bytes.len() as u64 > limit {
        return quarantine(spool, name, "too big");
    }
    let (submission, message) = match Submission::parse(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => return quarantine(spool, name, &e.0),
    };
    let now = datetime::now();
    let message = match build(&submission, message, &login, config, now) {
        Ok(message) => message,
        Err(why) => return quarantine(spool, name, &why),
    };
    commit(config, spool, name, uid, &login, message, now)
}

fn commit(
    config: &Config,
    spool: &Spool,
    id: &str,
    uid: u32,
    login: &str,
    message: Message,
    now: u64,
) -> Taken {
    let Message {
        mut envelope,
        content,
        full_name,
        sender_ignored,
    } = message;
    let hostname = &config.hostname;
    let mut incoming = match spool.incoming_as(id.to_string(), &envelope) {
        Ok(incoming) => incoming,
        Err(e) => {
            log::error!("maildrop: {id} waits: {e}");
            return Taken::Left;
        }
    };
    incoming.write(received::local_header(hostname, uid, id, now).as_bytes());
    let defaults = Defaults::new(
        now,
        id,
        hostname,
        &envelope.reverse_path,
        full_name.as_deref(),
    );
    let mut fill = HeaderFill::new(defaults);
    let mut out = Vec::with_capacity(content.len() + 256);
    fill.feed(&content, &mut out);
    fill.finish(&mut out);
    incoming.write(&out);
    if let Err(e) = incoming.commit(&mut envelope) {
        log::error!("maildrop: {id} waits: queue write failed: {e}");
        return Taken::Left;
    }
    // Removed before the id is announced: delivered once (a crash before this point is
    // caught by `is_queued` at the next look).
    if let Err(e) = spool.remove_maildrop(id) {
        log::error!("maildrop: {id} queued, but {e}");
    }
    let ignored = if sender_ignored {
        " (-f ignored: not in trusted_senders)"
    } else {
        ""
    };
    log::info!(
        "{id}: from {} (uid {uid} {login}){ignored}, {} recipients, {} bytes, via sendmail",
        envelope.reverse_path,
        envelope.recipients.len(),
        envelope.size
    );
    Taken::Queued(id.to_string())
}

/// The watching thread, and how it stops.
pub struct Pickup {
    stopping: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Pickup {
    /// Takes nothing new from now on; returns once the thread has finished what it was
    /// taking in.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread that takes in what is dropped from now on, announcing ids on `queued`.
pub fn start(config: Arc<Config>, spool: Arc<Spool>, queued: Sender<String>) -> io::Result<Pickup> {
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    let thread = thread::Builder::new()
        .name("pickup".into())
        .spawn(move || watch(&config, &spool, &queued, &flag))?;
    Ok(Pickup {
        stopping,
        thread: Some(thread),
    })
}

fn watch(config: &Config, spool: &Spool, queued: &Sender<String>, stopping: &AtomicBool) {
    let watcher = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
        .and_then(|fd| {
            inotify::add_watch(
                &fd,
                spool.maildrop(),
                inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CREATE,
            )?;
            Ok(fd)
        });
    let watcher = match watcher {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("maildrop: no inotify ({e}): looked at every second instead");
            None
        }
    };
    let rescan = match watcher {
        Some(_) => config.queue_scan_interval,
        None => TICK,
    };
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    // What came between the scan at start and the watch is taken now.
    let mut due = true;
    let mut last_scan = Instant::now();
    let tick = Timespec {
        tv_sec: TICK.as_secs() as i64,
        tv_nsec: 0,
    };
    while !stopping.load(Ordering::Relaxed) {
        let mut woken = false;
        match &watcher {
            Some(fd) => {
                let mut fds = [PollFd::new(fd, PollFlags::IN)];
                if let Ok(n) = rustix::event::poll(&mut fds, Some(&tick)) {
                    woken = n > 0;
                }
                // Drain the events: any of them means "look".
                let mut reader = inotify::Reader::new(fd, &mut buf);
                while reader.next().is_ok() {}
            }
            None => thread::sleep(TICK),
        }
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        if woken || due || last_scan.elapsed() >= rescan {
            (due, last_scan) = (false, Instant::now());
            for id in scan(config, spool, stopping) {
                // Unbounded: never blocks.
                let _ = queued.send(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn config() -> Config {
        let mut raw = RawConfig::default();
        raw.set_flag("hostname", "mx.test".into());
        raw.set_flag("trusted_senders", "root, boss".into());
        raw.build("mx.test").unwrap()
    }

    fn submission(sender: Option<&str>, rcpts: &[&str], extract: bool) -> Submission {
        Submission {
            sender: sender.map(str::to_string),
            full_name: None,
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            extract,
        }
    }

    #[test]
    fn an_ordinary_user_sends_as_itself_whatever_f_says() {
        let c = config();
        let m = build(
            &submission(Some("ceo@bank.test"), &["bob"], false),
            b"x\n",
            "alice",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(m.envelope.reverse_path.to_string(), "<alice@mx.test>");
        assert!(m.sender_ignored);
        assert_eq!(m.envelope.recipients[0].path.to_string(), "<bob@mx.test>");
        let m = build(
            &submission(Some("<>"), &["bob"], false),
            b"x\n",
            "alice",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(m.envelope.reverse_path.to_string(), "<alice@mx.test>");
    }

    #[test]
    fn trusted_users_and_the_daemon_user_choose_their_sender() {
        let c = config();
        for login in ["root", "boss", "postilion"] {
            let m = build(
                &submission(Some("ceo@bank.test"), &["bob"], false),
                b"x\n",
                login,
                &c,
                0,
            )
            .unwrap();
            assert_eq!(
                m.envelope.reverse_path.to_string(),
                "<ceo@bank.test>",
                "{login}"
            );
            assert!(!m.sender_ignored);
        }
        let m = build(
            &submission(Some("<>"), &["bob"], false),
            b"x\n",
            "root",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(m.envelope.reverse_path, ReversePath::Null);
    }

    #[test]
    fn t_adds_header_recipients_to_the_arguments_and_bcc_always_goes() {
        let c = config();
        let message = b"To: a@x.test, bob\nBcc: hidden@x.test\nSubject: s\n\nbody\n";
        let m = build(
            &submission(None, &["c@x.test", "a@x.test"], true),
            message,
            "alice",
            &c,
            0,
        )
        .unwrap();
        let rcpts: Vec<String> = m
            .envelope
            .recipients
            .iter()
            .map(|r| r.path.to_string())
            .collect();
        assert_eq!(
            rcpts,
            [
                "<c@x.test>",
                "<a@x.test>",
                "<bob@mx.test>",
                "<hidden@x.test>"
            ]
        );
        assert_eq!(
            m.content,
            b"To: a@x.test, bob\r\nSubject: s\r\n\r\nbody\r\n"
        );
        // Without -t the header names nobody, and Bcc: still goes.
        let m = build(
            &submission(None, &["c@x.test"], false),
            message,
            "alice",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(m.envelope.recipients.len(), 1);
        assert!(!m.content.windows(4).any(|w| w == b"Bcc:"));
    }

    #[test]
    fn no_valid_recipient_is_refused() {
        let c = config();
        assert!(build(&submission(None, &["a b"], false), b"x\n", "alice", &c, 0).is_err());
        assert!(build(
            &submission(None, &[], true),
            b"Subject: s\n\nx\n",
            "alice",
            &c,
            0
        )
        .is_err());
    }
}
