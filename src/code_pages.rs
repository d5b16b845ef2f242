//! Gives back the file pages that start-up, or mail since, mapped and the idle daemon does
//! not use.
//!
//! Almost all of the daemon's resident memory is file pages: code and read-only data of the
//! binary and libc. On every page fault in a file mapping the kernel maps up to 16 pages around
//! the one asked for (fault-around), and start-up runs code spread over the whole binary and
//! libc (configuration, recovery, TLS set-up...): by its end most of the binary's code and
//! much of libc's is mapped, counted in the resident set, though the idle daemon runs little
//! of it. A session or a delivery maps again the code it runs, and it stays mapped. So the
//! daemon unmaps those pages from itself (`madvise(MADV_DONTNEED)`) once started, and again
//! whenever it falls idle (a [`PERIOD`] with next to no page fault) after mapping pages
//! again. What runs afterwards maps again what it needs, from the page cache.
//! The pages stay in the page cache (shared, clean, and still charged to the service's memory
//! cgroup until the kernel frees them), no longer mapped by the daemon: unmapped clean cache
//! is what the kernel reclaims first.
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
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How often the daemon looks whether it fell idle.
pub const PERIOD: Duration = Duration::from_secs(10);
/// The most page faults a [`PERIOD`] may see for the daemon to count as idle in it: an idle
/// daemon's timers run code already mapped.
const QUIET: u64 = 2;
/// How much more must be mapped than the daemon settled at after the last release for another:
/// less than a session or a delivery maps.
const REGROWN: u64 = 512 * 1024;

/// The read-only private file mappings the loader made before `main`: where [`release`] may
/// act.
#[derive(Debug)]
pub struct Loaded(Vec<(usize, usize)>);

impl Loaded {
    /// Reads this process's mappings. Call it while the process runs one thread (before any
    /// is started, as at the top of `serve`): then every file mapping is the loader's (or an
    /// `LD_PRELOAD` library's constructor's, which must not unmap what it mapped).
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

/// Gives back now what start-up mapped; and starts a thread that, whenever the daemon falls
/// idle (a [`PERIOD`] with at most [`QUIET`] page faults) with [`REGROWN`] more mapped than it
/// settled at after the last release (the most in the `settle` time after it: its own timers,
/// the queue scan among them, map some code back), gives back what was mapped since. Call it
/// last before waiting: what runs after it maps its code again. Without `/proc`, nothing is
/// given back and a log line says so.
pub fn give_back(loaded: io::Result<Loaded>, settle: Duration) {
    let loaded = match loaded {
        Ok(loaded) => Arc::new(loaded),
        Err(e) => {
            log::info!("cannot read /proc/self/maps ({e}): start-up's pages stay mapped");
            return;
        }
    };
    let when_idle = Arc::clone(&loaded);
    // The thread's figures start after start-up's release, not before it; main never waits.
    let (released, start) = mpsc::channel::<()>();
    let spawned = thread::Builder::new()
        .name("pages".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if start.recv().is_err() {
                return;
            }
            let mut watch = IdleWatch::new(minor_faults());
            let mut baseline = Baseline::after_release(mapped(), settle, Instant::now());
            loop {
                thread::sleep(PERIOD);
                let quiet = watch.quiet(minor_faults());
                let Some(now) = mapped() else {
                    continue;
                };
                let after = Instant::now();
                let before = after.checked_sub(PERIOD).unwrap_or(after);
                let worth = baseline.look(now, quiet, after);
                if baseline.settling(before) && !baseline.settling(after) {
                    let bytes = baseline.bytes.unwrap_or(now);
                    log::debug!("pages: settled at {} KiB mapped", bytes / 1024);
                }
                if let Some(grown) = worth {
                    let why = format!(" ({} KiB mapped again since it settled)", grown / 1024);
                    release_and_log(&when_idle, "idle", &why);
                    watch.quiet(minor_faults());
                    baseline = Baseline::after_release(mapped(), settle, Instant::now());
                }
            }
        });
    release_and_log(&loaded, "start-up", "");
    match spawned {
        Ok(_) => {
            let _ = released.send(());
        }
        Err(e) => log::info!("cannot start the thread that gives back pages when idle: {e}"),
    }
}

