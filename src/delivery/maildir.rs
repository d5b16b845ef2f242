//! Local delivery into a Maildir: write in `tmp/`, fsync, rename into `new/`, fsync `new/`.
//!
//! `Return-Path:` and `Delivered-To:` go on top, as Postfix's local(8) does, and line ends
//! become LF, as mail readers on the box expect. The Maildir's `tmp/`, `new/` and `cur/` are
//! made if missing. A file is in `new/` only when it is complete. The caller names the file,
//! one name per message and Maildir, so a repeated delivery can find the first one's copy,
//! in `new/` or, moved there by a mail reader (with `:2,S` flags added), in `cur/`.
//!
//! Never through a symbolic link: the daemon may write as another user than the Maildir's
//! owner, who could point `new/` at a directory of the daemon's (or, run as root, anywhere).
//! The user's directory is opened in the mailbox root with `O_NOFOLLOW`, its `tmp/`, `new/`
//! and `cur/` relative to it the same way, and the message is made (`O_EXCL`, after removing
//! a leftover of that name) and renamed relative to those. A link in any of these places is
//! `MaildirError::Symlink`, and nothing is written. The mailbox root itself is the
//! administrator's choice and is followed. Files are made 0600, directories 0700.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::spool::MessageFile;

/// Where the message is now.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    New(PathBuf),
    /// A file of that name was already there: nothing was written.
    AlreadyThere(PathBuf),
}

#[derive(Debug)]
pub enum MaildirError {
    /// The user's directory, or its `tmp/`, `new/` or `cur/`, is a symbolic link.
    Symlink(PathBuf),
    /// Something other than a directory is where one should be.
    NotDirectory(PathBuf),
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for MaildirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaildirError::Symlink(path) => write!(
                f,
                "{} is a symbolic link (refused: nothing is written through one)",
                path.display()
            ),
            MaildirError::NotDirectory(path) => {
                write!(f, "{} is not a directory", path.display())
            }
            MaildirError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> MaildirError + 'a {
    move |errno| MaildirError::Io {
        action,
        path: path.to_path_buf(),
        source: errno.into(),
    }
}

/// A Maildir opened for writing: its three directories, each opened without following a link.
struct Opened {
    tmp: OwnedFd,
    new: OwnedFd,
    cur: OwnedFd,
}

/// Makes `name` in `parent` (0700) if nothing is there; what is there is checked on opening.
fn make_dir(parent: impl AsFd, name: &str, shown: &Path) -> Result<(), MaildirError> {
    match rustix::fs::mkdirat(parent, name, Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(io_error("create directory", shown)(e)),
    }
}

/// Opens the directory `name` in `parent`, refusing a symbolic link.
fn open_dir(parent: impl AsFd, name: &str, shown: &Path) -> Result<OwnedFd, MaildirError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOFOLLOW on a link gives ELOOP; O_DIRECTORY on anything else ENOTDIR.
        Err(Errno::LOOP | Errno::NOTDIR) => {
            match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                    Err(MaildirError::Symlink(shown.into()))
                }
                _ => Err(MaildirError::NotDirectory(shown.into())),
            }
        }
        Err(e) => Err(io_error("open", shown)(e)),
    }
}

