//! `sendmail` (a link to postilion, or `postilion sendmail`): reads a message on standard
//! input and leaves it in `spool/maildrop/` for the daemon, which need not be running. Runs as
//! the caller with no privilege: nothing here is set-uid and nothing talks to the daemon.
//!
//! The flags are sendmail's (parsed by hand: `-oi`, `-faddr`, `-f addr`, clusters as `-ti`);
//! the configuration is read only to find the spool (`-C FILE`, else `POSTILION_CONFIG`, else
//! `/etc/postilion.conf` if it exists, else the defaults). The file (`maildrop.rs` has its
//! format) is written as `maildrop/.ID.tmp`, fsync'd, renamed to `maildrop/ID`, then the file
//! system is synced (`syncfs`: the caller may not open the directory to fsync it), and only
//! then does sendmail exit 0 (`syncfs` flushes the whole file system, not only this file; if it
//! fails, the file is removed again and sendmail exits 75, so that a caller that retries
//! does not send twice; if the daemon has taken it in already, it is the daemon's, which
//! syncs what it takes, and sendmail exits 0). The file is mode 0644 because the daemon, another uid, must read
//! it; that discloses nothing: `maildrop/` (1733) cannot be listed by others and the name has
//! a random part, so nobody else can find it. Who sent it is the file's owner, which the
//! caller cannot choose.
//!
//! Before writing, the message is checked as the daemon will check it (`maildrop.rs` holds
//! the shared rules): the caller's uid in `/etc/passwd`, the recipients (valid, with `-t`
//! those of the header too, at most `max_recipients`), the size with CRLF line ends, a header
//! section of at most 64 KiB; so that mail the daemon would only quarantine is refused here,
//! where someone sees it. Exit codes follow sysexits.h, with one line on standard error.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, RawConfig};
use crate::maildrop::{self, Crlf, RecipientError, Submission, MAX_HEADER};
use crate::passwd;
use crate::sysexits::{EX_CONFIG, EX_DATAERR, EX_IOERR, EX_NOUSER, EX_TEMPFAIL, EX_USAGE};

/// The configuration file read when neither `-C` nor `POSTILION_CONFIG` names one.
const DEFAULT_CONFIG: &str = "/etc/postilion.conf";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub submission: Submission,
    /// `-i`/`-oi`: a line with a single `.` does not end the message.
    pub ignore_dots: bool,
    /// `-C FILE`.
    pub config: Option<PathBuf>,
}

/// A failure: its sysexits.h code and its line.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure(pub u8, pub String);

/// Flags that take a value (given as `-fVALUE` or `-f VALUE`); those not used are accepted
/// and ignored: `-N` DSN notify, `-R` return, `-V` envelope id, `-B` body type, `-L` label,
/// `-h` hop count, `-O` option, `-X` log file, `-p` protocol.
const WITH_VALUE: &str = "fFrCNRVBLhOXpob";
/// Flags that are accepted and do nothing here: `-v` verbose, `-U` initial submission,
/// `-m` me too, `-n` no aliasing, `-A` (`-Am`, `-Ac`), `-G`.
const NO_OPS: &str = "vUmnAG";

/// Parses sendmail's flags; an error is the usage line to print.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut invocation = Invocation::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            invocation
                .submission
                .recipients
                .extend(args[i..].iter().cloned());
            break;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            invocation.submission.recipients.push(arg.clone());
            continue;
        };
        for (at, flag) in cluster.char_indices() {
            if WITH_VALUE.contains(flag) {
                let attached = &cluster[at + flag.len_utf8()..];
                let value = if !attached.is_empty() {
                    attached.to_string()
                } else if let Some(next) = args.get(i) {
                    i += 1;
                    next.clone()
                } else {
                    return Err(format!("option -{flag} needs a value"));
                };
                apply(&mut invocation, flag, value)?;
                break;
            }
            match flag {
                't' => invocation.submission.extract = true,
                'i' => invocation.ignore_dots = true,
                'A' | 'G' if at == 0 => break,
                _ if NO_OPS.contains(flag) => {}
                'q' => return Err("-q: the queue is run by the daemon".into()),
                _ => return Err(format!("unknown option -{flag}")),
            }
        }
    }
    // A recipient named twice is one recipient, and one `Rcpt:` line (the daemon bounds the
    // lines it reads).
    let mut seen = std::collections::HashSet::new();
    invocation
        .submission
        .recipients
        .retain(|rcpt| seen.insert(rcpt.clone()));
    Ok(invocation)
}

