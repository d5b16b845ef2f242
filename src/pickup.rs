//! The daemon's side of sendmail: takes the files left in `spool/maildrop/` into the queue.
//!
//! A thread started with the daemon first takes in everything there (mail left while it was
//! stopped: beside the start, which does not wait for it, so that a full maildrop never
//! delays READY=1), then watches
//! the directory with inotify, waking at least every second to notice a stop, and scans it
//! again every `queue_scan_interval` in case an event was missed. At a stop it takes nothing
//! new. Events on dot names (sendmail's `.ID.tmp` being written) wake nothing; dot files
//! older than a day (left by a sendmail that died) are removed.
//!
//! Who sent a file is its owner (fstat of the file opened without following a link), named
//! from `/etc/passwd`: a file whose owner is not there or is the daemon's own user (unless
//! root), with more than one link (a hard link to someone else's file), not a regular file,
//! not mode 0644, too big or unreadable goes to `corrupt/` with a log line, never lost and
//! never delivered; a temporary failure (no file descriptor or memory left, EIO) leaves it
//! for the next scan. The envelope sender is `login@hostname`, or the `-f` value for the
//! logins in `trusted_senders`. The file's name (a queue id, strictly checked) becomes the
//! message's queue id, so that a crash between the commit and the removal of the file cannot
//! queue it twice: a file whose id is queued already is removed.
//!
//! The file is streamed: its own fields, then the header section (at most 64 KiB, CRLF line
//! ends, read whole for `-t` and to drop `Bcc:`), then the rest in pieces; memory does not
//! grow with the message. Names are bytes a user chose: never logged raw (`{:?}`), and one
//! that cannot be moved away is logged once, not at every scan. The spool is written only
//! through `spool.rs`.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify;
use rustix::io::Errno;

use crate::config::Config;
use crate::datetime;
use crate::envelope::{Envelope, Recipient};
use crate::maildrop::{self, Crlf, Submission, MAX_FIELDS_BYTES, MAX_HEADER};
use crate::missing_headers::{Defaults, HeaderFill};
use crate::passwd;
use crate::smtp::address::ReversePath;
use crate::smtp::received;
use crate::spool::Spool;

/// How often the watching thread looks at the stop flag.
const TICK: Duration = Duration::from_secs(1);
/// The piece read from a file at a time.
const CHUNK: usize = 64 * 1024;
/// A dot file (a sendmail that died between writing and renaming) older than this is removed.
const DEBRIS_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Files taken in between two fsyncs of `maildrop/`; their ids go to delivery after it.
const BATCH: usize = 64;
/// The most names remembered as failed (logged once) or taken (removal failed).
const MAX_REMEMBERED: usize = 10_000;
/// The only mode sendmail gives a file.
const FILE_MODE: u32 = 0o644;

/// What happened to one maildrop file.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Queued(String),
    /// Left where it is for now (gone meanwhile, a temporary failure, logged once).
    Left,
    /// Removed, its id being queued already; or moved to `corrupt/`.
    Done,
}

/// The file taken in: what the queue gets.
struct Message {
    envelope: Envelope,
    /// The header section and what was read with it: CRLF line ends, `Bcc:` removed, before
    /// the missing headers are added. The rest follows from the file.
    head: Vec<u8>,
    full_name: Option<String>,
    /// `-f` given but not used: the user may not choose its sender.
    sender_ignored: bool,
}

