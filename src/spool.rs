//! The on-disk queue: commit, recover at start, load, update, remove. The only code that
//! writes the spool.
//!
//! `queue/` holds `ID.msg`, immutable: the envelope as it was at arrival, an empty line, then
//! the message as it will be sent; and, from the first change of state on, `ID.env`, the
//! envelope, which then supersedes the copy in `ID.msg`. `tmp/` holds envelopes being
//! rewritten (and messages being written where the file system has no `O_TMPFILE`);
//! `corrupt/` holds what could not be read.
//!
//! A commit writes one file, unnamed (`O_TMPFILE` in `queue/`) or in `tmp/`, fsyncs it, links
//! it into `queue/` as `ID.msg` (a link never replaces a file already there, as a rename
//! would after an id collision) and fsyncs `queue/`; only then does it return a `Queued`, the
//! one thing that lets a session answer 250 (invariant 1). One file created per message, not
//! two, and one directory fsync shared by every commit waiting at once (`group_sync.rs`): on
//! a busy spool, making inodes and syncing directories is most of the cost of a message.
//! A message done with on its first attempt never gets an `ID.env`: its removal, synced, is
//! the record.
//!
//! A lock file keeps two servers off one spool. Everything here is its owner's alone:
//! directories 0700, files 0600; root opening the spool for a user gives it what it makes.
//! Two exceptions let `sendmail` (any local user) drop mail without the daemon: the root is
//! 0711 (others may pass through, not list it) and `maildrop/` is 1733 (anyone may add a
//! file, nobody but the owner may list it, and the sticky bit keeps users off each other's
//! files); `pickup.rs` takes what is dropped there in through `incoming_as`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::Envelope;
use crate::group_sync::GroupSync;
use crate::privileges::{self, Owner};

/// Mode of every file made in the spool.
const FILE_MODE: u32 = 0o600;
/// The spool root: others may pass through to `maildrop/`, not list it.
const ROOT_MODE: u32 = 0o711;
/// `maildrop/`: anyone may add, nobody else may list or read, nobody may remove another's.
pub const MAILDROP_MODE: u32 = 0o1733;
/// How an `ID.msg` that carries its envelope begins (an older one begins with our
/// `Received:` header).
const ENVELOPE_START: &[u8] = b"Version: ";
/// An envelope carried in `ID.msg` longer than this is damage, not an envelope.
const MAX_ENVELOPE: u64 = 16 << 20;

/// Proof that a message is durably in `queue/`: only `Incoming::commit` makes one.
#[derive(Debug, PartialEq, Eq)]
pub struct Queued {
    id: String,
}

impl Queued {
    pub fn id(&self) -> &str {
        &self.id
    }

    #[cfg(test)]
    pub fn for_tests(id: &str) -> Queued {
        Queued { id: id.into() }
    }
}

#[derive(Debug)]
pub enum SpoolError {
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Locked(PathBuf),
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            SpoolError::Locked(path) => write!(
                f,
                "spool {} is in use by another postilion (lock held on {}/lock)",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A queued message's bytes: `size` of them from `offset` in the file at `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFile {
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
}

impl MessageFile {
    /// The file, read from the message's first byte.
    pub fn open(&self) -> io::Result<File> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        Ok(file)
    }

    /// A whole file as a message (for tests and files of our own making).
    #[cfg(test)]
    pub fn whole(path: &Path) -> MessageFile {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        MessageFile {
            path: path.to_path_buf(),
            offset: 0,
            size,
        }
    }
}

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Ids of queued messages, oldest first.
    pub queued: Vec<String>,
    /// Ids queued whose maildrop file is still there (a crash between pickup's commit and
    /// its removal of the file): pickup hands them on, not the start.
    pub left_to_pickup: Vec<String>,
    pub debris_removed: usize,
    pub quarantined: usize,
}

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    maildrop: PathBuf,
    /// New messages are written unnamed in `queue/` (`O_TMPFILE`), then linked: no name made
    /// in `tmp/` and removed again. False where the file system or a missing `/proc` says no.
    unnamed_files: bool,
    /// One fsync of `queue/` for every commit, update or removal waiting at once.
    queue_sync: GroupSync,
    /// Maildrop files removed since the last sync of `maildrop/`.
    unsynced_removals: Mutex<HashSet<String>>,
    /// Held (and locked) for the life of the server.
    _lock: File,
}

