//! Local delivery into a Maildir: write in `tmp/`, fsync, rename into `new/`, fsync `new/`.
//!
//! `Return-Path:` and `Delivered-To:` go on top, as Postfix's local(8) does, and line ends
//! become LF, as mail readers on the box expect. The Maildir's `tmp/`, `new/` and `cur/` are
//! made if missing. A file is in `new/` only when it is complete. The caller names the file,
//! one name per message and Maildir, so a repeated delivery can find the first one's copy,
//! in `new/` or, moved there by a mail reader (with `:2,S` flags added), in `cur/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Where the message is now.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    New(PathBuf),
    /// A file of that name was already there: nothing was written.
    AlreadyThere(PathBuf),
}

/// Delivers the queued `message` (CRLF line ends) into `maildir` as `name`, with `headers` on
/// top, unless a file of that name is in `new/` (or in `cur/`, when `look_in_cur`).
pub fn deliver(
    maildir: &Path,
    name: &str,
    headers: &str,
    message: &Path,
    look_in_cur: bool,
) -> io::Result<Written> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(maildir.join(sub))?;
    }
    let new = maildir.join("new").join(name);
    if fs::symlink_metadata(&new).is_ok() {
        return Ok(Written::AlreadyThere(new));
    }
    if look_in_cur {
        if let Some(found) = find_in_cur(maildir, name)? {
            return Ok(Written::AlreadyThere(found));
        }
    }
    let tmp = maildir.join("tmp").join(name);
    let result = write(&tmp, headers, message).and_then(|()| {
        fs::rename(&tmp, &new)?;
        File::open(maildir.join("new"))?.sync_all()?;
        Ok(Written::New(new))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A file in `cur/` that is `name` with the flags a reader adds (`:2,S`, or `,S=size`).
fn find_in_cur(maildir: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    for entry in fs::read_dir(maildir.join("cur"))? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(name)) else {
            continue;
        };
        if rest.is_empty() || rest.starts_with([':', ',']) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

fn write(path: &Path, headers: &str, message: &Path) -> io::Result<()> {
    // A leftover of an attempt cut short has the same name: start it over.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    out.write_all(headers.replace("\r\n", "\n").as_bytes())?;
    let mut input = File::open(message)?;
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

    #[test]
    fn delivers_into_new_with_headers_and_lf_line_ends() {
        let dir = std::env::temp_dir().join(format!("postilion-maildir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let msg = dir.join("msg");
        fs::write(&msg, b"Subject: x\r\n\r\nline\r\nbare\rcr\r\n").unwrap();
        let headers = "Return-Path: <a@b>\r\nDelivered-To: alice@x\r\n";
        let Written::New(path) =
            deliver(&dir.join("alice"), "1.M1P1Q1.mx", headers, &msg, false).unwrap()
        else {
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
        let first = deliver(&alice, "7.M1P1Q1.mx", "", &msg, false).unwrap();
        assert!(matches!(first, Written::New(_)));
        let again = deliver(&alice, "7.M1P1Q1.mx", "", &msg, false).unwrap();
        assert_eq!(again, Written::AlreadyThere(alice.join("new/7.M1P1Q1.mx")));
        // A reader moved it to cur/ and marked it seen.
        fs::rename(
            alice.join("new/7.M1P1Q1.mx"),
            alice.join("cur/7.M1P1Q1.mx:2,S"),
        )
        .unwrap();
        let again = deliver(&alice, "7.M1P1Q1.mx", "", &msg, true).unwrap();
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
            deliver(&alice, "7.M1P1Q1.mx", "", &msg, true).unwrap(),
            Written::New(_)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