/// Builds the envelope of a maildrop file from `login`, given its header section `head`
/// (CRLF, read whole) and whether the rest has 8-bit bytes. Pure; an error says why the file
/// cannot be taken.
fn build(
    submission: &Submission,
    head: &[u8],
    rest_eight_bit: bool,
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
    // Bcc: never shows, with -t or without (as Postfix's cleanup).
    let (in_headers, head) = maildrop::extract_recipients(head);
    let found = maildrop::recipients(submission, &in_headers, hostname, config.max_recipients)
        // sendmail checks the same before writing: only a file made by hand gets here.
        .map_err(|e| format!("{e}; sent by {login}"))?;
    for e in &found.invalid {
        log::warn!("sendmail from {login}: recipient {e}: skipped");
    }
    Ok(Message {
        envelope: Envelope {
            reverse_path,
            recipients: found.valid.into_iter().map(Recipient::pending).collect(),
            client: None,
            helo: hostname.clone(),
            protocol: "sendmail".into(),
            // What is stored: the added fields are ASCII (a -F name is RFC 2047 encoded).
            eight_bit: rest_eight_bit || !head.is_ascii(),
            smtputf8: false,
            arrival: now,
            size: 0,
            delay_warned: false,
            auth: None,
            held: false,
        },
        head,
        full_name: submission.full_name.clone(),
        sender_ignored,
    })
}

/// A maildrop name for a log line: a queue id as it is, anything else escaped.
fn shown(name: &OsStr) -> String {
    match name.to_str().filter(|n| maildrop::is_valid_name(n)) {
        Some(id) => id.to_string(),
        None if name.len() > 80 => format!("an invalid name ({} bytes)", name.len()),
        None => format!("{name:?}"),
    }
}

/// A failure that may go away by itself: the file waits for the next scan.
fn is_transient(e: &io::Error) -> bool {
    let transient = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOMEM,
        Errno::INTR,
        Errno::AGAIN,
        Errno::WOULDBLOCK,
        Errno::IO,
    ];
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || e
        .raw_os_error()
        .is_some_and(|n| transient.iter().any(|t| t.raw_os_error() == n))
}

/// Reads as much as `buf` holds, or less at the end; retried when interrupted.
fn read_piece(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Why a file is not taken now.
enum Refusal {
    /// For good: to `corrupt/`.
    Bad(String),
    /// For now (a transient error): left for the next scan.
    Wait(String),
}

impl Refusal {
    fn read(e: io::Error) -> Refusal {
        match is_transient(&e) {
            true => Refusal::Wait(format!("cannot read it: {e}")),
            false => Refusal::Bad(format!("cannot read it: {e}")),
        }
    }
}

/// The maildrop and what the thread remembers between scans.
struct Intake<'a> {
    config: &'a Config,
    spool: &'a Spool,
    /// Who the daemon runs as: its own files are not mail from a user (unless it is root).
    daemon_uid: u32,
    /// Names (with their inode) whose failure was logged: not logged again while they stay.
    failed: HashMap<OsString, u64>,
    /// Names queued whose removal failed: not taken again; the removal is tried at each scan.
    taken: HashSet<OsString>,
    /// Ids queued, handed to delivery once `maildrop/` is synced.
    pending: Vec<String>,
    unsynced_maildrop: bool,
    unsynced_corrupt: bool,
    /// The listing failed and was logged.
    listing_failed: bool,
}