/// Opens (making what is missing) the Maildir `maildir`, a directory in the mailbox root.
fn open(maildir: &Path) -> Result<Opened, MaildirError> {
    let (root, user) = match (
        maildir.parent(),
        maildir.file_name().and_then(OsStr::to_str),
    ) {
        (Some(root), Some(user)) => (root, user),
        _ => return Err(MaildirError::NotDirectory(maildir.into())),
    };
    let root = match root.as_os_str().is_empty() {
        true => Path::new("."),
        false => root,
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root =
        rustix::fs::openat(CWD, root, flags, Mode::empty()).map_err(io_error("open", root))?;
    make_dir(&root, user, maildir)?;
    let user = open_dir(&root, user, maildir)?;
    let sub = |name: &str| {
        let shown = maildir.join(name);
        make_dir(&user, name, &shown)?;
        open_dir(&user, name, &shown)
    };
    Ok(Opened {
        tmp: sub("tmp")?,
        new: sub("new")?,
        cur: sub("cur")?,
    })
}

/// Delivers the queued `message` (CRLF line ends) into `maildir` as `name`, with `headers` on
/// top, unless a file of that name is in `new/` (or in `cur/`, when `look_in_cur`).
pub fn deliver(
    maildir: &Path,
    name: &str,
    headers: &str,
    message: &MessageFile,
    look_in_cur: bool,
) -> Result<Written, MaildirError> {
    let dirs = open(maildir)?;
    let new = maildir.join("new").join(name);
    if rustix::fs::statat(&dirs.new, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Ok(Written::AlreadyThere(new));
    }
    if look_in_cur {
        let cur = maildir.join("cur");
        if let Some(found) = find_in_cur(&dirs.cur, name).map_err(io_error("read", &cur))? {
            return Ok(Written::AlreadyThere(cur.join(found)));
        }
    }
    let tmp = maildir.join("tmp").join(name);
    let result = write(&dirs.tmp, name, headers, message)
        .map_err(|source| MaildirError::Io {
            action: "write",
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            rustix::fs::renameat(&dirs.tmp, name, &dirs.new, name)
                .map_err(io_error("move into new/", &tmp))?;
            rustix::fs::fsync(&dirs.new).map_err(io_error("sync", &maildir.join("new")))?;
            Ok(Written::New(new))
        });
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dirs.tmp, name, AtFlags::empty());
    }
    result
}

/// The name of a file in `cur/` that is `name` with the flags a reader adds (`:2,S`, or
/// `,S=size`).
fn find_in_cur(cur: impl AsFd, name: &str) -> Result<Option<PathBuf>, Errno> {
    for entry in Dir::read_from(cur)? {
        let entry = entry?;
        let file = Path::new(OsStr::from_bytes(entry.file_name().to_bytes()));
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(name)) else {
            continue;
        };
        if rest.is_empty() || rest.starts_with([':', ',']) {
            return Ok(Some(file.to_path_buf()));
        }
    }
    Ok(None)
}

