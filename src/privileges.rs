//! Who the daemon runs as, and who owns what it makes.
//!
//! Started as root, `serve` binds its listeners and opens the spool and its lock as root,
//! then switches to `user` for good: supplementary groups cleared, real, effective and saved
//! gid, then uid, set, the result checked and the way back to root tried and found closed.
//! All before any other thread starts and before a byte is read from the network. It stays
//! root only when told `allow_root`; not started as root, nothing changes. The user is read
//! from `/etc/passwd` itself (`passwd`), never through NSS.
//!
//! Also here: the umask (0077, so nothing made is readable by others), owner-only
//! directories that root makes at start handed to the user, and the start-up check that the
//! user can use them. Must not run once other threads exist: the kernel's set*id calls change
//! the calling thread only (the C library's wrappers signal every thread; these do not), so
//! `switch_to` counts the threads first and refuses if there is more than one. The queue
//! tools, run by root, take the spool owner's ids the same way (`become_owner_of`).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Access, Mode};
use rustix::process::{getegid, geteuid, getgid, getgroups, getuid};
use rustix::process::{Gid, Uid};
use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};

use crate::passwd::{self, User};

/// The user that directories made by root at start are given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What `serve` does about its user; decided before anything is opened.
#[derive(Debug, PartialEq, Eq)]
pub enum RunAs {
    /// Not started as root: it runs as whoever started it.
    Caller,
    /// Started as root and told `allow_root`: it stays root.
    Root,
    /// Started as root: it switches to this user once the listeners are bound.
    User(User),
}

impl RunAs {
    /// Decides for this process: `user` (a name in `/etc/passwd`) and `allow_root` come from
    /// the configuration. An error is one line.
    pub fn decide(user: &str, allow_root: bool) -> Result<RunAs, String> {
        decide(started_as_root(), user, allow_root, passwd::user_by_name)
    }

    /// The owner of what root makes at start, when it will not stay root.
    pub fn owner(&self) -> Option<Owner> {
        match self {
            RunAs::User(user) => Some(Owner {
                uid: user.uid,
                gid: user.gid,
            }),
            RunAs::Caller | RunAs::Root => None,
        }
    }
}

fn started_as_root() -> bool {
    getuid().is_root() || geteuid().is_root()
}

fn decide(
    root: bool,
    name: &str,
    allow_root: bool,
    lookup: impl FnOnce(&str) -> io::Result<Option<User>>,
) -> Result<RunAs, String> {
    if !root {
        return Ok(RunAs::Caller);
    }
    if allow_root {
        return Ok(RunAs::Root);
    }
    let file = passwd::PASSWD;
    let user = lookup(name)
        .map_err(|e| format!("cannot read {file} to find user '{name}': {e}"))?
        .ok_or_else(|| {
            format!(
                "started as root, postilion runs as user '{name}', which is not in {file}: \
                 create it (useradd --system {name}), name another (user = NAME), or stay \
                 root with allow_root = yes"
            )
        })?;
    if user.uid == 0 {
        return Err(format!(
            "user '{name}' has uid 0, so postilion would stay root: name another user, or \
             set allow_root = yes to mean it"
        ));
    }
    Ok(RunAs::User(user))
}

/// Sets the umask to 0077: files and directories made from now on are the owner's alone
/// (their modes are also given explicitly where they are made).
pub fn set_umask() {
    rustix::process::umask(Mode::RWXG | Mode::RWXO);
}

/// Switches the process to `user` for good, or says why it could not. Call it while the
/// process has one thread (see the module comment): it checks that first.
pub fn switch_to(user: &User) -> Result<(), String> {
    match thread_count() {
        Ok(1) => {}
        Ok(n) => {
            return Err(format!(
                "cannot switch to user '{}': {n} threads run already, and the switch would \
                 leave all but one as root",
                user.name
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot switch to user '{}': cannot count threads in /proc/self/status: {e}",
                user.name
            ))
        }
    }
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    let failed = |what: &str, e: rustix::io::Errno| {
        format!("cannot switch to user '{}': {what}: {e}", user.name)
    };
    set_thread_groups(&[]).map_err(|e| failed("setgroups", e))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| failed("setresgid", e))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| failed("setresuid", e))?;
    // Trust, but verify: the ids are the user's, no group is left, and root (the saved uid
    // included) cannot be had back.
    let groups = getgroups().map_err(|e| failed("getgroups", e))?;
    let ids_taken = getuid() == uid && geteuid() == uid && getgid() == gid && getegid() == gid;
    let back_to_root = set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok()
        || set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT).is_ok();
    if !ids_taken || !groups.is_empty() || back_to_root {
        return Err(format!(
            "switching to user '{}' did not take (uid {}, euid {}, gid {}, {} groups, root \
             regained: {back_to_root})",
            user.name,
            getuid().as_raw(),
            geteuid().as_raw(),
            getgid().as_raw(),
            groups.len()
        ));
    }
    Ok(())
}