impl<'a> Intake<'a> {
    fn new(config: &'a Config, spool: &'a Spool, daemon_uid: u32) -> Intake<'a> {
        Intake {
            config,
            spool,
            daemon_uid,
            failed: HashMap::new(),
            taken: HashSet::new(),
            pending: Vec::new(),
            unsynced_maildrop: false,
            unsynced_corrupt: false,
            listing_failed: false,
        }
    }

    /// Takes every finished file in `maildrop/` in, handing each id to `hand_on` once its
    /// removal is durable; returns how many were queued.
    fn scan(&mut self, stopping: &AtomicBool, hand_on: &mut dyn FnMut(String)) -> usize {
        let mut names = Vec::new();
        match std::fs::read_dir(self.spool.maildrop()) {
            Ok(entries) => {
                self.listing_failed = false;
                for entry in entries.flatten() {
                    names.push((entry.file_name(), entry.ino()));
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.listing_failed, true) {
                    log::error!(
                        "maildrop: cannot list {}: {e}",
                        self.spool.maildrop().display()
                    );
                }
                return 0;
            }
        }
        names.sort();
        let mut queued = 0;
        for (name, ino) in &names {
            if stopping.load(Ordering::Relaxed) {
                break;
            }
            if name.as_bytes().starts_with(b".") {
                self.clear_debris(name, *ino);
            } else if self.taken.contains(name) {
                self.remove_again(name);
            } else if let Taken::Queued(id) = self.take(name, *ino) {
                self.pending.push(id);
                queued += 1;
                if self.pending.len() >= BATCH {
                    self.flush(hand_on);
                }
            }
        }
        self.flush(hand_on);
        // Forget what is gone.
        let present: HashSet<&OsString> = names.iter().map(|(name, _)| name).collect();
        self.failed.retain(|name, _| present.contains(name));
        self.taken.retain(|name| present.contains(name));
        queued
    }

    /// Syncs what was moved out of `maildrop/` (into `corrupt/` first), then hands on the
    /// ids queued: a file must be durably gone before its message can be delivered.
    fn flush(&mut self, hand_on: &mut dyn FnMut(String)) {
        if std::mem::take(&mut self.unsynced_corrupt) {
            if let Err(e) = self.spool.sync_corrupt() {
                log::error!("maildrop: {e}");
            }
        }
        if self.unsynced_maildrop {
            if let Err(e) = self.spool.sync_maildrop() {
                // Kept back: delivered now, a crash could bring the files back.
                log::error!(
                    "maildrop: {e} ({} messages wait for the next try)",
                    self.pending.len()
                );
                return;
            }
            self.unsynced_maildrop = false;
        }
        for id in self.pending.drain(..) {
            hand_on(id);
        }
    }

    /// Logs a failure about `name` unless it was logged for this file already.
    fn report(&mut self, name: &OsStr, ino: u64, level: log::Level, line: String) {
        if self.failed.get(name) == Some(&ino) {
            return;
        }
        if self.failed.len() < MAX_REMEMBERED {
            self.failed.insert(name.to_owned(), ino);
        }
        log::log!(level, "{line} (not logged again while it stays)");
    }

    /// A dot file: sendmail writing (left alone) or a leftover over a day old (removed).
    fn clear_debris(&mut self, name: &OsStr, ino: u64) {
        let path = self.spool.maildrop().join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return;
        };
        let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
        if age.is_none_or(|age| age < DEBRIS_AGE) {
            return;
        }
        let removed = match meta.is_dir() {
            true => std::fs::remove_dir(&path),
            false => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => log::info!(
                "maildrop: {} removed, a leftover over a day old",
                shown(name)
            ),
            Err(e) => self.report(
                name,
                ino,
                log::Level::Warn,
                format!(
                    "maildrop: cannot remove {}, a leftover over a day old: {e}",
                    shown(name)
                ),
            ),
        }
    }

    /// A file queued whose removal failed: tried again, never taken again.
    fn remove_again(&mut self, name: &OsStr) {
        if self.spool.remove_maildrop(name).is_ok() {
            self.unsynced_maildrop = true;
            self.taken.remove(name);
            log::info!(
                "maildrop: {} removed at last (it was queued already)",
                shown(name)
            );
            if let Some(id) = name.to_str() {
                self.pending.push(id.to_string());
            }
        }
    }

    /// Moves a file that cannot be taken in to `corrupt/`, with one log line.
    fn quarantine(&mut self, name: &OsStr, ino: u64, why: &str) -> Taken {
        match self.spool.quarantine_maildrop(name) {
            Ok(to) => {
                (self.unsynced_corrupt, self.unsynced_maildrop) = (true, true);
                self.failed.remove(name);
                let to = match name.to_str().filter(|n| maildrop::is_valid_name(n)) {
                    Some(_) => to.display().to_string(),
                    None => "corrupt/".to_string(),
                };
                log::warn!("maildrop: {} not taken ({why}): moved to {to}", shown(name));
                Taken::Done
            }
            Err(e) => {
                let line = format!(
                    "maildrop: {} not taken ({why}), and cannot move it to corrupt/: {e}",
                    shown(name)
                );
                self.report(name, ino, log::Level::Error, line);
                Taken::Left
            }
        }
    }

    /// Leaves a file for the next scan after a transient failure.
    fn wait(&mut self, name: &OsStr, ino: u64, why: &str) -> Taken {
        let line = format!("maildrop: {} waits: {why}", shown(name));
        self.report(name, ino, log::Level::Warn, line);
        Taken::Left
    }

    fn take(&mut self, name: &OsStr, ino: u64) -> Taken {
        let Some(id) = name.to_str().filter(|n| maildrop::is_valid_name(n)) else {
            return self.quarantine(name, ino, "not a name sendmail gives");
        };
        if self.spool.is_queued(id) {
            // Committed before a crash (or its removal failed), not yet removed: delivery
            // was not given it (start and the periodic scan leave ids still here to pickup),
            // and gets it once the file is durably gone.
            return match self.spool.remove_maildrop(name) {
                Ok(()) => {
                    self.unsynced_maildrop = true;
                    self.taken.remove(name);
                    log::info!("maildrop: {id} is queued already: removed");
                    Taken::Queued(id.to_string())
                }
                Err(e) => self.wait(name, ino, &format!("queued already, cannot remove it: {e}")),
            };
        }
        let path = self.spool.maildrop().join(name);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Left,
            Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                return self.quarantine(name, ino, "a symbolic link")
            }
            Err(e) if is_transient(&e) => {
                return self.wait(name, ino, &format!("cannot open it: {e}"))
            }
            Err(e) => return self.quarantine(name, ino, &format!("cannot open it: {e}")),
        };
        match self.take_open(id, file) {
            Ok(taken) => {
                self.failed.remove(name);
                taken
            }
            Err(Refusal::Bad(why)) => self.quarantine(name, ino, &why),
            Err(Refusal::Wait(why)) => self.wait(name, ino, &why),
        }
    }

    /// Checks the open file and its owner, and takes it in.
    fn take_open(&mut self, id: &str, file: File) -> Result<Taken, Refusal> {
        let config = self.config;
        let meta = file.metadata().map_err(|e| match is_transient(&e) {
            true => Refusal::Wait(format!("cannot stat it: {e}")),
            false => Refusal::Bad(format!("cannot stat it: {e}")),
        })?;
        if !meta.file_type().is_file() {
            return Err(Refusal::Bad("not a regular file".into()));
        }
        if meta.nlink() != 1 {
            return Err(Refusal::Bad(format!("it has {} links", meta.nlink())));
        }
        let mode = meta.mode() & 0o7777;
        if mode != FILE_MODE {
            return Err(Refusal::Bad(format!(
                "mode {mode:04o}, not the {FILE_MODE:04o} sendmail gives"
            )));
        }
        let uid = meta.uid();
        if uid == self.daemon_uid && uid != 0 {
            return Err(Refusal::Bad(format!(
                "owned by uid {uid}, the daemon's own user"
            )));
        }
        let limit = config.message_size_limit;
        // Line ends made CRLF never make a message smaller.
        if meta.size() > limit + MAX_FIELDS_BYTES as u64 {
            return Err(Refusal::Bad(format!("{} bytes, too big", meta.size())));
        }
        let login = match passwd::user_by_uid(uid) {
            Ok(Some(user)) => user.name,
            Ok(None) => {
                return Err(Refusal::Bad(format!(
                    "owner uid {uid} is not in /etc/passwd"
                )))
            }
            Err(e) => {
                return Err(Refusal::Wait(format!(
                    "cannot read {}: {e}",
                    passwd::PASSWD
                )))
            }
        };
        let mut reader = BufReader::with_capacity(CHUNK, file);
        let submission = Submission::read(&mut reader)
            .map_err(Refusal::read)?
            .map_err(|e| Refusal::Bad(e.0))?;
        // The header section, whole: CRLF from here on.
        let mut crlf = Crlf::default();
        let mut head = Vec::new();
        let mut piece = vec![0u8; CHUNK];
        let mut at_end = false;
        while maildrop::header_end(&head).is_none() && head.len() <= MAX_HEADER {
            let n = read_piece(&mut reader, &mut piece).map_err(Refusal::read)?;
            if n == 0 {
                crlf.finish(&mut head);
                at_end = true;
                break;
            }
            crlf.convert(&piece[..n], &mut head);
        }
        if maildrop::header_end(&head).unwrap_or(head.len()) > MAX_HEADER {
            return Err(Refusal::Bad(format!(
                "a header section over {MAX_HEADER} bytes"
            )));
        }
        // The rest, read once to learn its size with CRLF line ends and whether it has 8-bit
        // bytes (the envelope, which says so, is written first), then again to store it.
        let rest_at = reader.stream_position().map_err(Refusal::read)?;
        let (mut size, mut rest_eight_bit) = (head.len() as u64, false);
        if !at_end {
            let mut counting = crlf.clone();
            let mut converted = Vec::with_capacity(2 * CHUNK + 2);
            loop {
                let n = read_piece(&mut reader, &mut piece).map_err(Refusal::read)?;
                match n {
                    0 => counting.finish(&mut converted),
                    n => counting.convert(&piece[..n], &mut converted),
                }
                size += converted.len() as u64;
                rest_eight_bit |= !converted.is_ascii();
                converted.clear();
                if n == 0 || size > limit {
                    break;
                }
            }
        }
        if size > limit {
            return Err(Refusal::Bad(format!(
                "over message_size_limit ({limit} bytes) with CRLF line ends"
            )));
        }
        reader
            .seek(SeekFrom::Start(rest_at))
            .map_err(Refusal::read)?;
        let now = datetime::now();
        let message =
            build(&submission, &head, rest_eight_bit, &login, config, now).map_err(Refusal::Bad)?;
        drop(head);
        let rest = (!at_end).then_some((reader, crlf));
        self.commit(id, uid, &login, message, rest, now)
    }

    /// Writes the message to the queue: our `Received:`, the header section with what it
    /// lacks, then the rest of the file (`rest`: where it is and the line-end state there).
    fn commit(
        &mut self,
        id: &str,
        uid: u32,
        login: &str,
        message: Message,
        rest: Option<(BufReader<File>, Crlf)>,
        now: u64,
    ) -> Result<Taken, Refusal> {
        let Message {
            mut envelope,
            head,
            full_name,
            sender_ignored,
        } = message;
        let (config, spool) = (self.config, self.spool);
        let hostname = &config.hostname;
        let mut incoming = spool
            .incoming_as(id.to_string(), &envelope)
            .map_err(|e| Refusal::Wait(e.to_string()))?;
        incoming.write(received::local_header(hostname, uid, id, now).as_bytes());
        let defaults = Defaults::new(
            now,
            id,
            hostname,
            &envelope.reverse_path,
            full_name.as_deref(),
        );
        let mut fill = HeaderFill::new(defaults);
        let mut out = Vec::with_capacity(2 * CHUNK + 1024);
        fill.feed(&head, &mut out);
        incoming.write(&out);
        if let Some((mut reader, mut crlf)) = rest {
            let mut size = head.len() as u64;
            let mut piece = vec![0u8; CHUNK];
            let mut converted = Vec::with_capacity(2 * CHUNK + 2);
            loop {
                let n = read_piece(&mut reader, &mut piece).map_err(Refusal::read)?;
                match n {
                    0 => crlf.finish(&mut converted),
                    n => crlf.convert(&piece[..n], &mut converted),
                }
                size += converted.len() as u64;
                if size > config.message_size_limit {
                    // Grown since it was measured.
                    return Err(Refusal::Bad("over message_size_limit".into()));
                }
                if !envelope.eight_bit && !converted.is_ascii() {
                    // Rewritten since it was read: the envelope would say 7BIT of 8-bit mail.
                    return Err(Refusal::Bad("changed while it was taken in".into()));
                }
                out.clear();
                fill.feed(&converted, &mut out);
                incoming.write(&out);
                converted.clear();
                if n == 0 {
                    break;
                }
            }
        }
        out.clear();
        fill.finish(&mut out);
        incoming.write(&out);
        if let Err(e) = incoming.commit(&mut envelope) {
            return Err(Refusal::Wait(format!("queue write failed: {e}")));
        }
        // Removed before the id is handed on (after the sync of the batch): delivered once (a
        // crash before this point is caught by `is_queued` at the next look).
        let removed = match spool.remove_maildrop(OsStr::new(id)) {
            Ok(()) => {
                self.unsynced_maildrop = true;
                true
            }
            Err(e) => {
                log::error!(
                    "maildrop: {id} queued, but cannot remove it: {e} (not delivered until it \
                     is removed; tried again at each scan)"
                );
                if self.taken.len() < MAX_REMEMBERED {
                    self.taken.insert(OsString::from(id));
                }
                false
            }
        };
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
        match removed {
            true => Ok(Taken::Queued(id.to_string())),
            // Handed on by `remove_again` once the file is gone: delivered before that, the
            // file could be taken in again after a restart.
            false => Ok(Taken::Done),
        }
    }
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

