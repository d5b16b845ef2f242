//! When to read files again that may change under a running server (the certificate, the
//! users file): their state (modification and change times, size, inode), a change acted on
//! only once it has settled (a file being written is not read half-way), and a read that
//! failed tried again a little later rather than given up on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A change younger than this (by its change time, which `touch` and `cp -p` cannot set)
/// is not read yet.
const SETTLE: Duration = Duration::from_secs(2);
/// A read that failed is tried again after this, for the same state of the files.
const RETRY: Duration = Duration::from_secs(5);

/// One file's state: modification time (seconds, nanoseconds), change time, size, inode.
type FileState = (i64, i64, i64, u64, u64);

/// The state of some files: for each (missing: `None`) its times, size and inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Vec<Option<FileState>>);

impl Stamp {
    pub fn of(paths: &[PathBuf]) -> Stamp {
        Stamp(
            paths
                .iter()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some((
                        meta.mtime(),
                        meta.mtime_nsec(),
                        meta.ctime(),
                        meta.len(),
                        meta.ino(),
                    ))
                })
                .collect(),
        )
    }

    /// Every file's last change is at least `SETTLE` old, or in the future (a clock stepped
    /// back must not keep a file unread forever), or the file is missing.
    fn settled(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.0
            .iter()
            .flatten()
            .all(|&(_, _, ctime, _, _)| now - ctime >= SETTLE.as_secs() as i64 || ctime > now)
    }
}

/// Files read once, watched for changes.
#[derive(Debug)]
pub struct Watch {
    paths: Vec<PathBuf>,
    /// The state last read well.
    read: Stamp,
    /// The state a read last failed on, and when.
    failed: Option<(Stamp, Instant)>,
}

impl Watch {
    /// Watches `paths`, as they are now (just read).
    pub fn new(paths: &[&Path]) -> Watch {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        let read = Stamp::of(&paths);
        Watch {
            paths,
            read,
            failed: None,
        }
    }

    /// The state to read now, if the files changed since the last good read, the change has
    /// settled, and a failed read of this very state is not too recent.
    pub fn due(&self) -> Option<Stamp> {
        let now = Stamp::of(&self.paths);
        if now == self.read || !now.settled() {
            return None;
        }
        match &self.failed {
            Some((stamp, at)) if *stamp == now && at.elapsed() < RETRY => None,
            _ => Some(now),
        }
    }

    /// The files' state now, settled or not (for a read asked for by a person: SIGHUP).
    pub fn current(&self) -> Stamp {
        Stamp::of(&self.paths)
    }

    pub fn read_well(&mut self, stamp: Stamp) {
        self.read = stamp;
        self.failed = None;
    }

    /// A read of `stamp` failed; true the first time for this state (log it then).
    pub fn read_failed(&mut self, stamp: Stamp) -> bool {
        let first = self.failed.as_ref().is_none_or(|(s, _)| *s != stamp);
        self.failed = Some((stamp, Instant::now()));
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_read_once_settled_and_a_failed_read_is_retried() {
        let dir = std::env::temp_dir().join(format!("postilion-stamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        std::fs::write(&file, "a").unwrap();
        let mut watch = Watch::new(&[&file]);
        assert_eq!(watch.due(), None, "nothing changed");
        std::fs::write(&file, "ab").unwrap();
        assert_eq!(watch.due(), None, "not settled yet");
        // Settled: pretend the last read was of another state and the change is old.
        let stamp = Stamp::of(std::slice::from_ref(&file));
        let old = Stamp(vec![stamp.0[0].map(|(m, n, c, l, i)| (m, n, c - 10, l, i))]);
        assert!(old.settled() && !stamp.settled());
        watch.read = Stamp(vec![None]);
        assert!(watch.read_failed(old.clone()));
        assert!(!watch.read_failed(old.clone()), "logged once per state");
        watch.read_well(old);
        assert!(watch.failed.is_none());
        // A change time in the future counts as settled.
        let future = Stamp(vec![
            stamp.0[0].map(|(m, n, c, l, i)| (m, n, c + 3600, l, i))
        ]);
        assert!(future.settled());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
