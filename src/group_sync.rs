//! Group commit for a directory's fsync: every thread that needs the directory's entries
//! durable asks, one of them syncs for all who asked before that sync began, and the others
//! wait for it, as a database's log writer does. Twenty sessions committing at once then pay
//! for one or two directory fsyncs, not twenty.
//!
//! The rule that keeps it safe: a caller's own changes are covered only by a sync that
//! *began* after them. A sync already running when a caller arrives may have missed its
//! entry, so the caller waits for the next one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Syncs begun so far; the one running, if any, is number `begun`.
    begun: u64,
    /// Syncs finished so far (they finish in order: one runs at a time).
    finished: u64,
    running: bool,
    /// Callers waiting for each sync (by number), and the syncs that failed: a failure is
    /// kept until every caller it covered has seen it.
    waiting: BTreeMap<u64, usize>,
    failures: BTreeMap<u64, io::ErrorKind>,
}

impl State {
    /// The outcome of sync `n` for one of its callers, who is done with it.
    fn outcome(&mut self, n: u64) -> io::Result<()> {
        let left = self.waiting.get_mut(&n).map(|w| {
            *w -= 1;
            *w
        });
        let failed = match left {
            Some(0) | None => {
                self.waiting.remove(&n);
                self.failures.remove(&n)
            }
            Some(_) => self.failures.get(&n).copied(),
        };
        match failed {
            Some(kind) => Err(io::Error::new(kind, "directory sync failed")),
            None => Ok(()),
        }
    }
}

impl GroupSync {
    pub fn new(dir: &Path) -> GroupSync {
        GroupSync {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    /// Returns once a fsync of the directory that began after this call has succeeded.
    pub fn sync(&self) -> io::Result<()> {
        self.sync_with(|dir| File::open(dir).and_then(|d| d.sync_all()))
    }

    fn sync_with(&self, fsync: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        // The first sync to begin from now on covers this caller.
        let mine = state.begun + 1;
        *state.waiting.entry(mine).or_default() += 1;
        loop {
            if state.finished >= mine {
                return state.outcome(mine);
            }
            if !state.running && state.begun + 1 == mine {
                state.running = true;
                state.begun = mine;
                drop(state);
                let result = fsync(&self.dir);
                state = self.lock();
                state.running = false;
                state.finished = mine;
                if let Err(e) = &result {
                    state.failures.insert(mine, e.kind());
                }
                self.done.notify_all();
                return state.outcome(mine);
            }
            state = match self.done.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated: each is set whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn one_caller_syncs_itself() {
        let group = GroupSync::new(Path::new("/nonexistent"));
        let calls = AtomicUsize::new(0);
        group
            .sync_with(|_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn callers_during_a_sync_wait_for_the_next_one_and_share_it() {
        let group = Arc::new(GroupSync::new(Path::new("/nonexistent")));
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let slow = {
            let (group, calls, release) = (group.clone(), calls.clone(), release.clone());
            std::thread::spawn(move || {
                group.sync_with(|_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
            })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Ten callers arrive while the first sync runs: it may have missed their entries.
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (group, calls) = (group.clone(), calls.clone());
                std::thread::spawn(move || {
                    group.sync_with(|_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        // All ten are waiting (not done) while the first sync is held.
        std::thread::sleep(Duration::from_millis(50));
        assert!(waiters.iter().all(|w| !w.is_finished()));
        release.store(true, Ordering::SeqCst);
        slow.join().unwrap().unwrap();
        for waiter in waiters {
            waiter.join().unwrap().unwrap();
        }
        // The first sync, then one (rarely a few) for the ten: never one each.
        let calls = calls.load(Ordering::SeqCst);
        assert!((2..=6).contains(&calls), "{calls} syncs");
    }

    #[test]
    fn a_failed_sync_fails_those_it_covered_only() {
        let group = GroupSync::new(Path::new("/nonexistent"));
        let failed = group.sync_with(|_| Err(io::ErrorKind::Other.into()));
        assert!(failed.is_err());
        // The next caller needs a sync of its own, which succeeds.
        assert!(group.sync_with(|_| Ok(())).is_ok());
        // The real thing on a real directory.
        let dir = std::env::temp_dir();
        assert!(GroupSync::new(&dir).sync().is_ok());
    }
}