/// For a tool run by root on a spool another user owns (`owned_dir`, its `queue/`): switches
/// to that owner's uid and its gid, as `switch_to` does, so that every file the tool writes
/// there is the owner's and the daemon, running as that user, can read it. The group is the
/// directory's, whatever `/etc/passwd` says. Nothing changes when not root or when the
/// directory is root's (or missing: opening it will say so). `Some(user)` when it switched.
pub fn become_owner_of(owned_dir: &Path) -> Result<Option<User>, String> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    let owner = match fs::metadata(owned_dir) {
        Ok(meta) if meta.uid() != 0 => Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        },
        _ => return Ok(None),
    };
    let name = match passwd::user_by_uid(owner.uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {}", owner.uid),
    };
    let user = User {
        name,
        uid: owner.uid,
        gid: owner.gid,
    };
    switch_to(&user)?;
    Ok(Some(user))
}

/// The `Threads:` count of `/proc/self/status`.
fn thread_count() -> io::Result<usize> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads: line"))
}

/// Makes `dir` (mode 0700) unless it is a directory already; its parent must exist (made
/// here, under umask 077, it would be root's alone and block the user). A directory made
/// here is given to `owner`: root makes what the user will write. The change of owner never
/// follows a symbolic link put in its place meanwhile.
pub fn create_dir(dir: &Path, owner: Option<Owner>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if owner.is_none() {
            fs::create_dir_all(parent)?;
        } else if !parent.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "its parent {} does not exist: make it first",
                    parent.display()
                ),
            ));
        }
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => match owner {
            Some(owner) => std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid)),
            None => Ok(()),
        },
        // Made by someone else meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks that this process may list and search `dir`, and write it when `write`: run once
/// the user is taken, so that a spool still owned by root is a clear error at start.
pub fn check_dir(dir: &Path, write: bool) -> Result<(), String> {
    let mut access = Access::READ_OK | Access::EXEC_OK;
    if write {
        access |= Access::WRITE_OK;
    }
    rustix::fs::access(dir, access).map_err(|e| {
        let can = if write { "read and write" } else { "read" };
        format!(
            "uid {} cannot {can} {} ({e}): give it to the user postilion runs as",
            getuid().as_raw(),
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> User {
        User {
            name: name.into(),
            uid,
            gid: uid + 1,
        }
    }

    fn never(_: &str) -> io::Result<Option<User>> {
        panic!("no lookup expected")
    }

    #[test]
    fn not_root_changes_nothing_and_allow_root_stays_root() {
        assert_eq!(decide(false, "postilion", false, never), Ok(RunAs::Caller));
        assert_eq!(decide(false, "postilion", true, never), Ok(RunAs::Caller));
        assert_eq!(decide(true, "postilion", true, never), Ok(RunAs::Root));
    }

    #[test]
    fn root_switches_to_the_user_and_gives_it_what_it_makes() {
        let found = decide(true, "postilion", false, |name| Ok(Some(user(name, 998))));
        assert_eq!(found, Ok(RunAs::User(user("postilion", 998))));
        assert_eq!(found.unwrap().owner(), Some(Owner { uid: 998, gid: 999 }));
        assert_eq!(RunAs::Root.owner(), None);
    }

    #[test]
    fn a_missing_user_or_uid_0_is_a_one_line_error() {
        let missing = decide(true, "mta", false, |_| Ok(None)).unwrap_err();
        assert!(
            missing.contains("user 'mta', which is not in /etc/passwd")
                && missing.contains("allow_root = yes")
                && !missing.contains('\n'),
            "{missing}"
        );
        let unreadable = decide(true, "mta", false, |_| {
            Err(io::ErrorKind::PermissionDenied.into())
        })
        .unwrap_err();
        assert!(
            unreadable.starts_with("cannot read /etc/passwd"),
            "{unreadable}"
        );
        let toor = decide(true, "toor", false, |name| Ok(Some(user(name, 0)))).unwrap_err();
        assert!(toor.contains("uid 0"), "{toor}");
    }

    #[test]
    fn directories_are_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("postilion-priv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // For an owner, a missing parent is an error, not made root's own; else it is made.
        let me = Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        assert!(create_dir(&dir.join("a/b"), Some(me)).is_err());
        let made = dir.join("a/b");
        create_dir(&made, None).unwrap();
        let mode = fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again: nothing to do.
        create_dir(&made, None).unwrap();
        fs::write(dir.join("file"), b"").unwrap();
        assert!(create_dir(&dir.join("file"), None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