/// Starts the thread that takes in what is in the maildrop and what is dropped from now on,
/// announcing ids on `queued`.
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

/// Whether the events waiting on the inotify descriptor call for a look: a name that is not
/// a dot name, or lost events. Drains them all.
fn worth_a_look(fd: &impl rustix::fd::AsFd, buf: &mut [MaybeUninit<u8>]) -> bool {
    let mut look = false;
    let mut reader = inotify::Reader::new(fd, buf);
    while let Ok(event) = reader.next() {
        look |= event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW)
            || event
                .file_name()
                .is_none_or(|name| !name.to_bytes().starts_with(b"."));
    }
    look
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
    let mut intake = Intake::new(config, spool, rustix::process::geteuid().as_raw());
    // Unbounded: never blocks.
    let mut hand_on = |id: String| {
        let _ = queued.send(id);
    };
    // Mail left while the daemon was stopped, and what came before the watch.
    let taken = intake.scan(stopping, &mut hand_on);
    log::info!("maildrop: {taken} taken in at start");
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut last_scan = Instant::now();
    let mut wanted = false;
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
                    woken = n > 0 && worth_a_look(fd, &mut buf);
                }
            }
            None => thread::sleep(TICK),
        }
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        // At most one look a second, however many events users make.
        wanted |= woken;
        if (wanted && last_scan.elapsed() >= TICK) || last_scan.elapsed() >= rescan {
            last_scan = Instant::now();
            wanted = false;
            intake.scan(stopping, &mut hand_on);
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
            &maildrop::crlf(b"x\n"),
            false,
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
            &maildrop::crlf(b"x\n"),
            false,
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
                &maildrop::crlf(b"x\n"),
                false,
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
            &maildrop::crlf(b"x\n"),
            false,
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
            &maildrop::crlf(message),
            false,
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
        assert_eq!(m.head, b"To: a@x.test, bob\r\nSubject: s\r\n\r\nbody\r\n");
        // Without -t the header names nobody, and Bcc: still goes.
        let m = build(
            &submission(None, &["c@x.test"], false),
            &maildrop::crlf(message),
            false,
            "alice",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(m.envelope.recipients.len(), 1);
        assert!(!m.head.windows(4).any(|w| w == b"Bcc:"));
    }

    #[test]
    fn no_valid_recipient_is_refused() {
        let c = config();
        assert!(build(
            &submission(None, &["a b"], false),
            &maildrop::crlf(b"x\n"),
            false,
            "alice",
            &c,
            0
        )
        .is_err());
        assert!(build(
            &submission(None, &[], true),
            &maildrop::crlf(b"Subject: s\n\nx\n"),
            false,
            "alice",
            &c,
            0
        )
        .is_err());
    }
}
