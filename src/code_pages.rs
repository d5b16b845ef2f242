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
//! Only what the loader mapped before `main` is touched: the binary's and its libraries' code
//! and read-only data, mapped for the life of the process (no library is ever unloaded), so
//! that nothing else can have been mapped in their place meanwhile (a mapping made later, such
//! as the binary's debug information read for a panic's backtrace, may come and go). Of those,
//! only mappings still read-only and private, holding no private (copied-on-write) page,
//! resident or swapped out: what they hold is exactly the file's content, which
//! `MADV_DONTNEED` reads again on the next access, as after the kernel's own reclaim of clean
//! pages. Relocated data (written at load, made read-only afterwards) is left alone.

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

/// The read-only private file mappings the loader made before `main`: where [`release`] may
/// act.
#[derive(Debug)]
pub struct Loaded(Vec<(usize, usize)>);

impl Loaded {
    /// Reads this process's mappings. Call it while the process runs one thread (before any
    /// is started, as at the top of `serve`): then every file mapping is the loader's.
    pub fn now() -> io::Result<Loaded> {
        Ok(Loaded::from_maps(&fs::read_to_string("/proc/self/maps")?))
    }

    /// The read-only private file mappings of a `/proc/PID/maps` text (or smaps: the same
    /// first lines).
    fn from_maps(maps: &str) -> Loaded {
        let mappings = maps.lines().filter_map(header);
        let loaded = mappings.filter(Mapping::read_only_private_file);
        Loaded(loaded.map(|m| (m.start, m.end)).collect())
    }
}

/// Unmaps the resident pages of every mapping in `loaded` that is still there, read-only and
/// private, and holds no private page. A mapping that cannot be released is skipped.
pub fn release(loaded: &Loaded) -> io::Result<Released> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in releasable(&smaps, loaded) {
        let len = mapping.end - mapping.start;
        // SAFETY: the range is a whole mapping the loader made before `main` (Loaded::now) and
        // is still one mapping of this process (read from /proc/self/smaps a moment ago); no
        // library is ever unloaded, so nothing else can be mapped there now. It is private,
        // file-backed, not writable and holds no anonymous page, resident or swapped out
        // (relocated data does, and MADV_DONTNEED would drop it): every page in it is the
        // file's content, never written by this process, and MADV_DONTNEED on such a mapping
        // only drops page-table entries, the next access reading the same bytes from the file
        // (as after the kernel's reclaim of a clean page, which may happen at any time anyway).
        // No Rust object's value changes, so no reference is invalidated.
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

/// The mappings of `smaps` that are in `loaded`, whole, and may be released.
fn releasable(smaps: &str, loaded: &Loaded) -> Vec<Mapping> {
    let mappings = parse(smaps).into_iter().filter(Mapping::releasable);
    mappings
        .filter(|m| loaded.0.contains(&(m.start, m.end)))
        .collect()
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
    /// Bytes of private (anonymous, copied-on-write) pages, resident.
    anonymous: u64,
    /// Bytes of private pages swapped out (a copied-on-write page may be).
    swap: u64,
}

impl Mapping {
    /// Read-only, private, backed by a file (not `[vdso]` or `[stack]`).
    fn read_only_private_file(&self) -> bool {
        let perms = self.perms.as_bytes();
        perms.len() == 4
            && perms[1] == b'-'
            && perms[3] == b'p'
            && self.path.starts_with('/')
            && !self.path.ends_with(" (deleted)")
    }

    /// Read-only private file mapping holding only the file's pages, and resident at all.
    fn releasable(&self) -> bool {
        self.read_only_private_file() && self.anonymous == 0 && self.swap == 0 && self.rss > 0
    }
}

/// The mappings of an smaps text, in order. A mapping whose Anonymous or Swap line is missing
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
                "Swap" => mapping.swap = kib().map_or(u64::MAX, |k| k * 1024),
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
        // Unknown until their lines are read: private until shown otherwise.
        anonymous: u64::MAX,
        swap: u64::MAX,
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
Swap:                  0 kB
55d0c8af1000-55d0c8d35000 r-xp 000f1000 fe:00 10420654                   /usr/sbin/postilion
Rss:                1668 kB
Anonymous:             0 kB
Swap:                  0 kB
55d0c8d35000-55d0c8d46000 r--p 00335000 fe:00 10420654                   /usr/sbin/postilion
Rss:                  68 kB
Anonymous:            60 kB
Swap:                  0 kB
55d0c8d46000-55d0c8d48000 rw-p 00346000 fe:00 10420654                   /usr/sbin/postilion
Rss:                   8 kB
Anonymous:             8 kB
Swap:                  0 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Rss:                  44 kB
Anonymous:            44 kB
Swap:                  0 kB
7f0435500000-7f0435656000 r-xp 00026000 fe:00 326279                     /usr/lib/libc.so.6
Rss:                 960 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435656000-7f0435660000 r--p 00170000 fe:00 326279                     /usr/lib/libc.so.6
Rss:                   8 kB
Anonymous:             0 kB
Swap:                 32 kB
7f0435700000-7f0435701000 r-xp 00000000 fe:00 326280                     /usr/lib/gone.so (deleted)
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435800000-7f0435801000 r--s 00000000 fe:00 326281                     /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435900000-7f0435901000 r--p 00000000 fe:00 326282                     /usr/lib/no-swap-line
Rss:                   4 kB
Anonymous:             0 kB
7ffd1c5f6000-7ffd1c5f8000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
";

    fn released(smaps: &str, loaded: &Loaded) -> Vec<(String, String, u64)> {
        let mappings = releasable(smaps, loaded).into_iter();
        mappings.map(|m| (m.path, m.perms, m.rss / 1024)).collect()
    }

    #[test]
    fn only_clean_read_only_private_file_mappings_are_releasable() {
        assert_eq!(
            released(SMAPS, &Loaded::from_maps(SMAPS)),
            [
                ("/usr/sbin/postilion".into(), "r--p".into(), 416),
                ("/usr/sbin/postilion".into(), "r-xp".into(), 1668),
                ("/usr/lib/libc.so.6".into(), "r-xp".into(), 960),
            ]
        );
    }

    #[test]
    fn only_what_the_loader_mapped_is_releasable_and_only_as_it_mapped_it() {
        // Mapped after the loader (as debug information read for a backtrace is): not the
        // loader's. And the binary's code now spans more than the loader mapped: not whole.
        let loaded: String = SMAPS
            .lines()
            .filter(|l| !l.contains("libc.so.6"))
            .map(|l| l.replace("55d0c8af1000-55d0c8d35000", "55d0c8af1000-55d0c8d34000"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            released(SMAPS, &Loaded::from_maps(&loaded)),
            [("/usr/sbin/postilion".into(), "r--p".into(), 416)]
        );
    }

    #[test]
    fn every_mapping_is_parsed_with_its_bounds() {
        let mappings = parse(SMAPS);
        assert_eq!(mappings.len(), 11);
        assert_eq!(mappings[1].start, 0x55d0c8af1000);
        assert_eq!(mappings[1].end, 0x55d0c8d35000);
        assert_eq!(mappings[4].path, "");
        assert_eq!(mappings[6].swap, 32 * 1024, "relocated data swapped out");
        assert_eq!(mappings[9].swap, u64::MAX, "no Swap line: private");
    }
}
