//! Users made for a test (as root, as CI runs the tests): `useradd --system`, removed with
//! their group when dropped.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::DEADLINE;

pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A system user made for one test with `useradd --system`, removed (with its group) on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// `None` when that is not possible here (not root, no useradd).
    pub fn create() -> Option<TestUser> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // useradd gives up at once when another one holds the lock on /etc/passwd.
        let start = Instant::now();
        loop {
            let made = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", &name])
                .status()
                .ok()?;
            if made.success() {
                break;
            }
            if start.elapsed() > DEADLINE {
                return None;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(50));
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let user = TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        };
        Some(user)
    }

    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the group too when nobody else is in it; make sure.
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(std::process::Stdio::null())
            .status();
    }
}