/// Writes the message as `name` in `tmp` (a new file, 0600) and syncs it.
fn write(tmp: impl AsFd, name: &str, headers: &str, message: &MessageFile) -> io::Result<()> {
    // A leftover of an attempt cut short has the same name: start it over, as a new file (a
    // link planted under that name is removed, never followed).
    match rustix::fs::unlinkat(&tmp, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(
        &tmp,
        name,
        flags,
        Mode::RUSR | Mode::WUSR,
    )?);
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    out.write_all(headers.replace("\r\n", "\n").as_bytes())?;
    let mut input = message.open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending_cr = false;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // CRLF to LF; a CR split from its LF by the buffer edge is held back one read.
        let mut chunk = Vec::with_capacity(n + 1);
        for &b in &buf[..n] {
            if pending_cr && b != b'\n' {
                chunk.push(b'\r');
            }
            pending_cr = b == b'\r';
            if !pending_cr {
                chunk.push(b);
            }
        }
        out.write_all(&chunk)?;
    }
    if pending_cr {
        out.write_all(b"\r")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn delivers_into_new_with_headers_and_lf_line_ends() {
        let dir = std::env::temp_dir().join(format!("postilion-maildir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nline\r\nbare\rcr\r\n").unwrap();
        let headers = "Return-Path: <a@b>\r\nDelivered-To: alice@x\r\n";
        let Written::New(path) = deliver(
            &dir.join("alice"),
            "1.M1P1Q1.mx",
            headers,
            &MessageFile::whole(&msg),
            false,
        )
        .unwrap() else {
            panic!("not written")
        };
        assert_eq!(path, dir.join("alice/new/1.M1P1Q1.mx"));
        assert_eq!(
            fs::read(&path).unwrap(),
            b"Return-Path: <a@b>\nDelivered-To: alice@x\nSubject: x\n\nline\nbare\rcr\n"
        );
        assert_eq!(fs::read_dir(dir.join("alice/tmp")).unwrap().count(), 0);
        assert!(dir.join("alice/cur").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_delivery_finds_the_first_in_new_or_cur() {
        let dir = std::env::temp_dir().join(format!("postilion-maildir2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let alice = dir.join("alice");
        let first = deliver(&alice, "7.M1P1Q1.mx", "", &MessageFile::whole(&msg), false).unwrap();
        assert!(matches!(first, Written::New(_)));
        let again = deliver(&alice, "7.M1P1Q1.mx", "", &MessageFile::whole(&msg), false).unwrap();
        assert_eq!(again, Written::AlreadyThere(alice.join("new/7.M1P1Q1.mx")));
        // A reader moved it to cur/ and marked it seen.
        fs::rename(
            alice.join("new/7.M1P1Q1.mx"),
            alice.join("cur/7.M1P1Q1.mx:2,S"),
        )
        .unwrap();
        let again = deliver(&alice, "7.M1P1Q1.mx", "", &MessageFile::whole(&msg), true).unwrap();
        assert_eq!(
            again,
            Written::AlreadyThere(alice.join("cur/7.M1P1Q1.mx:2,S"))
        );
        // A longer name with the same start is another message.
        fs::rename(
            alice.join("cur/7.M1P1Q1.mx:2,S"),
            alice.join("cur/7.M1P1Q1.mx2:2,S"),
        )
        .unwrap();
        assert!(matches!(
            deliver(&alice, "7.M1P1Q1.mx", "", &MessageFile::whole(&msg), true).unwrap(),
            Written::New(_)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("postilion-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn files_are_0600_and_made_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("maildir-modes");
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let Written::New(path) = deliver(
            &dir.join("bob"),
            "1.M1P1Q1.mx",
            "",
            &MessageFile::whole(&msg),
            false,
        )
        .unwrap() else {
            panic!("not written")
        };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        for sub in ["bob", "bob/tmp", "bob/new", "bob/cur"] {
            assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_for_the_maildir_or_its_directories_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = temp("maildir-links");
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let elsewhere = dir.join("elsewhere");
        fs::create_dir_all(elsewhere.join("tmp")).unwrap();
        fs::create_dir_all(elsewhere.join("new")).unwrap();
        fs::create_dir_all(elsewhere.join("cur")).unwrap();
        let mail = dir.join("mail");
        // The user's directory itself.
        fs::create_dir_all(&mail).unwrap();
        symlink(&elsewhere, mail.join("eve")).unwrap();
        // Each of tmp/, new/, cur/.
        for sub in ["tmp", "new", "cur"] {
            let user = mail.join(sub.to_string() + "-user");
            fs::create_dir_all(&user).unwrap();
            for other in ["tmp", "new", "cur"].iter().filter(|o| **o != sub) {
                fs::create_dir(user.join(other)).unwrap();
            }
            symlink(elsewhere.join(sub), user.join(sub)).unwrap();
        }
        for (user, link) in [
            ("eve", "eve".to_string()),
            ("tmp-user", "tmp-user/tmp".into()),
            ("new-user", "new-user/new".into()),
            ("cur-user", "cur-user/cur".into()),
        ] {
            let err = deliver(
                &mail.join(user),
                "2.M1P1Q1.mx",
                "",
                &MessageFile::whole(&msg),
                true,
            )
            .unwrap_err();
            assert!(
                matches!(&err, MaildirError::Symlink(p) if *p == mail.join(&link)),
                "{user}: {err}"
            );
            assert!(err.to_string().contains("is a symbolic link"), "{err}");
        }
        for sub in ["tmp", "new", "cur"] {
            assert_eq!(
                fs::read_dir(elsewhere.join(sub)).unwrap().count(),
                0,
                "{sub}"
            );
        }
        // Something else where a directory should be.
        fs::create_dir_all(mail.join("frank")).unwrap();
        fs::write(mail.join("frank/new"), b"in the way").unwrap();
        let err = deliver(
            &mail.join("frank"),
            "3.M1P1Q1.mx",
            "",
            &MessageFile::whole(&msg),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, MaildirError::NotDirectory(_)), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_planted_under_the_file_name_in_tmp_is_removed_not_followed() {
        use std::os::unix::fs::symlink;
        let dir = temp("maildir-planted");
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let alice = dir.join("alice");
        fs::create_dir_all(alice.join("tmp")).unwrap();
        symlink(&victim, alice.join("tmp/4.M1P1Q1.mx")).unwrap();
        let written = deliver(&alice, "4.M1P1Q1.mx", "", &MessageFile::whole(&msg), false).unwrap();
        assert_eq!(written, Written::New(alice.join("new/4.M1P1Q1.mx")));
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(alice.join("new/4.M1P1Q1.mx"))
            .unwrap()
            .file_type()
            .is_file());
        fs::remove_dir_all(&dir).unwrap();
    }
}