impl Spool {
    /// Creates the directories if needed (0700) and takes the spool's lock. What it makes is
    /// given to `owner`, when root opens the spool for the user it will switch to.
    pub fn open(root: &Path, owner: Option<Owner>) -> Result<Spool, SpoolError> {
        let (tmp, queue, corrupt) = (root.join("tmp"), root.join("queue"), root.join("corrupt"));
        let maildrop = root.join("maildrop");
        for dir in [root, &tmp, &queue, &corrupt, &maildrop] {
            privileges::create_dir(dir, owner).map_err(io_error("create directory", dir))?;
        }
        // Set explicitly: the umask is 077. An older spool's 0700 root is opened up to 0711;
        // another mode a person chose is left alone.
        set_mode(root, ROOT_MODE, |mode| mode == 0o700)?;
        set_mode(&maildrop, MAILDROP_MODE, |mode| mode != MAILDROP_MODE)?;
        let lock_path = root.join("lock");
        let mut options = OpenOptions::new();
        options.write(true).mode(FILE_MODE);
        let lock = match options.clone().create_new(true).open(&lock_path) {
            Ok(lock) => {
                if let Some(owner) = owner {
                    std::os::unix::fs::fchown(&lock, Some(owner.uid), Some(owner.gid))
                        .map_err(io_error("give to the user", &lock_path))?;
                }
                Ok(lock)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.open(&lock_path),
            Err(e) => Err(e),
        }
        .map_err(io_error("open", &lock_path))?;
        Spool::locked(root, lock)
    }

    /// The spool at `root`, once `lock` (its lock file, open) is taken: `Locked` when another
    /// process holds it.
    fn locked(root: &Path, lock: File) -> Result<Spool, SpoolError> {
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &root.join("lock"))(e)),
        }
        let (tmp, queue) = (root.join("tmp"), root.join("queue"));
        Ok(Spool {
            root: root.into(),
            unnamed_files: unnamed_files_work(&queue, &tmp),
            queue_sync: GroupSync::new(&queue),
            unsynced_removals: Mutex::default(),
            tmp,
            queue,
            corrupt: root.join("corrupt"),
            maildrop: root.join("maildrop"),
            _lock: lock,
        })
    }

    /// `maildrop/`, where `sendmail` leaves mail.
    pub fn maildrop(&self) -> &Path {
        &self.maildrop
    }

    /// Whether a file that pickup will take in (or has taken in but not yet removed) is in
    /// `maildrop/` under `id`. Only a regular file counts: a directory a user made under a
    /// queued message's id must not keep that message from delivery.
    pub fn in_maildrop(&self, id: &str) -> bool {
        lock(&self.unsynced_removals).contains(id)
            || fs::symlink_metadata(self.maildrop.join(id)).is_ok_and(|meta| meta.is_file())
    }

    /// Whether `id` is in `queue/` already (its message file is there).
    pub fn is_queued(&self, id: &str) -> bool {
        fs::symlink_metadata(self.message_path(id)).is_ok()
    }

    /// Removes a maildrop file taken in (or found queued already); durable only after
    /// `sync_maildrop` (a name is any bytes a user chose).
    pub fn remove_maildrop(&self, name: &OsStr) -> io::Result<()> {
        fs::remove_file(self.maildrop.join(name))?;
        // Until maildrop/ is synced, a power cut could bring the file back: it still counts
        // as being there for `in_maildrop`.
        lock(&self.unsynced_removals).insert(name.to_string_lossy().into_owned());
        Ok(())
    }

    /// Moves a maildrop file (or whatever a user put there) that cannot be taken in to
    /// `corrupt/maildrop.NAME`; durable only after `sync_corrupt` then `sync_maildrop`.
    pub fn quarantine_maildrop(&self, name: &OsStr) -> io::Result<PathBuf> {
        let mut to = std::ffi::OsString::from("maildrop.");
        to.push(name);
        let to = self.corrupt.join(to);
        fs::rename(self.maildrop.join(name), &to)?;
        Ok(to)
    }

    /// Makes removals from and moves out of `maildrop/` durable: one fsync for a whole scan.
    pub fn sync_maildrop(&self) -> Result<(), SpoolError> {
        // What is removed from now on needs a sync of its own.
        let removed = std::mem::take(&mut *lock(&self.unsynced_removals));
        let result = sync_dir(&self.maildrop);
        if result.is_err() {
            lock(&self.unsynced_removals).extend(removed);
        }
        result
    }

    /// Makes moves into `corrupt/` durable.
    pub fn sync_corrupt(&self) -> Result<(), SpoolError> {
        sync_dir(&self.corrupt)
    }

    /// Takes the lock of an existing spool and creates nothing: for the queue tools, when no
    /// daemon holds it. `Locked` when one does.
    pub fn open_existing(root: &Path) -> Result<Spool, SpoolError> {
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        Spool::locked(root, lock)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spool's directories: the root, `tmp/`, `queue/`, `corrupt/` and `maildrop/`.
    pub fn dirs(&self) -> [&Path; 5] {
        [
            &self.root,
            &self.tmp,
            &self.queue,
            &self.corrupt,
            &self.maildrop,
        ]
    }

    /// Removes crash debris from `tmp/`, moves unreadable queue files to `corrupt/`, and
    /// lists what is queued (invariant 2).
    pub fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut recovery = Recovery::default();
        let names = list(&self.queue)?;
        // After a power cut a name in tmp/ may still point to a file renamed or linked into
        // queue/ (only queue/ was synced): removing it would free the queued file's inode.
        let queued_inodes: HashSet<u64> = names
            .iter()
            .filter_map(|name| fs::symlink_metadata(self.queue.join(name)).ok())
            .map(|meta| meta.ino())
            .collect();
        for name in list(&self.tmp)? {
            let path = self.tmp.join(&name);
            if fs::symlink_metadata(&path).is_ok_and(|meta| queued_inodes.contains(&meta.ino())) {
                log::warn!("spool: tmp/{name} left in place: it is also a file in queue/");
                continue;
            }
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            log::info!("spool: removed crash debris tmp/{name}");
            recovery.debris_removed += 1;
        }
        let names: HashSet<String> = names.into_iter().collect();
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        for name in sorted {
            if let Some(id) = name.strip_suffix(".env") {
                let msg = format!("{id}.msg");
                match self.check_envelope(name) {
                    Err(Unreadable::Invalid(why)) => {
                        self.quarantine(&[name, &msg], &why, &mut recovery)?
                    }
                    Err(Unreadable::Io(e)) => {
                        log::error!("spool: queue/{name} cannot be read, left for later: {e}")
                    }
                    Ok(()) if !names.contains(&msg) => {
                        let why = "its .msg file is gone (a removal cut short?)";
                        self.quarantine(&[name], why, &mut recovery)?
                    }
                    Ok(()) => recovery.queued.push(id.to_string()),
                }
            } else if let Some(id) = name.strip_suffix(".msg") {
                if names.contains(&format!("{id}.env")) {
                    continue;
                }
                match carried_envelope(&self.message_path(id)) {
                    Ok(Some(_)) => recovery.queued.push(id.to_string()),
                    Ok(None) => {
                        let why = "no envelope (a commit cut short before its 250)";
                        self.quarantine(&[name], why, &mut recovery)?;
                    }
                    Err(Unreadable::Invalid(why)) => {
                        self.quarantine(&[name], &why, &mut recovery)?
                    }
                    Err(Unreadable::Io(e)) => {
                        log::error!("spool: queue/{name} cannot be read, left for later: {e}")
                    }
                }
            } else {
                self.quarantine(&[name], "not a queue file name", &mut recovery)?;
            }
        }
        // Still in maildrop/ as well (a crash between pickup's commit and its removal of the
        // file): pickup hands these on once the file is durably gone. Delivered first, the
        // file could be taken in a second time.
        let (left, queued) = std::mem::take(&mut recovery.queued)
            .into_iter()
            .partition(|id| self.in_maildrop(id));
        recovery.queued = queued;
        recovery.left_to_pickup = left;
        recovery.queued.sort();
        Ok(recovery)
    }

    fn check_envelope(&self, name: &str) -> Result<(), Unreadable> {
        let text = fs::read_to_string(self.queue.join(name)).map_err(Unreadable::from)?;
        Envelope::parse(&text)
            .map(|_| ())
            .map_err(|e| Unreadable::Invalid(e.to_string()))
    }

    /// Moves files from `queue/` to `corrupt/`, with a log line; never deletes them.
    fn quarantine(
        &self,
        names: &[&str],
        why: &str,
        recovery: &mut Recovery,
    ) -> Result<(), SpoolError> {
        for name in names {
            let from = self.queue.join(name);
            match fs::symlink_metadata(&from) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                _ => {}
            }
            let to = self.corrupt.join(name);
            fs::rename(&from, &to).map_err(io_error("move to corrupt/", &from))?;
            log::error!("spool: moved queue/{name} to corrupt/: {why}");
            recovery.quarantined += 1;
        }
        sync_dir(&self.queue)
    }

    /// Ids in `queue/` with an envelope, for the periodic scan.
    pub fn queued_ids(&self) -> Result<Vec<String>, SpoolError> {
        queued_ids_in(&self.queue)
    }

    fn message_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    /// Where a queued message's bytes are: in `ID.msg`, past the envelope it carries.
    pub fn message(&self, id: &str) -> io::Result<MessageFile> {
        locate_message(&self.message_path(id))
    }

    /// Reads a queued envelope: `ID.env`, else the one `ID.msg` carries; its size is the
    /// message's. An unreadable one is moved to `corrupt/` with its message.
    pub fn load(&self, id: &str) -> Result<Envelope, SpoolError> {
        let path = self.queue.join(format!("{id}.env"));
        let parsed = match fs::read_to_string(&path) {
            Ok(text) => Envelope::parse(&text).map_err(|e| e.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let msg = self.message_path(id);
                match carried_envelope(&msg) {
                    Ok(Some(envelope)) => Ok(envelope),
                    Ok(None) => return Err(io_error("read", &path)(e)),
                    // Only what cannot be parsed is moved aside; a read that failed (a
                    // missing file, no descriptor left, an I/O error) is tried again later.
                    Err(Unreadable::Io(e)) => return Err(io_error("read", &msg)(e)),
                    Err(Unreadable::Invalid(why)) => Err(why),
                }
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let mut envelope = parsed.map_err(|why| {
            let names = [format!("{id}.env"), format!("{id}.msg")];
            let _ = self.quarantine(&[&names[0], &names[1]], &why, &mut Recovery::default());
            io_error("parse", &path)(io::Error::new(io::ErrorKind::InvalidData, why))
        })?;
        let msg = self.message_path(id);
        envelope.size = self.message(id).map_err(io_error("read", &msg))?.size;
        Ok(envelope)
    }

    /// Replaces an envelope atomically: write to `tmp/`, fsync, rename, fsync `queue/`.
    pub fn update(&self, id: &str, envelope: &Envelope) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(format!("{id}.env.{}", new_id()));
        let result = write_synced(&tmp, envelope.to_text().as_bytes()).and_then(|()| {
            let path = self.queue.join(format!("{id}.env"));
            fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
            self.sync_queue()
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a finished message: envelope first, so it is never half-queued. Durable on
    /// return: the removal is the record that every recipient is done (invariant 6).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        // The message first, and durably: an ID.msg left alone would carry its envelope as it
        // was at arrival, and be delivered again. An ID.env left alone is only moved aside.
        let msg = self.message_path(id);
        fs::remove_file(&msg).map_err(io_error("remove", &msg))?;
        self.sync_queue()?;
        let env = self.queue.join(format!("{id}.env"));
        match fs::remove_file(&env) {
            Ok(()) => self.sync_queue(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &env)(e)),
        }
    }

    /// Makes the latest changes to `queue/`'s entries durable, sharing the fsync with every
    /// other thread that asks at the same time.
    fn sync_queue(&self) -> Result<(), SpoolError> {
        self.queue_sync
            .sync()
            .map_err(io_error("sync directory", &self.queue))
    }

    /// Starts a new message under a fresh queue id, its envelope (as it is now, without a
    /// size) first.
    pub fn incoming(&self, envelope: &Envelope) -> Result<Incoming<'_>, SpoolError> {
        self.incoming_as(new_id(), envelope)
    }

    /// A new message with a given id (a maildrop file's name, checked by the caller): its
    /// commit fails rather than replace a message queued with that id.
    pub fn incoming_as(&self, id: String, envelope: &Envelope) -> Result<Incoming<'_>, SpoolError> {
        let (file, tmp_path) = if self.unnamed_files {
            let file = unnamed_file(&self.queue).map_err(io_error("create in", &self.queue))?;
            (file, None)
        } else {
            let path = self.tmp.join(format!("{id}.msg"));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(io_error("create", &path))?;
            (file, Some(path))
        };
        let mut file = BufWriter::with_capacity(64 * 1024, file);
        let error = file
            .write_all(envelope.to_text_at_arrival().as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .err();
        Ok(Incoming {
            spool: self,
            id,
            tmp_path,
            file: Some(file),
            size: 0,
            error,
        })
    }
}