fn apply(invocation: &mut Invocation, flag: char, value: String) -> Result<(), String> {
    match flag {
        'f' | 'r' => invocation.submission.sender = Some(value),
        'F' => invocation.submission.full_name = Some(value),
        'C' => invocation.config = Some(PathBuf::from(value)),
        // -oi is -i; -oem, -odi, -oQ and other old -o options change nothing here.
        'o' if value == "i" => invocation.ignore_dots = true,
        'o' => {}
        // -bm (the default: deliver mail) and -bs... only -bm is done.
        'b' if value == "m" => {}
        'b' if value == "p" => return Err("-bp: use 'mailq' or look in spool/queue/".into()),
        'b' => return Err(format!("-b{value}: only -bm (read a message) is supported")),
        _ => {}
    }
    Ok(())
}

/// Reads the message from `input`: at most `limit` bytes; without `ignore_dots` a line with
/// a single `.` ends it, as sendmail does.
pub fn read_message(
    input: &mut impl BufRead,
    ignore_dots: bool,
    limit: u64,
) -> Result<Vec<u8>, Failure> {
    let mut message = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let room = (limit + 1).saturating_sub(message.len() as u64);
        let read = input
            .by_ref()
            .take(room)
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure(EX_IOERR, format!("cannot read the message: {e}")))?;
        if read == 0 {
            break;
        }
        if !ignore_dots && matches!(line.as_slice(), b".\n" | b".\r\n" | b".") {
            break;
        }
        message.extend_from_slice(&line);
        if message.len() as u64 > limit {
            return Err(Failure(
                EX_DATAERR,
                format!("message too big: more than message_size_limit, {limit} bytes"),
            ));
        }
    }
    Ok(message)
}

/// `sendmail ARGS`: the exit code, after one line on standard error if it failed.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, line)) => {
            eprintln!("sendmail: {line}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &[String]) -> Result<(), Failure> {
    let invocation = parse_args(args).map_err(|e| {
        Failure(
            EX_USAGE,
            format!(
                "{e} (usage: sendmail [-t] [-i] [-f sender] [-F name] [-C file] [recipient ...])"
            ),
        )
    })?;
    let config_file = invocation
        .config
        .clone()
        .or_else(|| std::env::var_os("POSTILION_CONFIG").map(PathBuf::from))
        .or_else(|| {
            Path::new(DEFAULT_CONFIG)
                .exists()
                .then(|| DEFAULT_CONFIG.into())
        });
    let mut raw = RawConfig::default();
    if let Some(path) = &config_file {
        let text = fs::read_to_string(path)
            .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", path.display())))?;
        raw.read_file(path, &text)
            .map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    }
    let config = raw
        .build(&crate::system_hostname())
        .map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    let submission = &invocation.submission;
    let usage = |what: String| Failure(EX_USAGE, what);
    if let Some(sender) = &submission.sender {
        if !maildrop::one_line(sender) {
            return Err(usage("-f: control characters in the sender".into()));
        }
        maildrop::sender(sender, &config.hostname).map_err(|e| usage(format!("-f {e}")))?;
    }
    if let Some(name) = &submission.full_name {
        if !maildrop::one_line(name) {
            return Err(usage("-F: control characters in the name".into()));
        }
    }
    for rcpt in &submission.recipients {
        if !maildrop::one_line(rcpt) {
            return Err(usage("control characters in a recipient".into()));
        }
        maildrop::recipient(rcpt, &config.hostname)
            .map_err(|e| usage(format!("bad recipient {e}")))?;
    }
    if submission.recipients.is_empty() && !submission.extract {
        return Err(usage(
            "no recipients given (name them, or -t to read To:, Cc: and Bcc:)".into(),
        ));
    }
    // The effective uid: it owns the file written, and the daemon goes by the owner.
    check_caller(&config, rustix::process::geteuid().as_raw())?;
    let message = read_message(
        &mut io::stdin().lock(),
        invocation.ignore_dots,
        config.message_size_limit,
    )?;
    check_message(submission, &message, &config)?;
    let dir = config.spool.join("maildrop");
    write_maildrop(&dir, submission, &message).map_err(|e| {
        Failure(
            EX_TEMPFAIL,
            format!(
                "cannot write to {}: {e} (postilion makes it at its first start)",
                dir.display()
            ),
        )
    })
}