/// What the daemon maps when idle since the last release: the most seen until `settled_at`,
/// then the least seen since (the kernel's reclaim may unmap pages too).
#[derive(Debug)]
struct Baseline {
    bytes: Option<u64>,
    settled_at: Instant,
}

impl Baseline {
    /// Just after a release, with `mapped` bytes mapped, settling for `settle`.
    fn after_release(mapped: Option<u64>, settle: Duration, now: Instant) -> Baseline {
        Baseline {
            bytes: mapped,
            settled_at: now + settle,
        }
    }

    /// Whether the baseline is still settling at `now`.
    fn settling(&self, now: Instant) -> bool {
        now < self.settled_at
    }

    /// A look at `mapped` bytes mapped now, after a `quiet` period or not: how much more than
    /// the baseline is mapped when that is worth a release ([`REGROWN`] or more, quiet, and
    /// settled).
    fn look(&mut self, mapped: u64, quiet: bool, now: Instant) -> Option<u64> {
        let base = self.bytes.unwrap_or(mapped);
        if now < self.settled_at {
            self.bytes = Some(base.max(mapped));
            return None;
        }
        let base = base.min(mapped);
        self.bytes = Some(base);
        let grown = mapped - base;
        (quiet && grown >= REGROWN).then_some(grown)
    }
}

/// Whether the daemon was idle in the last [`PERIOD`], from its page-fault count read once
/// every period.
#[derive(Debug)]
struct IdleWatch {
    /// The count at the last look (None: unreadable then).
    last: Option<u64>,
}

impl IdleWatch {
    fn new(faults: Option<u64>) -> IdleWatch {
        IdleWatch { last: faults }
    }

    /// A look, a [`PERIOD`] after the last one, with the count now: whether at most [`QUIET`]
    /// faults came since (not known, not quiet).
    fn quiet(&mut self, faults: Option<u64>) -> bool {
        let quiet = match (self.last, faults) {
            (Some(last), Some(now)) => now.saturating_sub(last) <= QUIET,
            _ => false,
        };
        self.last = faults.or(self.last);
        quiet
    }
}

/// The file pages mapped now (`RssFile` of `/proc/self/status`), in bytes.
fn mapped() -> Option<u64> {
    rss_file(&fs::read_to_string("/proc/self/status").ok()?)
}

/// `RssFile` of a `/proc/PID/status` text, in bytes.
fn rss_file(status: &str) -> Option<u64> {
    let kib = status.lines().find_map(|l| l.strip_prefix("RssFile:"))?;
    Some(kib.trim().strip_suffix(" kB")?.parse::<u64>().ok()? * 1024)
}

