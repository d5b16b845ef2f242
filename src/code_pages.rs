//! Gives back the file pages that start-up mapped and the idle daemon does not use.
//!
//! Start-up runs code spread over the whole binary and libc (configuration, recovery, TLS
//! set-up...), and on every page fault in a file mapping the kernel maps up to 16 pages around
//! the one asked for (fault-around): by READY=1 most of the binary's code and much of libc's
//! is mapped, and counted in the resident set, though the idle daemon runs little of it. Once
//! started, the daemon unmaps those pages from itself (`madvise(MADV_DONTNEED)`); what runs
//! afterwards maps again what it needs. The pages stay in the page cache, shared and clean, but
//! no longer pinned by our mapping: the kernel reclaims unmapped cache first.
//!
//! Only read-only private file mappings holding no private (copied-on-write) page are touched:
//! what they hold is exactly the file's content, which `MADV_DONTNEED` reads again on the next
//! access, as after the kernel's own reclaim of clean pages. Mappings written since they were
//! mapped (relocated data, made read-only afterwards) are left alone.

use std::fs;
use std::io;

/// What [`release`] gave back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Resident bytes unmapped.
    pub bytes: u64,
    /// Mappings unmapped from.
    pub mappings: usize,
}

/// Unmaps the resident pages of every read-only private file mapping of this process that
/// holds no private page. A mapping that cannot be released is skipped.
pub fn release() -> io::Result<Released> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in parse(&smaps).into_iter().filter(Mapping::releasable) {
        let len = mapping.end - mapping.start;
        // SAFETY: the range is a whole mapping of this process, read from /proc/self/smaps a
        // moment ago. It is private, file-backed, not writable and holds no anonymous page: every
        // page in it is the file's content, never written by this process, and MADV_DONTNEED on
        // such a mapping only drops page-table entries, the next access reading the same bytes
        // from the file (as after the kernel's reclaim of a clean page, which may happen at any
        // time anyway). No Rust object's value changes, so no reference is invalidated. Nothing
        // here maps, unmaps or makes writable a mapping (no dlopen, no mprotect) while it runs.
        let result = unsafe {
            rustix::mm::madvise(
                mapping.start as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        if result.is_ok() {
            released.bytes += mapping.rss;
            released.mappings += 1;
        }
    }
    Ok(released)
}

/// One mapping of `/proc/self/smaps`: what decides whether it may be released.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    /// Resident bytes.
    rss: u64,
    /// Bytes of private (anonymous, copied-on-write) pages.
    anonymous: u64,
}

impl Mapping {
    /// Read-only, private, backed by a file (not `[vdso]` or `[stack]`), holding only the file's
    /// pages, and resident at all.
    fn releasable(&self) -> bool {
        let perms = self.perms.as_bytes();
        perms.len() == 4
            && perms[1] == b'-'
            && perms[3] == b'p'
            && self.path.starts_with('/')
            && !self.path.ends_with(" (deleted)")
            && self.anonymous == 0
            && self.rss > 0
    }
}

/// The mappings of an smaps text, in order. A mapping whose Rss or Anonymous line is missing
/// or unreadable counts as holding private pages (never released).
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(mapping) = header(line) {
            mappings.push(mapping);
        } else if let (Some(mapping), Some((key, value))) =
            (mappings.last_mut(), line.split_once(':'))
        {
            let kib = || value.trim().strip_suffix(" kB")?.parse::<u64>().ok();
            match key {
                "Rss" => mapping.rss = kib().map_or(0, |k| k * 1024),
                "Anonymous" => mapping.anonymous = kib().map_or(u64::MAX, |k| k * 1024),
                _ => {}
            }
        }
    }
    mappings
}

/// A mapping's first line: `start-end perms offset dev inode [path]`.
fn header(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.to_string();
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    (end > start && perms.len() == 4).then_some(Mapping {
        start,
        end,
        perms,
        path,
        rss: 0,
        // Unknown until its line is read: private until shown otherwise.
        anonymous: u64::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c8a00000-55d0c8af1000 r--p 00000000 fe:00 10420654                   /usr/sbin/postilion
Size:                964 kB
Rss:                 416 kB
Anonymous:             0 kB
55d0c8af1000-55d0c8d35000 r-xp 000f1000 fe:00 10420654                   /usr/sbin/postilion
Rss:                1668 kB
Anonymous:             0 kB
55d0c8d35000-55d0c8d46000 r--p 00335000 fe:00 10420654                   /usr/sbin/postilion
Rss:                  68 kB
Anonymous:            60 kB
55d0c8d46000-55d0c8d48000 rw-p 00346000 fe:00 10420654                   /usr/sbin/postilion
Rss:                   8 kB
Anonymous:             8 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Rss:                  44 kB
Anonymous:            44 kB
7f0435500000-7f0435656000 r-xp 00026000 fe:00 326279                     /usr/lib/libc.so.6
Rss:                 960 kB
Anonymous:             0 kB
7f0435700000-7f0435701000 r-xp 00000000 fe:00 326280                     /usr/lib/gone.so (deleted)
Rss:                   4 kB
Anonymous:             0 kB
7f0435800000-7f0435801000 r--s 00000000 fe:00 326281                     /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7f0435900000-7f0435901000 r--p 00000000 fe:00 326282                     /usr/lib/no-anon-line
Rss:                   4 kB
7ffd1c5f6000-7ffd1c5f8000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_releasable() {
        let releasable: Vec<(String, String, u64)> = parse(SMAPS)
            .into_iter()
            .filter(Mapping::releasable)
            .map(|m| (m.path, m.perms, m.rss / 1024))
            .collect();
        assert_eq!(
            releasable,
            [
                ("/usr/sbin/postilion".into(), "r--p".into(), 416),
                ("/usr/sbin/postilion".into(), "r-xp".into(), 1668),
                ("/usr/lib/libc.so.6".into(), "r-xp".into(), 960),
            ]
        );
    }

    #[test]
    fn every_mapping_is_parsed_with_its_bounds() {
        let mappings = parse(SMAPS);
        assert_eq!(mappings.len(), 10);
        assert_eq!(mappings[1].start, 0x55d0c8af1000);
        assert_eq!(mappings[1].end, 0x55d0c8d35000);
        assert_eq!(mappings[4].path, "");
        assert_eq!(
            mappings[8].anonymous,
            u64::MAX,
            "no Anonymous line: private"
        );
    }

    /// In this very process: code and read-only data are given back, the process goes on
    /// running code from them and reading data (relocated data and the heap are untouched).
    #[test]
    fn release_unmaps_resident_code_and_the_process_goes_on() {
        let rss_file = || {
            let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            let line = status.lines().find_map(|l| l.strip_prefix("RssFile:"));
            let kib = line.and_then(|l| l.trim().strip_suffix(" kB")?.parse::<u64>().ok());
            kib.expect("RssFile in /proc/self/status")
        };
        let text = String::from("still here");
        let before = rss_file();
        let released = release().expect("/proc/self/smaps");
        let after = rss_file();
        assert!(released.mappings > 0, "{released:?}");
        assert!(released.bytes > 0, "{released:?}");
        // The test binary's code is megabytes; what other tests fault in meanwhile is less.
        assert!(after < before, "RssFile {before} KiB before, {after} KiB after");
        let formatted = format!("{text}: {}", released.mappings);
        assert!(formatted.starts_with("still here: "));
        let again = release().expect("/proc/self/smaps");
        assert!(again.mappings > 0);
    }
}