/// The daemon takes a file only from a user in `/etc/passwd` whose login makes an address,
/// and not from its own user (unless root).
fn check_caller(config: &Config, uid: u32) -> Result<(), Failure> {
    let user = passwd::user_by_uid(uid)
        .map_err(|e| Failure(EX_TEMPFAIL, format!("cannot read {}: {e}", passwd::PASSWD)))?
        .ok_or_else(|| {
            Failure(
                EX_NOUSER,
                format!(
                    "your uid {uid} is not in {}: mail from it is not taken",
                    passwd::PASSWD
                ),
            )
        })?;
    maildrop::mailbox(&user.name, &config.hostname)
        .map_err(|e| Failure(EX_NOUSER, format!("your login name is no address: {e}")))?;
    let daemon = passwd::user_by_name(&config.user).ok().flatten();
    if uid != 0 && daemon.is_some_and(|daemon| daemon.uid == uid) {
        return Err(Failure(
            EX_NOUSER,
            format!(
                "{} is the daemon's own user: mail from it is not taken",
                user.name
            ),
        ));
    }
    Ok(())
}

/// Checks `message` as the daemon will: its size with CRLF line ends, its header section,
/// and the recipients (with `-t`, those of the header too).
fn check_message(submission: &Submission, message: &[u8], config: &Config) -> Result<(), Failure> {
    let data = |what: String| Failure(EX_DATAERR, what);
    let mut converter = Crlf::default();
    let (mut head, mut converted, mut size) = (Vec::new(), Vec::new(), 0u64);
    // In pieces, as the daemon reads it: the header section, and the size.
    for piece in message.chunks(64 * 1024).map(Some).chain([None]) {
        converted.clear();
        match piece {
            Some(piece) => converter.convert(piece, &mut converted),
            None => converter.finish(&mut converted),
        }
        size += converted.len() as u64;
        if maildrop::header_end(&head).is_none() && head.len() <= MAX_HEADER {
            head.extend_from_slice(&converted);
        }
    }
    let limit = config.message_size_limit;
    if size > limit {
        return Err(data(format!(
            "message too big: {size} bytes with CRLF line ends, more than message_size_limit, \
             {limit} bytes"
        )));
    }
    if maildrop::header_end(&head).unwrap_or(head.len()) > MAX_HEADER {
        return Err(data(format!("a header section over {MAX_HEADER} bytes")));
    }
    let (in_header, _) = maildrop::extract_recipients(&head);
    let hostname = &config.hostname;
    let from_header = submission.extract;
    match maildrop::recipients(submission, &in_header, hostname, config.max_recipients) {
        Ok(found) => match found.invalid.first() {
            Some(bad) => Err(data(format!("-t: bad recipient {bad} in the header"))),
            None => Ok(()),
        },
        Err(RecipientError::NoneValid) => Err(data(match in_header.first() {
            Some(bad) => format!(
                "-t: no valid recipient in To:, Cc: or Bcc: ({})",
                maildrop::recipient(bad, hostname).err().unwrap_or_default()
            ),
            None => "-t: no recipients in To:, Cc: or Bcc:".into(),
        })),
        Err(e) => Err(Failure(
            if from_header { EX_DATAERR } else { EX_USAGE },
            e.to_string(),
        )),
    }
}