/// The minor page faults of this process so far: each one mapped a page, or a window of file
/// pages, that the process touched anew.
fn minor_faults() -> Option<u64> {
    minflt(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// `minflt`, field 10 of a `/proc/PID/stat` text.
fn minflt(stat: &str) -> Option<u64> {
    // After the command name (in parentheses, which may hold anything): state is field 3.
    let fields = stat.rsplit_once(')')?.1;
    fields.split_whitespace().nth(10 - 3)?.parse().ok()
}

/// Releases what `loaded` allows, saying first in a debug line what (`when`: "start-up" or
/// "idle", and `why`): said after, the line's own code would be mapped again.
fn release_and_log(loaded: &Loaded, when: &str, why: &str) {
    let mappings = match fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => releasable(&smaps, loaded),
        Err(e) => {
            log::info!("cannot read /proc/self/smaps ({e}): {when} pages stay mapped");
            return;
        }
    };
    log::debug!(
        "{when} pages given back: {} KiB from {} mappings{why}",
        mappings.iter().map(|m| m.rss).sum::<u64>() / 1024,
        mappings.len()
    );
    release(&mappings);
}

/// Unmaps the resident pages of `mappings`, chosen by [`releasable`] a moment ago. A mapping
/// madvise refuses (a locked one, say) stays as it is.
fn release(mappings: &[Mapping]) {
    for mapping in mappings {
        let len = mapping.end - mapping.start;
        // SAFETY: the range is a whole mapping the loader made before `main` (Loaded::now) and
        // is still one mapping of this process (read from /proc/self/smaps a moment ago); no
        // library is ever unloaded, so nothing else can be mapped there now. It is private,
        // file-backed, not writable and holds no anonymous page, resident or swapped out
        // (relocated data does, and MADV_DONTNEED would drop it): every page in it is the
        // file's content, never written by this process, and MADV_DONTNEED on such a mapping
        // only drops page-table entries, the next access reading the same bytes from the file
        // (as after the kernel's reclaim of a clean page, which may happen at any time anyway).
        // No Rust object's value changes, so no reference is invalidated. Outside the process's
        // own memory model: a debugger's breakpoint or a uprobe written into the range between
        // the smaps read and this call would be dropped (one present before is seen and the
        // mapping skipped); and a file that cannot be read again (truncated, or its disk gone)
        // faults with SIGBUS at the next access, as it would after reclaim.
        #[allow(unsafe_code)]
        let _refused = unsafe {
            rustix::mm::madvise(
                mapping.start as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }
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
    /// Read-only, private, backed by a file (not `[vdso]` or `[stack]`); a file replaced since
    /// (" (deleted)" after its path: an upgrade) included, its data kept as long as it is
    /// mapped.
    fn read_only_private_file(&self) -> bool {
        let perms = self.perms.as_bytes();
        perms.len() == 4 && perms[1] == b'-' && perms[3] == b'p' && self.path.starts_with('/')
    }

    /// Read-only private file mapping holding only the file's pages, and resident at all.
    fn releasable(&self) -> bool {
        self.read_only_private_file() && self.anonymous == 0 && self.swap == 0 && self.rss > 0
    }
}

/// The mappings of an smaps text, in order. A mapping whose Anonymous or Swap line is missing
/// or unreadable counts as holding private pages (never released); so does one followed by a
/// line that is neither a mapping's first line nor a `Key: value` line (an unreadable first
/// line, say), and the lines after that one are nobody's until the next first line.
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut attributing = false;
    for line in smaps.lines() {
        if let Some(mapping) = header(line) {
            mappings.push(mapping);
            attributing = true;
            continue;
        }
        let Some(mapping) = mappings.last_mut().filter(|_| attributing) else {
            continue;
        };
        let field = line.split_once(':');
        match field.filter(|(key, _)| !key.is_empty() && !key.contains(char::is_whitespace)) {
            Some((key, value)) => {
                let kib = || value.trim().strip_suffix(" kB")?.parse::<u64>().ok();
                match key {
                    "Rss" => mapping.rss = kib().map_or(0, |k| k * 1024),
                    "Anonymous" => mapping.anonymous = kib().map_or(u64::MAX, |k| k * 1024),
                    "Swap" => mapping.swap = kib().map_or(u64::MAX, |k| k * 1024),
                    _ => {}
                }
            }
            None => {
                mapping.anonymous = u64::MAX;
                attributing = false;
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
Size:               2320 kB
KernelPageSize:        4 kB
Rss:                1668 kB
Pss:                1668 kB
Pss_Dirty:             0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd ex mr mw me sd 
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
                ("/usr/lib/gone.so (deleted)".into(), "r-xp".into(), 4),
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
            [
                ("/usr/sbin/postilion".into(), "r--p".into(), 416),
                ("/usr/lib/gone.so (deleted)".into(), "r-xp".into(), 4),
            ]
        );
    }

    #[test]
    fn minflt_is_read_after_a_command_name_holding_parentheses() {
        let stat = "4242 (post (x) ilion) S 1 4242 4242 0 -1 4194560 1234 0 5 0 7 3";
        assert_eq!(minflt(stat), Some(1234));
        assert_eq!(minflt("4242 (postilion) S 1"), None);
        let own = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        assert!(minflt(&own).is_some_and(|n| n > 0), "{own}");
    }

    #[test]
    fn a_period_is_quiet_with_at_most_two_faults_and_unknown_is_not_quiet() {
        let mut watch = IdleWatch::new(Some(1000));
        assert!(watch.quiet(Some(1000)));
        assert!(watch.quiet(Some(1002)));
        assert!(!watch.quiet(Some(1005)), "3 faults");
        assert!(!watch.quiet(None), "unreadable");
        assert!(watch.quiet(Some(1006)), "against the last count read");
        let mut watch = IdleWatch::new(None);
        assert!(
            !watch.quiet(Some(1000)),
            "no count before: a first count is a baseline"
        );
        assert!(watch.quiet(Some(1000)));
    }

    #[test]
    fn the_baseline_settles_at_the_most_then_follows_the_least_and_growth_when_quiet_releases() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut base = Baseline::after_release(Some(1000 * 1024), Duration::from_secs(70), t0);
        // Settling: the timers' own code (the queue scan) maps 700 KiB back; never a release.
        assert_eq!(base.look(1200 * 1024, true, at(10)), None);
        assert_eq!(base.look(1700 * 1024, false, at(60)), None);
        assert_eq!(
            base.look(1700 * 1024, true, at(70)),
            None,
            "settled at 1700 KiB"
        );
        // The next scans map nothing new.
        assert_eq!(base.look(1700 * 1024, false, at(130)), None);
        // Mail: 2 MiB more; not while busy, then once quiet.
        assert_eq!(base.look(3748 * 1024, false, at(140)), None);
        assert_eq!(base.look(3748 * 1024, true, at(150)), Some(2048 * 1024));
        // Reclaim unmapped some: the baseline follows it down.
        let mut base = Baseline::after_release(Some(1700 * 1024), Duration::ZERO, t0);
        assert_eq!(base.look(1000 * 1024, true, at(10)), None);
        assert_eq!(base.look(1600 * 1024, true, at(20)), Some(600 * 1024));
        // Unknown at the release: the first look is the baseline.
        let mut base = Baseline::after_release(None, Duration::ZERO, t0);
        assert_eq!(base.look(5000 * 1024, true, at(10)), None);
        assert_eq!(base.look(5100 * 1024, true, at(20)), None);
    }

    #[test]
    fn rss_file_is_read_in_bytes() {
        let status =
            "Name:\tpostilion\nVmRSS:\t    1200 kB\nRssAnon:\t     300 kB\nRssFile:\t     900 kB\n";
        assert_eq!(rss_file(status), Some(900 * 1024));
        assert_eq!(rss_file("VmRSS:\t1 kB\n"), None);
        assert!(mapped().is_some_and(|b| b > 0));
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

    #[test]
    fn a_path_with_spaces_and_named_anonymous_memory_are_read_as_such() {
        let smaps = "\
7f0435900000-7f0435901000 r--p 00000000 fe:00 326282                     /opt/my lib/x.so
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435a00000-7f0435a01000 r--p 00000000 00:00 0                          [anon:glibc]
Rss:                   4 kB
Anonymous:             4 kB
Swap:                  0 kB
";
        let mappings = parse(smaps);
        assert_eq!(mappings[0].path, "/opt/my lib/x.so");
        assert!(mappings[0].releasable());
        assert_eq!(mappings[1].path, "[anon:glibc]");
        assert!(!mappings[1].releasable());
    }

    #[test]
    fn what_follows_an_unreadable_first_line_is_nobodys_and_the_mapping_before_is_kept() {
        let smaps = "\
7f0435900000-7f0435901000 r--p 00000000 fe:00 326282                     /usr/lib/a.so
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435a00000-7f0435a0100g r--p 00000000 fe:00 326283                     /usr/lib/b.so
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0435b00000-7f0435b01000 r--p 00000000 fe:00 326284                     /usr/lib/c.so
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
";
        let mappings = parse(smaps);
        assert_eq!(mappings.len(), 2);
        assert_eq!(mappings[0].path, "/usr/lib/a.so");
        assert!(!mappings[0].releasable(), "{:?}", mappings[0]);
        assert_eq!(mappings[1].path, "/usr/lib/c.so");
        assert!(mappings[1].releasable());
    }

    /// This very process's smaps: its code is releasable, and its relocated data, holding
    /// private pages, is not.
    #[test]
    fn in_this_process_code_is_releasable_and_relocated_data_is_not() {
        let smaps = fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mappings = parse(&smaps);
        let exe = fs::read_link("/proc/self/exe").expect("/proc/self/exe");
        let exe = exe.to_string_lossy();
        let ours: Vec<&Mapping> = mappings.iter().filter(|m| m.path == *exe).collect();
        assert!(
            ours.iter().any(|m| m.perms == "r-xp" && m.releasable()),
            "{ours:?}"
        );
        let relocated = ours.iter().filter(|m| m.perms == "r--p" && m.anonymous > 0);
        assert!(relocated.clone().count() > 0, "{ours:?}");
        assert!(relocated.clone().all(|m| !m.releasable()), "{ours:?}");
    }
}
