//! Local delivery into a Maildir: write in `tmp/`, fsync, rename into `new/`, fsync `new/`.
//!
//! `Return-Path:` and `Delivered-To:` go on top, as Postfix's local(8) does, and line ends
//! become LF, as mail readers on the box expect. The Maildir's `tmp/`, `new/` and `cur/` are
//! made if missing. A file is in `new/` only when it is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A unique file name (time, pid, counter, host), as the Maildir convention has it.
fn unique_name(hostname: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname.replace(['/', ':'], "_")
    )
}

/// Delivers the queued `message` (CRLF line ends) into `maildir` with `headers` on top;
/// returns the file's path in `new/`.
pub fn deliver(
    maildir: &Path,
    hostname: &str,
    headers: &str,
    message: &Path,
) -> io::Result<PathBuf> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(maildir.join(sub))?;
    }
    let name = unique_name(hostname);
    let tmp = maildir.join("tmp").join(&name);
    let result = write(&tmp, headers, message).and_then(|()| {
        let new = maildir.join("new").join(&name);
        fs::rename(&tmp, &new)?;
        File::open(maildir.join("new"))?.sync_all()?;
        Ok(new)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write(path: &Path, headers: &str, message: &Path) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
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
        let path = deliver(
            &dir.join("alice"),
            "mx.test",
            "Return-Path: <a@b>\r\nDelivered-To: alice@x\r\n",
            &msg,
        )
        .unwrap();
        assert!(path.starts_with(dir.join("alice/new")));
        assert_eq!(
            fs::read(&path).unwrap(),
            b"Return-Path: <a@b>\nDelivered-To: alice@x\nSubject: x\n\nline\nbare\rcr\n"
        );
        assert_eq!(fs::read_dir(dir.join("alice/tmp")).unwrap().count(), 0);
        assert!(dir.join("alice/cur").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
