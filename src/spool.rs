//! The on-disk queue: commit, recover at start, load, update, remove. The only code that
//! writes the spool.
//!
//! `tmp/` holds messages being written; `queue/` holds `ID.msg` (immutable) and `ID.env`
//! (the envelope); `corrupt/` holds what could not be read. A commit writes both files in
//! `tmp/`, fsyncs them, links `.msg` then `.env` into `queue/` (a link never replaces a file
//! already there, as a rename would after an id collision) and fsyncs `queue/` itself; only
//! then does it return a `Queued`, the one thing that lets a session answer 250 (invariant 1).
//! A lock file keeps two servers off one spool. Everything here is its owner's alone:
//! directories 0700, files 0600; root opening the spool for a user gives it what it makes.
//! Two exceptions let `sendmail` (any local user) drop mail without the daemon: the root is
//! 0711 (others may pass through, not list it) and `maildrop/` is 1733 (anyone may add a
//! file, nobody but the owner may list it, and the sticky bit keeps users off each other's
//! files); `pickup.rs` takes what is dropped there in through `incoming_as`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::Envelope;
use crate::privileges::{self, Owner};

/// Mode of every file made in the spool.
const FILE_MODE: u32 = 0o600;
/// The spool root: others may pass through to `maildrop/`, not list it.
const ROOT_MODE: u32 = 0o711;
/// `maildrop/`: anyone may add, nobody else may list or read, nobody may remove another's.
pub const MAILDROP_MODE: u32 = 0o1733;

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

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Ids of queued messages, oldest first.
    pub queued: Vec<String>,
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
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path)(e)),
        }
        Ok(Spool {
            root: root.into(),
            tmp,
            queue,
            corrupt,
            maildrop,
            _lock: lock,
        })
    }

    /// `maildrop/`, where `sendmail` leaves mail.
    pub fn maildrop(&self) -> &Path {
        &self.maildrop
    }

    /// Whether `id` is in `queue/` already (its envelope is there).
    pub fn is_queued(&self, id: &str) -> bool {
        fs::symlink_metadata(self.queue.join(format!("{id}.env"))).is_ok()
    }

    /// Removes a maildrop file taken in (or found queued already), durably: it must not be
    /// taken in again after a crash.
    pub fn remove_maildrop(&self, name: &str) -> Result<(), SpoolError> {
        let path = self.maildrop.join(name);
        fs::remove_file(&path).map_err(io_error("remove", &path))?;
        sync_dir(&self.maildrop)
    }

    /// Moves a maildrop file that cannot be taken in to `corrupt/maildrop.NAME`.
    pub fn quarantine_maildrop(&self, name: &str) -> Result<PathBuf, SpoolError> {
        let (from, to) = (
            self.maildrop.join(name),
            self.corrupt.join(format!("maildrop.{name}")),
        );
        fs::rename(&from, &to).map_err(io_error("move to corrupt/", &from))?;
        sync_dir(&self.corrupt)?;
        sync_dir(&self.maildrop)?;
        Ok(to)
    }

    /// Takes the lock of an existing spool and creates nothing: for the queue tools, when no
    /// daemon holds it. `Locked` when one does.
    pub fn open_existing(root: &Path) -> Result<Spool, SpoolError> {
        let (tmp, queue, corrupt) = (root.join("tmp"), root.join("queue"), root.join("corrupt"));
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path)(e)),
        }
        Ok(Spool {
            root: root.into(),
            maildrop: root.join("maildrop"),
            tmp,
            queue,
            corrupt,
            _lock: lock,
        })
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
        for name in list(&self.tmp)? {
            let path = self.tmp.join(&name);
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            log::info!("spool: removed crash debris tmp/{name}");
            recovery.debris_removed += 1;
        }
        let names = list(&self.queue)?;
        for name in &names {
            if let Some(id) = name.strip_suffix(".env") {
                let msg = format!("{id}.msg");
                match self.check_envelope(name) {
                    Err(why) => self.quarantine(&[name, &msg], &why, &mut recovery)?,
                    Ok(()) if !names.contains(&msg) => {
                        self.quarantine(&[name], "its .msg file is missing", &mut recovery)?
                    }
                    Ok(()) => recovery.queued.push(id.to_string()),
                }
            } else if let Some(id) = name.strip_suffix(".msg") {
                if !names.contains(&format!("{id}.env")) {
                    let why = "no envelope (a commit cut short before its 250)";
                    self.quarantine(&[name], why, &mut recovery)?;
                }
            } else {
                self.quarantine(&[name], "not a queue file name", &mut recovery)?;
            }
        }
        recovery.queued.sort();
        Ok(recovery)
    }

    fn check_envelope(&self, name: &str) -> Result<(), String> {
        let text = fs::read_to_string(self.queue.join(name)).map_err(|e| e.to_string())?;
        Envelope::parse(&text)
            .map(|_| ())
            .map_err(|e| e.to_string())
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
            if !from.exists() {
                continue;
            }
            let to = self.corrupt.join(name);
            fs::rename(&from, &to).map_err(io_error("move to corrupt/", &from))?;
            log::error!("spool: moved queue/{name} to corrupt/: {why}");
            recovery.quarantined += 1;
        }
        sync_dir(&self.queue)
    }

    /// Ids in `queue/` (those with an envelope), for the periodic scan.
    pub fn queued_ids(&self) -> Result<Vec<String>, SpoolError> {
        let mut ids: Vec<String> = list(&self.queue)?
            .into_iter()
            .filter_map(|name| name.strip_suffix(".env").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The message file of a queued id.
    pub fn message_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    /// Reads a queued envelope. An unreadable one is moved to `corrupt/` with its message.
    pub fn load(&self, id: &str) -> Result<Envelope, SpoolError> {
        let path = self.queue.join(format!("{id}.env"));
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        Envelope::parse(&text).map_err(|e| {
            let names = [format!("{id}.env"), format!("{id}.msg")];
            let _ = self.quarantine(
                &[&names[0], &names[1]],
                &e.to_string(),
                &mut Recovery::default(),
            );
            io_error("parse", &path)(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        })
    }

    /// Replaces an envelope atomically: write to `tmp/`, fsync, rename, fsync `queue/`.
    pub fn update(&self, id: &str, envelope: &Envelope) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(format!("{id}.env.{}", new_id()));
        let result = write_synced(&tmp, envelope.to_text().as_bytes()).and_then(|()| {
            let path = self.queue.join(format!("{id}.env"));
            fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
            sync_dir(&self.queue)
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a finished message: envelope first, so it is never half-queued.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        for name in [format!("{id}.env"), format!("{id}.msg")] {
            let path = self.queue.join(name);
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        Ok(())
    }

    /// Starts a new message in `tmp/` under a fresh queue id.
    pub fn incoming(&self) -> Result<Incoming<'_>, SpoolError> {
        self.incoming_as(new_id())
    }

    /// A new message with a given id (a maildrop file's name, checked by the caller): its
    /// commit fails rather than replace a message queued with that id.
    pub fn incoming_as(&self, id: String) -> Result<Incoming<'_>, SpoolError> {
        let path = self.tmp.join(format!("{id}.msg"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_error("create", &path))?;
        Ok(Incoming {
            spool: self,
            id,
            path,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            size: 0,
            error: None,
        })
    }
}

/// Ids in `root/queue/`, read without the lock and writing nothing (for `queue list`).
pub fn peek_ids(root: &Path) -> Result<Vec<String>, SpoolError> {
    let queue = root.join("queue");
    let mut ids: Vec<String> = list(&queue)?
        .into_iter()
        .filter_map(|name| name.strip_suffix(".env").map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Reads an envelope without the lock and writing nothing: `None` when it is gone (delivered
/// meanwhile). Envelopes are replaced by rename, so one is never read half-written.
pub fn peek(root: &Path, id: &str) -> Result<Option<Envelope>, String> {
    let path = root.join("queue").join(format!("{id}.env"));
    match fs::read_to_string(&path) {
        Ok(text) => Envelope::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
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

/// A message being received. Dropped without `commit`, its temp file is removed.
pub struct Incoming<'a> {
    spool: &'a Spool,
    id: String,
    path: PathBuf,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
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
        let mut linked = Vec::new();
        let result = self.try_commit(envelope, &mut linked);
        if result.is_err() {
            // Nothing unacknowledged may stay behind half-made: the .env goes first, so an
            // .env is never left alone. Only what this commit linked is removed.
            for path in linked.iter().rev() {
                let _ = fs::remove_file(path);
            }
        }
        // The temp names are garbage either way (the message's own goes on drop).
        let _ = fs::remove_file(self.spool.tmp.join(format!("{}.env", self.id)));
        result
    }

    fn try_commit(
        &mut self,
        envelope: &mut Envelope,
        linked: &mut Vec<PathBuf>,
    ) -> Result<Queued, SpoolError> {
        let path = self.path.clone();
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
        drop(file);

        envelope.size = self.size;
        let (tmp, queue) = (&self.spool.tmp, &self.spool.queue);
        let env_tmp = tmp.join(format!("{}.env", self.id));
        write_synced(&env_tmp, envelope.to_text().as_bytes())?;
        // .msg first: an .env in queue/ always has its message.
        for (from, suffix) in [(&path, "msg"), (&env_tmp, "env")] {
            let to = queue.join(format!("{}.{suffix}", self.id));
            link_no_replace(from, &to).map_err(io_error("link into queue/", &to))?;
            linked.push(to);
        }
        sync_dir(queue)?;
        Ok(Queued {
            id: self.id.clone(),
        })
    }
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        // Not committed (or the commit failed): the temp file is garbage.
        let _ = fs::remove_file(&self.path);
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
    use crate::envelope::Recipient;
    use crate::smtp::address::{ForwardPath, ReversePath};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postilion-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn envelope() -> Envelope {
        Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::pending(ForwardPath::Postmaster)],
            client: Some("127.0.0.1:1".parse().unwrap()),
            helo: "h".into(),
            protocol: "ESMTP".into(),
            eight_bit: false,
            smtputf8: false,
            arrival: 1,
            size: 0,
            delay_warned: false,
            held: false,
            auth: None,
        }
    }

    #[test]
    fn commit_then_recover() {
        let dir = temp_dir("commit");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming().unwrap();
        incoming.write(b"Subject: hi\r\n\r\nbody\r\n");
        let mut env = envelope();
        let queued = incoming.commit(&mut env).unwrap();
        assert_eq!(env.size, 21);
        let msg = fs::read(dir.join("queue").join(format!("{}.msg", queued.id()))).unwrap();
        assert_eq!(msg, b"Subject: hi\r\n\r\nbody\r\n");
        assert!(list(&dir.join("tmp")).unwrap().is_empty());
        let recovery = spool.recover().unwrap();
        assert_eq!(recovery.queued, vec![queued.id().to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_are_0700_and_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("modes");
        let spool = Spool::open(&dir, None).unwrap();
        let mut incoming = spool.incoming().unwrap();
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
        let mut incoming = spool.incoming().unwrap();
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
        let mut incoming = spool.incoming().unwrap();
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
        let mut incoming = spool.incoming().unwrap();
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
        // Only the .msg collides: the new .env must not stay behind alone either.
        fs::remove_file(dir.join(format!("queue/{id}.env"))).unwrap();
        let mut incoming = spool.incoming().unwrap();
        let id2 = incoming.id().to_string();
        incoming.write(b"x\r\n");
        fs::create_dir(dir.join(format!("queue/{id2}.env"))).unwrap();
        assert!(incoming.commit(&mut envelope()).is_err());
        assert!(!dir.join(format!("queue/{id2}.msg")).exists());
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
