//! Whether files changed since they were read: their modification times and sizes, and
//! whether a change has settled (a file being written is not read half-way).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// What tells that files changed: each one's modification time and size. A change younger
/// than two seconds is not acted on yet, so a file being written is not read half-way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Stamp {
    pub fn of(paths: &[&Path]) -> Stamp {
        Stamp(
            paths
                .iter()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect(),
        )
    }

    /// Every file is older than two seconds (or missing).
    pub fn settled(&self) -> bool {
        let now = SystemTime::now();
        self.0.iter().flatten().all(|(modified, _)| {
            now.duration_since(*modified)
                .is_ok_and(|age| age >= Duration::from_secs(2))
        })
    }
}