/// Ids in `root/queue/`, read without the lock and writing nothing (for `queue list`).
pub fn peek_ids(root: &Path) -> Result<Vec<String>, SpoolError> {
    queued_ids_in(&root.join("queue"))
}

/// Reads an envelope without the lock and writing nothing: `None` when it is gone (delivered
/// meanwhile). Envelopes are replaced by rename and message files appear whole (linked once
/// written), so neither is ever read half-written.
pub fn peek(root: &Path, id: &str) -> Result<Option<Envelope>, String> {
    let queue = root.join("queue");
    let path = queue.join(format!("{id}.env"));
    let msg = queue.join(format!("{id}.msg"));
    let envelope = match fs::read_to_string(&path) {
        Ok(text) => Envelope::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match carried_envelope(&msg) {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Ok(None),
            Err(_) if !msg.exists() => return Ok(None),
            Err(why) => return Err(format!("{}: {why}", msg.display())),
        },
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match locate_message(&msg) {
        Ok(message) => Ok(Some(Envelope {
            size: message.size,
            ..envelope
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", msg.display())),
    }
}

/// Ids in a `queue/` with an envelope (in `ID.env`, or carried in `ID.msg`). An `ID.msg` of
/// the older kind waiting for its `ID.env` (another program writing the two) is not listed.
fn queued_ids_in(queue: &Path) -> Result<Vec<String>, SpoolError> {
    let names: HashSet<String> = list(queue)?.into_iter().collect();
    let mut ids: Vec<String> = names
        .iter()
        .filter_map(|name| {
            if let Some(id) = name.strip_suffix(".env") {
                // An envelope alone is the rest of a removal cut short, not mail.
                return names.contains(&format!("{id}.msg")).then(|| id.to_string());
            }
            let id = name.strip_suffix(".msg")?;
            let carries = !names.contains(&format!("{id}.env"))
                && carries_envelope(&queue.join(name)).is_ok_and(|carries| carries);
            carries.then(|| id.to_string())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Whether a message file carries its envelope.
fn carries_envelope(msg: &Path) -> io::Result<bool> {
    let mut start = [0; ENVELOPE_START.len()];
    File::open(msg)?.read_exact(&mut start)?;
    Ok(start == ENVELOPE_START)
}

/// Where a message's bytes are in its file: past the envelope it carries, if any.
fn locate_message(msg: &Path) -> io::Result<MessageFile> {
    let file = File::open(msg)?;
    let length = file.metadata()?.len();
    let offset = match read_carried_envelope(&mut BufReader::new(file))? {
        Some(text) => text.len() as u64 + 1,
        None => 0,
    };
    Ok(MessageFile {
        path: msg.to_path_buf(),
        offset,
        size: length.saturating_sub(offset),
    })
}

/// Why a queue file could not be read: a failed read (tried again later) or content that
/// is not what it should be (moved aside).
enum Unreadable {
    Io(io::Error),
    Invalid(String),
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Io(e) => write!(f, "{e}"),
            Unreadable::Invalid(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for Unreadable {
    fn from(e: io::Error) -> Unreadable {
        match e.kind() {
            io::ErrorKind::InvalidData => Unreadable::Invalid(e.to_string()),
            _ => Unreadable::Io(e),
        }
    }
}

/// The envelope a message file carries: `None` for one of the older kind.
fn carried_envelope(msg: &Path) -> Result<Option<Envelope>, Unreadable> {
    let file = File::open(msg)?;
    match read_carried_envelope(&mut BufReader::new(file))? {
        Some(text) => Envelope::parse(&text)
            .map(Some)
            .map_err(|e| Unreadable::Invalid(format!("its envelope: {e}"))),
        None => Ok(None),
    }
}

/// Whether `dir` takes unnamed files (`O_TMPFILE`) that can then be linked by their
/// `/proc/self/fd` name, tried once at start with a link into `tmp/` (removed at once).
fn unnamed_files_work(dir: &Path, tmp: &Path) -> bool {
    let probe = tmp.join(format!(".probe.{}", new_id()));
    let works = unnamed_file(dir).and_then(|file| link_unnamed(&file, &probe));
    let _ = fs::remove_file(&probe);
    works.is_ok()
}

fn unnamed_file(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::TMPFILE.bits() as i32)
        .mode(FILE_MODE)
        .open(dir)
}

/// Gives an unnamed file its name; fails if `to` exists.
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    let fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let (cwd, follow) = (rustix::fs::CWD, rustix::fs::AtFlags::SYMLINK_FOLLOW);
    rustix::fs::linkat(cwd, fd.as_str(), cwd, to, follow).map_err(io::Error::from)
}

/// The envelope text at the start of a message file (up to the empty line, which is left
/// unread), or `None` for a message file of the older kind (the reader is then where it was).
fn read_carried_envelope(reader: &mut BufReader<File>) -> io::Result<Option<String>> {
    if !reader.fill_buf()?.starts_with(ENVELOPE_START) {
        return Ok(None);
    }
    let mut text = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_ENVELOPE)
            .read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") || text.len() as u64 > MAX_ENVELOPE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the envelope it carries has no end",
            ));
        }
        if line == b"\n" {
            break;
        }
        text.extend_from_slice(&line);
    }
    String::from_utf8(text)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "its envelope is not UTF-8"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update of the set is whole: a panic elsewhere cannot leave it half-made.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// File names in a directory.
fn list(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("read directory", dir))? {
        let entry = entry.map_err(io_error("read directory", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Gives `dir` `mode` when `wrong(its mode)`.
fn set_mode(dir: &Path, mode: u32, wrong: impl Fn(u32) -> bool) -> Result<(), SpoolError> {
    use std::os::unix::fs::PermissionsExt;
    let current = fs::symlink_metadata(dir)
        .map_err(io_error("read the mode of", dir))?
        .permissions()
        .mode()
        & 0o7777;
    if wrong(current) {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", dir))?;
    }
    Ok(())
}

/// Makes renames into `dir` durable: on ext4 without a journal a rename alone is not.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// Maildir-style id: seconds, microseconds, pid, counter, and a random number drawn once per
/// process. Unique without locking and sortable by arrival time; the random part keeps ids
/// apart after a clock step on a box whose pids repeat at each boot (the id also names the
/// message's Maildir files, which must never be taken for another message's).
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static NONCE: OnceLock<u32> = OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        // The standard library seeds its hash keys from the OS's random source.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish() as u32
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{:06}P{}Q{n}R{nonce:08x}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// A message being received. Dropped without `commit`, its file goes (an unnamed one with
/// its descriptor; one in `tmp/` by name).
pub struct Incoming<'a> {
    spool: &'a Spool,
    id: String,
    /// Its name in `tmp/`, where the file system takes no unnamed files.
    tmp_path: Option<PathBuf>,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
    /// Bytes of the message (the envelope it carries not counted).
    size: u64,
    /// The first write error; reported by `commit`.
    error: Option<io::Error>,
}

impl Incoming<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends message bytes. An error (a full disk) is kept and reported by `commit`.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(file) = &mut self.file {
            match file.write_all(bytes) {
                Ok(()) => self.size += bytes.len() as u64,
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Makes the message durable in `queue/`, setting `envelope.size`.
    pub fn commit(mut self, envelope: &mut Envelope) -> Result<Queued, SpoolError> {
        let to = self.spool.message_path(&self.id);
        let mut linked = false;
        let result = self.try_commit(&to, &mut linked);
        if result.is_err() && linked {
            // Nothing unacknowledged may stay behind (the client sends it again).
            if fs::remove_file(&to).is_ok() {
                let _ = self.spool.sync_queue();
            }
        }
        envelope.size = self.size;
        result
    }

    fn try_commit(&mut self, to: &Path, linked: &mut bool) -> Result<Queued, SpoolError> {
        let path = self.tmp_path.clone().unwrap_or_else(|| to.to_path_buf());
        if let Some(source) = self.error.take() {
            return Err(io_error("write", &path)(source));
        }
        let Some(file) = self.file.take() else {
            return Err(io_error("commit", &path)(io::ErrorKind::NotFound.into()));
        };
        let file = file
            .into_inner()
            .map_err(|e| io_error("write", &path)(e.into_error()))?;
        file.sync_all().map_err(io_error("sync", &path))?;
        match &self.tmp_path {
            None => link_unnamed(&file, to),
            Some(tmp) => link_no_replace(tmp, to),
        }
        .map_err(io_error("link into queue/", to))?;
        *linked = true;
        // Again: the link count the inode had at the first sync was 0 (an unnamed file) or
        // counted the tmp/ name; without a journal nothing else writes the new one, and after
        // a power cut the name in queue/ would point to a freed inode.
        file.sync_all().map_err(io_error("sync", to))?;
        self.spool.sync_queue()?;
        Ok(Queued {
            id: self.id.clone(),
        })
    }
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        // Committed or not, a name in tmp/ is garbage (an unnamed file needs nothing).
        if let Some(tmp) = &self.tmp_path {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Puts `from` at `to` unless a file is there already: a hard link (`from` is then removed
/// with the rest of `tmp/`). On a file system without links (vfat), a rename after a look:
/// safe, since only the process holding the spool lock writes `queue/`.
fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
            ) =>
        {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(from, to)?;
            // Without links, two names for one file after a power cut would let recovery
            // free the data of the queued one with the tmp/ one: make the move durable.
            match from.parent() {
                Some(tmp) => File::open(tmp).and_then(|d| d.sync_all()),
                None => Ok(()),
            }
        }
        result => result,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_error("create", path))?;
    file.write_all(bytes).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postilion-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn envelope() -> Envelope {
        Envelope {
            client: Some("127.0.0.1:1".parse().unwrap()),
            ..Envelope::for_tests()
        }
    }

    #[test]
    fn commit_then_recover() {
        let dir = temp_dir("commit");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"Subject: hi\r\n\r\nbody\r\n");
        let mut env = envelope();
        let queued = incoming.commit(&mut env).unwrap();
        assert_eq!(env.size, 21);
        let id = queued.id();
        // One file: the envelope as it was at arrival, an empty line, the message.
        assert_eq!(list(&dir.join("queue")).unwrap(), [format!("{id}.msg")]);
        let file = fs::read_to_string(dir.join("queue").join(format!("{id}.msg"))).unwrap();
        let carried = envelope().to_text_at_arrival();
        assert_eq!(file, format!("{carried}\nSubject: hi\r\n\r\nbody\r\n"));
        assert!(!carried.contains("Size:"));
        let mut message = String::new();
        let located = spool.message(id).unwrap();
        located
            .open()
            .unwrap()
            .read_to_string(&mut message)
            .unwrap();
        assert_eq!(message, "Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(located.size, 21);
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.queued, vec![id.to_string()]);
        assert_eq!(spool.queued_ids().unwrap(), vec![id.to_string()]);
        // Loaded from the file, measured from it.
        assert_eq!(spool.load(id).unwrap(), env);
        // Once written, ID.env is the envelope.
        let mut changed = env.clone();
        changed.recipients[0].attempts = 3;
        spool.update(id, &changed).unwrap();
        assert_eq!(spool.load(id).unwrap(), changed);
        assert_eq!(spool.recover().unwrap().queued, vec![id.to_string()]);
        assert_eq!(spool.queued_ids().unwrap(), vec![id.to_string()]);
        spool.remove(id).unwrap();
        assert!(list(&dir.join("queue")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_leaves_a_tmp_name_that_is_also_a_queued_file() {
        // As a power cut can leave a rename or link: both names, one inode.
        let dir = temp_dir("twonames");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"kept\r\n");
        let id = incoming.commit(&mut envelope()).unwrap().id().to_string();
        let queued = dir.join(format!("queue/{id}.msg"));
        fs::hard_link(&queued, dir.join(format!("tmp/{id}.msg"))).unwrap();
        fs::write(dir.join("tmp/other"), b"debris").unwrap();
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.debris_removed, 1);
        assert_eq!(list(&dir.join("tmp")).unwrap(), [format!("{id}.msg")]);
        assert_eq!(recovery.queued, std::slice::from_ref(&id));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_leaves_a_message_still_in_maildrop_to_pickup() {
        // A crash between pickup's commit and its removal of the maildrop file.
        let dir = temp_dir("picking");
        let spool = Spool::open(&dir, None).unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut incoming = spool.incoming(&envelope()).unwrap();
            incoming.write(b"x\r\n");
            ids.push(incoming.commit(&mut envelope()).unwrap().id().to_string());
        }
        fs::write(dir.join("maildrop").join(&ids[0]), b"Rcpt: a\n\nx\n").unwrap();
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.queued, [ids[1].clone()]);
        assert_eq!(recovery.left_to_pickup, [ids[0].clone()]);
        assert!(
            spool.is_queued(&ids[0]),
            "still queued, for pickup to hand on"
        );
        // Removed but not yet synced: a power cut could bring it back, so it still counts.
        let name = OsStr::new(&ids[0]);
        spool.remove_maildrop(name).unwrap();
        assert!(spool.in_maildrop(&ids[0]));
        spool.sync_maildrop().unwrap();
        assert!(!spool.in_maildrop(&ids[0]));
        fs::write(dir.join("maildrop").join(&ids[0]), b"Rcpt: a\n\nx\n").unwrap();
        // A directory a user made under a queued id is not pickup's: the message goes on.
        fs::remove_file(dir.join("maildrop").join(&ids[0])).unwrap();
        fs::create_dir(dir.join("maildrop").join(&ids[0])).unwrap();
        let mut queued = spool.recover().unwrap().queued;
        queued.sort();
        assert_eq!(queued, ids);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removal_takes_the_message_and_its_envelope() {
        let dir = temp_dir("remove");
        let spool = Spool::open(&dir, None).unwrap();
        let mut env = envelope();
        let mut incoming = spool.incoming(&env).unwrap();
        incoming.write(b"x\r\n");
        let id = incoming.commit(&mut env).unwrap().id().to_string();
        spool.update(&id, &env).unwrap();
        spool.remove(&id).unwrap();
        assert!(list(&dir.join("queue")).unwrap().is_empty());
        // An envelope left alone (a removal cut short) is moved aside, never delivered.
        fs::write(dir.join(format!("queue/{id}.env")), env.to_text()).unwrap();
        let recovery = spool.recover().unwrap();
        assert!(recovery.queued.is_empty());
        assert_eq!(list(&dir.join("corrupt")).unwrap(), [format!("{id}.env")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_unnamed_files_a_commit_goes_through_tmp() {
        let dir = temp_dir("named");
        let mut spool = Spool::open(&dir, None).unwrap();
        assert!(spool.unnamed_files, "this file system takes O_TMPFILE");
        spool.unnamed_files = false;
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"x\r\n");
        assert_eq!(list(&dir.join("tmp")).unwrap().len(), 1);
        let id = incoming.commit(&mut envelope()).unwrap().id().to_string();
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        assert_eq!(spool.load(&id).unwrap().size, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_message_file_needs_its_env() {
        let dir = temp_dir("older");
        let spool = Spool::open(&dir, None).unwrap();
        let mut env = envelope();
        env.size = 5;
        // As an earlier Postilion (or another program) wrote them: a plain message.
        fs::write(dir.join("queue/1.M1P1Q1.msg"), b"old\r\n").unwrap();
        fs::write(dir.join("queue/1.M1P1Q1.env"), env.to_text()).unwrap();
        fs::write(dir.join("queue/2.M1P1Q1.msg"), b"alone\r\n").unwrap();
        assert_eq!(spool.queued_ids().unwrap(), ["1.M1P1Q1"]);
        assert_eq!(spool.load("1.M1P1Q1").unwrap(), env);
        let located = spool.message("1.M1P1Q1").unwrap();
        assert_eq!((located.offset, located.size), (0, 5));
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.queued, ["1.M1P1Q1"]);
        assert_eq!(list(&dir.join("corrupt")).unwrap(), ["2.M1P1Q1.msg"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_are_0700_and_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("modes");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"x\r\n");
        let id = incoming.commit(&mut envelope()).unwrap().id().to_string();
        spool.update(&id, &envelope()).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for sub in ["tmp", "queue", "corrupt"] {
            assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/");
        }
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o711, "the root: passed through, not listed");
        assert_eq!(mode(&dir.join("maildrop")), 0o1733, "maildrop/");
        for file in [
            "lock".to_string(),
            format!("queue/{id}.msg"),
            format!("queue/{id}.env"),
        ] {
            assert_eq!(mode(&dir.join(&file)), 0o600, "{file}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_gives_what_it_makes_to_the_owner() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: not root");
            return;
        }
        let dir = temp_dir("owner");
        // Made by root before: stays root's.
        fs::create_dir_all(dir.join("queue")).unwrap();
        let owner = Owner {
            uid: 65534,
            gid: 65533,
        };
        let _spool = Spool::open(&dir, Some(owner)).unwrap();
        let ids = |sub: &str| {
            let meta = fs::metadata(dir.join(sub)).unwrap();
            (meta.uid(), meta.gid())
        };
        for sub in ["tmp", "corrupt", "maildrop", "lock"] {
            assert_eq!(ids(sub), (65534, 65533), "{sub}");
        }
        assert_eq!(ids("queue"), (0, 0), "not made here: left as it is");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dropped_incoming_leaves_nothing() {
        let dir = temp_dir("drop");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"partial");
        drop(incoming);
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        assert!(list(&dir.join("queue")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn second_server_on_same_spool_is_refused() {
        let dir = temp_dir("lock");
        let _first = Spool::open(&dir, None).unwrap();
        assert!(matches!(
            Spool::open(&dir, None),
            Err(SpoolError::Locked(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_removes_debris_and_quarantines_the_unreadable() {
        let dir = temp_dir("recover");
        let spool = Spool::open(&dir, None).unwrap();
        fs::write(dir.join("tmp/1.M1P1Q1.msg"), b"half").unwrap();
        fs::write(dir.join("queue/2.M1P1Q1.env"), b"\xff\xfe garbage").unwrap();
        fs::write(dir.join("queue/2.M1P1Q1.msg"), b"msg").unwrap();
        fs::write(dir.join("queue/3.M1P1Q1.msg"), b"orphan").unwrap();
        fs::write(dir.join("queue/4.M1P1Q1.env"), envelope().to_text()).unwrap();
        fs::write(dir.join("queue/4.M1P1Q1.msg"), b"good").unwrap();
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.queued, vec!["4.M1P1Q1".to_string()]);
        assert_eq!(recovery.debris_removed, 1);
        assert_eq!(recovery.quarantined, 3);
        let mut corrupt = list(&dir.join("corrupt")).unwrap();
        corrupt.sort();
        assert_eq!(corrupt, ["2.M1P1Q1.env", "2.M1P1Q1.msg", "3.M1P1Q1.msg"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_update_remove() {
        let dir = temp_dir("update");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"x\r\n");
        let mut env = envelope();
        let id = incoming.commit(&mut env).unwrap().id().to_string();
        assert_eq!(spool.queued_ids().unwrap(), std::slice::from_ref(&id));
        env.recipients[0].attempts = 3;
        spool.update(&id, &env).unwrap();
        assert_eq!(spool.load(&id).unwrap(), env);
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        spool.remove(&id).unwrap();
        assert!(list(&dir.join("queue")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_envelope_is_quarantined_on_load() {
        let dir = temp_dir("loadbad");
        let spool = Spool::open(&dir, None).unwrap();
        fs::write(dir.join("queue/9.M1P1Q1.env"), b"Version: 7\n").unwrap();
        fs::write(dir.join("queue/9.M1P1Q1.msg"), b"m").unwrap();
        assert!(spool.load("9.M1P1Q1").is_err());
        assert_eq!(list(&dir.join("corrupt")).unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_commit_never_replaces_a_queued_file_and_leaves_nothing_when_it_fails() {
        let dir = temp_dir("collide");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming(&envelope()).unwrap();
        incoming.write(b"new\r\n");
        // Another message already has this id (a clock stepped back, a pid reused).
        let id = incoming.id().to_string();
        fs::write(dir.join(format!("queue/{id}.env")), envelope().to_text()).unwrap();
        fs::write(dir.join(format!("queue/{id}.msg")), b"old\r\n").unwrap();
        assert!(incoming.commit(&mut envelope()).is_err());
        assert_eq!(
            fs::read(dir.join(format!("queue/{id}.msg"))).unwrap(),
            b"old\r\n"
        );
        assert!(dir.join(format!("queue/{id}.env")).exists());
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(a.contains(".M") && a.contains('P') && a.contains('Q') && a.contains('R'));
        assert_eq!(
            a.rsplit('R').next(),
            b.rsplit('R').next(),
            "one random part a process"
        );
    }
}