/// Writes `.ID.tmp`, syncs it, renames it to `ID` and syncs the file system.
fn write_maildrop(dir: &Path, submission: &Submission, message: &[u8]) -> io::Result<()> {
    let id = crate::spool::new_id();
    let (tmp, done) = (dir.join(format!(".{id}.tmp")), dir.join(&id));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc_o_nofollow())
            .mode(0o644)
            .open(&tmp)?;
        // The caller's umask may have taken the daemon's read permission away.
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o644))?;
        file.write_all(submission.header_text().as_bytes())?;
        file.write_all(message)?;
        file.sync_all()?;
        fs::rename(&tmp, &done)?;
        if let Err(e) = rustix::fs::syncfs(&file) {
            // Not known to be durable, so not acknowledged: a caller that retries must not
            // send it twice. Gone already, it is the daemon's (it syncs what it takes in).
            return match fs::remove_file(&done) {
                Err(gone) if gone.kind() == io::ErrorKind::NotFound => Ok(()),
                _ => Err(e.into()),
            };
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `O_NOFOLLOW`, for `custom_flags`.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn usual_flags() {
        let inv = parse_args(&args("-oi -odi -oem -v -U -f ann@x.test -F Ann bob carol")).unwrap();
        assert!(inv.ignore_dots && !inv.submission.extract);
        assert_eq!(inv.submission.sender.as_deref(), Some("ann@x.test"));
        assert_eq!(inv.submission.full_name.as_deref(), Some("Ann"));
        assert_eq!(inv.submission.recipients, ["bob", "carol"]);
        let twice = parse_args(&args("bob carol bob")).unwrap();
        assert_eq!(twice.submission.recipients, ["bob", "carol"]);
        let inv = parse_args(&args("-ti -fann@x.test -Cconf -- -odd")).unwrap();
        assert!(inv.ignore_dots && inv.submission.extract);
        assert_eq!(inv.submission.sender.as_deref(), Some("ann@x.test"));
        assert_eq!(inv.config, Some(PathBuf::from("conf")));
        assert_eq!(inv.submission.recipients, ["-odd"]);
        let inv = parse_args(&args("-bm -Am -N never -r <> x")).unwrap();
        assert_eq!(inv.submission.sender.as_deref(), Some("<>"));
        assert_eq!(inv.submission.recipients, ["x"]);
    }

    #[test]
    fn unknown_or_incomplete_flags_are_usage_errors() {
        assert_eq!(
            parse_args(&args("-Z bob")).unwrap_err(),
            "unknown option -Z"
        );
        assert_eq!(
            parse_args(&args("-f")).unwrap_err(),
            "option -f needs a value"
        );
        assert!(parse_args(&args("-bp")).is_err());
        assert!(parse_args(&args("-bi")).is_err());
        assert!(parse_args(&args("-q")).is_err());
    }

    #[test]
    fn a_dot_line_ends_the_message_unless_i() {
        let input = b"Subject: x\n\nbody\n.\nafter\n";
        let read = |ignore, limit| read_message(&mut &input[..], ignore, limit);
        assert_eq!(read(false, 1000).unwrap(), b"Subject: x\n\nbody\n");
        assert_eq!(read(true, 1000).unwrap(), input);
        assert_eq!(
            read_message(&mut &b"a\r\n.\r\nb"[..], false, 100).unwrap(),
            b"a\r\n"
        );
        assert_eq!(read(true, 10).unwrap_err().0, EX_DATAERR);
        assert_eq!(read(true, input.len() as u64).unwrap(), input);
    }
}
