//! The people who may log in with SMTP AUTH: the `users_file`, their password hashes, and
//! which sender addresses a login may use.
//!
//! One user a line, `name:hash` or `name:hash:addresses`; `#` starts a comment line and blank
//! lines are ignored:
//!
//! ```text
//! # made with `postilion passwd alice`
//! alice:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! # made elsewhere (`mkpasswd -m sha-512`, `doveadm pw -s SHA512-CRYPT`), two extra addresses
//! bob:$6$<salt>$<hash>:bob.smith@example.org, info@example.org
//! ```
//!
//! - `name` is the login name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a
//!   letter or digit. Names are case-insensitive and kept in lower case; the same name twice is
//!   an error. A login may send as `name@` each local domain.
//! - `hash` is an argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, what
//!   `postilion passwd` prints) or a SHA-512-crypt string (`$6$[rounds=N$]salt$hash`). A
//!   Dovecot scheme prefix (`{ARGON2ID}`, `{SHA512-CRYPT}`, `{CRYPT}`) is allowed when it names
//!   the same kind. Neither kind of hash contains `:` or white space, so `:` can separate
//!   the fields. Any other form (bcrypt, MD5-crypt, a plain-text password) is an error naming
//!   the line, never a user who silently cannot log in.
//! - `addresses`, optional: more addresses the login may use in `MAIL FROM`, `local@domain`,
//!   comma-separated (spaces around commas allowed), compared without regard to case.
//!
//! Costs are bounded, because anybody can make us check a password at will: argon2id at most
//! `m=262144` (256 MiB), `t=10`, `p=16`; SHA-512-crypt at most 1,000,000 rounds; a password at
//! most 1024 bytes. `postilion passwd` uses m=19456 KiB, t=2, p=1, OWASP's minimum for
//! argon2id: about 65 ms a check in a release build on a 2-core x86 virtual machine.
//!
//! Owns the file's format and checking passwords; pure apart from reading the file in `load`.
//! Must not log, print or `Debug`-format a password or a hash: errors name the file, the line
//! and what is wrong, never the hash.

// Until the AUTH command (issue 8) uses `Users`, only `postilion passwd` does.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::password_hash;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use sha_crypt::ShaCrypt;

use crate::smtp::address::{self, Mailbox};
use crate::stamp::Watch;

/// The argon2id cost of the hashes `postilion passwd` makes: 19 MiB of memory, two passes,
/// one lane (OWASP's minimum for argon2id, and the `argon2` crate's default).
pub const ARGON2_M_KIB: u32 = 19_456;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

/// The largest costs accepted in the file: each failed AUTH costs us one verification.
pub const MAX_ARGON2_M_KIB: u32 = 262_144;
pub const MAX_ARGON2_T: u32 = 10;
pub const MAX_ARGON2_P: u32 = 16;
pub const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;

/// The longest password accepted, in bytes. SHA-512-crypt's work grows with the square of
/// the password's length; RFC 4616 asks for 255 at least.
pub const MAX_PASSWORD_LEN: usize = 1024;

const MAX_NAME_LEN: usize = 64;

const PARAMS: Params = match Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None) {
    Ok(params) => params,
    Err(_) => panic!("argon2 parameters out of range"),
};

/// Checked against when a name is unknown, so that an unknown name costs what a wrong
/// password costs. Made by `postilion passwd` from a password nobody is told.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$n6NztjLwAijp9RKWV7flNQ$K+lJigisbaWQXhyCVjyWUyjdQvFWE/rFJYPUtK/kaNg";

/// The users file, loaded and checked.
#[derive(Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

struct User {
    hash: Hash,
    login: Login,
}

enum Hash {
    Argon2id(Box<PasswordHash>),
    Sha512Crypt(String),
}

/// Who logged in, and the addresses listed for them in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The login name, lower case.
    pub name: String,
    /// The file's extra addresses, `local@domain` in lower case, the local part unquoted.
    pub addresses: Vec<String>,
}

impl Login {
    /// May this login use `sender` in `MAIL FROM` (`sender_login_match`)? Yes for `name@` a
    /// local domain and for the addresses listed for it; case never matters, and a quoted
    /// local part counts as its unquoted form.
    pub fn may_send_as(&self, sender: &Mailbox, local_domains: &[String]) -> bool {
        // ASCII case only: a Kelvin sign is not a K.
        let local = sender.local_unquoted().to_ascii_lowercase();
        let domain = sender.domain.to_ascii_lowercase();
        if local == self.name
            && local_domains
                .iter()
                .any(|d| d.to_ascii_lowercase() == domain)
        {
            return true;
        }
        let address = format!("{local}@{domain}");
        self.addresses.contains(&address)
    }
}

impl Users {
    /// Reads and checks the users file; any line that is not right is an error naming it.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let bytes = std::fs::read(path).map_err(|error| UsersError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Users::parse(&bytes).map_err(|(line, problem)| UsersError::Line {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// Parses the file's contents; an error carries the line number.
    fn parse(bytes: &[u8]) -> Result<Users, (usize, LineProblem)> {
        let mut by_name: HashMap<String, User> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let line = std::str::from_utf8(line).map_err(|_| (number, LineProblem::NotUtf8))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, user) = parse_line(line).map_err(|problem| (number, problem))?;
            if let Some(&first) = first_line.get(&name) {
                return Err((number, LineProblem::DuplicateName { name, first }));
            }
            first_line.insert(name.clone(), number);
            by_name.insert(name, user);
        }
        Ok(Users { by_name })
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Checks a login. The name is case-insensitive. An unknown name costs one argon2id
    /// verification all the same, so that timing does not tell which names exist (a user with
    /// a SHA-512-crypt hash is quicker to check, so their names can still be told apart).
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<Login> {
        if password.len() > MAX_PASSWORD_LEN {
            return None;
        }
        match self.by_name.get(&name.to_ascii_lowercase()) {
            Some(user) if user.hash.verify(password) => Some(user.login.clone()),
            Some(_) => None,
            None => {
                let _ = Argon2::default().verify_password(password, DUMMY_HASH);
                None
            }
        }
    }
}

/// Never shows a hash.
/// The users file as it is now: re-read when it changes, so adding a user needs no restart.
/// A re-read that fails leaves no users until the file is fixed (a typo on one line must not
/// keep a user that was just removed); that is logged once per change.
pub struct UsersFile {
    path: PathBuf,
    loaded: Mutex<(Watch, Option<Arc<Users>>)>,
}

impl UsersFile {
    pub fn load(path: &Path) -> Result<UsersFile, UsersError> {
        let watch = Watch::new(&[path]);
        let users = Users::load(path)?;
        Ok(UsersFile {
            path: path.into(),
            loaded: Mutex::new((watch, Some(Arc::new(users)))),
        })
    }

    /// The users, read again first if the file changed; `None` while it cannot be used.
    pub fn get(&self) -> Option<Arc<Users>> {
        let mut loaded = self.loaded.lock().ok()?;
        if let Some(stamp) = loaded.0.due() {
            match Users::load(&self.path) {
                Ok(users) => {
                    log::info!(
                        "users re-read from {}: {} users",
                        self.path.display(),
                        users.len()
                    );
                    loaded.0.read_well(stamp);
                    loaded.1 = Some(Arc::new(users));
                }
                Err(e) => {
                    if loaded.0.read_failed(stamp) {
                        log::error!("users file cannot be used, AUTH refused until it is: {e}");
                    }
                    loaded.1 = None;
                }
            }
        }
        loaded.1.clone()
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

/// `name:hash[:addresses]`, already trimmed and not a comment.
fn parse_line(line: &str) -> Result<(String, User), LineProblem> {
    let mut fields = line.splitn(3, ':');
    let name = fields.next().unwrap_or_default().trim();
    let Some(hash) = fields.next().map(str::trim) else {
        return Err(LineProblem::NoHash);
    };
    let name = login_name(name).ok_or_else(|| LineProblem::BadName(name.to_string()))?;
    let hash = Hash::parse(hash)?;
    let addresses = match fields.next() {
        Some(list) => parse_addresses(list)?,
        None => Vec::new(),
    };
    let login = Login {
        name: name.clone(),
        addresses,
    };
    Ok((name, User { hash, login }))
}

/// The login name in lower case, if `name` is a valid one: 1 to 64 ASCII letters, digits,
/// `.`, `_` or `-`, starting with a letter or digit.
pub fn login_name(name: &str) -> Option<String> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    valid.then(|| name.to_ascii_lowercase())
}

/// `local@domain, ...`; empty means none.
fn parse_addresses(list: &str) -> Result<Vec<String>, LineProblem> {
    let list = list.trim();
    if list.is_empty() {
        return Ok(Vec::new());
    }
    if list.contains(':') {
        return Err(LineProblem::TooManyFields);
    }
    list.split(',')
        .map(str::trim)
        .map(|item| match address::parse_mailbox(item) {
            Ok(mailbox) => Ok(format!(
                "{}@{}",
                mailbox.local_unquoted().to_ascii_lowercase(),
                mailbox.domain.to_ascii_lowercase()
            )),
            Err(_) => Err(LineProblem::BadAddress(item.to_string())),
        })
        .collect()
}

impl Hash {
    /// `$argon2id$…` or `$6$…`, maybe after a Dovecot `{SCHEME}` naming the same kind.
    fn parse(text: &str) -> Result<Hash, LineProblem> {
        let (scheme, hash) = match text.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((scheme, hash)) => (Some(scheme), hash),
            None => (None, text),
        };
        let expected = match scheme.map(str::to_ascii_uppercase).as_deref() {
            None => None,
            Some("ARGON2ID") => Some("argon2id"),
            Some("SHA512-CRYPT" | "CRYPT") => Some("6"),
            Some(_) => return Err(LineProblem::UnknownScheme(shown_scheme(scheme, None))),
        };
        let Some(id) = hash
            .strip_prefix('$')
            .map(|rest| rest.split('$').next().unwrap_or(""))
        else {
            return Err(LineProblem::NotAHash);
        };
        if expected.is_some_and(|expected| expected != id) {
            return Err(LineProblem::UnknownScheme(shown_scheme(scheme, Some(id))));
        }
        match id {
            "argon2id" => parse_argon2id(hash),
            "6" => parse_sha512_crypt(hash),
            _ => Err(LineProblem::UnknownScheme(shown_scheme(None, Some(id)))),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Argon2id(hash) => Argon2::default().verify_password(password, &**hash).is_ok(),
            Hash::Sha512Crypt(hash) => ShaCrypt::SHA512
                .verify_password(password, hash.as_str())
                .is_ok(),
        }
    }
}

/// `{SCHEME}$id$` for an error message. Only what looks like a scheme name is shown, so that
/// a broken hash never appears in a log.
fn shown_scheme(scheme: Option<&str>, id: Option<&str>) -> String {
    let name = |text: &str| {
        let looks_like_a_name = (1..=16).contains(&text.len())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if looks_like_a_name {
            text.to_string()
        } else {
            "…".to_string()
        }
    };
    let mut shown = String::new();
    if let Some(scheme) = scheme {
        shown.push_str(&format!("{{{}}}", name(scheme)));
    }
    if let Some(id) = id {
        shown.push_str(&format!("${}$", name(id)));
    }
    shown
}

/// A name from the file for an error message: at most 64 characters, nothing unprintable.
fn printable(text: &str) -> String {
    text.chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `$argon2id$v=19$m=M,t=T,p=P$salt$hash`, with costs within our bounds.
fn parse_argon2id(text: &str) -> Result<Hash, LineProblem> {
    let bad = |why: &str| LineProblem::BadHash(format!("argon2id: {why}"));
    let hash = PasswordHash::new(text).map_err(|e| bad(&e.to_string()))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(bad("not argon2id"));
    }
    if hash.version != Some(0x13) {
        return Err(bad("the version must be v=19"));
    }
    let mut names: Vec<String> = hash
        .params
        .iter()
        .map(|(name, _)| name.as_str().to_string())
        .collect();
    names.sort_unstable();
    if names != ["m", "p", "t"] {
        return Err(bad("the parameters must be m=…,t=…,p=…"));
    }
    let params = Params::try_from(&hash).map_err(|e| bad(&e.to_string()))?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m > MAX_ARGON2_M_KIB || t > MAX_ARGON2_T || p > MAX_ARGON2_P {
        return Err(LineProblem::CostTooHigh(format!(
            "argon2id m={m},t={t},p={p} is more than m={MAX_ARGON2_M_KIB},t={MAX_ARGON2_T},p={MAX_ARGON2_P}"
        )));
    }
    match &hash.salt {
        Some(salt) if salt.as_ref().len() >= argon2::MIN_SALT_LEN => {}
        _ => return Err(bad("no salt, or one shorter than 8 bytes")),
    }
    if hash.hash.is_none() {
        return Err(bad("no hash after the salt"));
    }
    Ok(Hash::Argon2id(Box::new(hash)))
}

/// `$6$[rounds=N$]salt$hash`: a salt of 1 to 16 characters and an 86-character hash.
fn parse_sha512_crypt(text: &str) -> Result<Hash, LineProblem> {
    const SYNTAX: &str = "SHA-512-crypt: expected $6$[rounds=N$]salt$hash";
    let bad = |why: &str| LineProblem::BadHash(why.to_string());
    let fields: Vec<&str> = text.split('$').skip(2).collect();
    let (rounds, salt, digest) = match fields.as_slice() {
        [rounds, salt, digest] => {
            let rounds = rounds
                .strip_prefix("rounds=")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| bad(SYNTAX))?;
            (rounds, *salt, *digest)
        }
        [salt, digest] => (5000, *salt, *digest),
        _ => return Err(bad(SYNTAX)),
    };
    if rounds < 1000 {
        return Err(bad("SHA-512-crypt: fewer than 1000 rounds"));
    }
    if rounds > MAX_SHA_CRYPT_ROUNDS {
        return Err(LineProblem::CostTooHigh(format!(
            "SHA-512-crypt rounds={rounds} is more than {MAX_SHA_CRYPT_ROUNDS}"
        )));
    }
    let salt_char = |c: char| c.is_ascii_alphanumeric() || "./+=,-".contains(c);
    if salt.is_empty()
        || salt.len() > 16
        || !salt.chars().all(salt_char)
        || salt.starts_with("rounds=")
    {
        return Err(bad(
            "SHA-512-crypt: the salt must be 1 to 16 of A-Z a-z 0-9 . / + = , -",
        ));
    }
    let crypt_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if digest.len() != 86 || !digest.chars().all(crypt_char) {
        return Err(bad("SHA-512-crypt: the hash must be 86 of A-Z a-z 0-9 . /"));
    }
    Ok(Hash::Sha512Crypt(text.to_string()))
}

/// Hashes a password for the users file: argon2id with a fresh random salt and the costs
/// above.
pub fn hash_password(password: &[u8]) -> Result<String, password_hash::Error> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS);
    Ok(argon2.hash_password(password)?.to_string())
}

/// Why a password given to `postilion passwd` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPassword {
    Empty,
    TooLong,
    /// A NUL, CR or other control character: no SASL client could send it, or it is a mistake.
    ControlCharacter,
}

impl fmt::Display for BadPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadPassword::Empty => f.write_str("the password is empty"),
            BadPassword::TooLong => {
                write!(f, "the password is longer than {MAX_PASSWORD_LEN} bytes")
            }
            BadPassword::ControlCharacter => f.write_str("the password has a control character"),
        }
    }
}

/// The password in a line read from standard input: the line without its `\n` or `\r\n`.
/// Spaces are kept, they may be part of the password.
pub fn password_from_line(line: &[u8]) -> Result<&[u8], BadPassword> {
    let password = line.strip_suffix(b"\n").unwrap_or(line);
    let password = password.strip_suffix(b"\r").unwrap_or(password);
    if password.is_empty() {
        Err(BadPassword::Empty)
    } else if password.len() > MAX_PASSWORD_LEN {
        Err(BadPassword::TooLong)
    } else if password.iter().any(|&b| b < b' ' || b == 0x7f) {
        Err(BadPassword::ControlCharacter)
    } else {
        Ok(password)
    }
}

/// The users file could not be used.
#[derive(Debug)]
pub enum UsersError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with a line of the users file. Never holds a hash or a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineProblem {
    NotUtf8,
    /// No `:` after the name.
    NoHash,
    /// A fourth field, as in Dovecot's `passwd-file` lines (`name:hash:uid:gid:...`).
    TooManyFields,
    BadName(String),
    DuplicateName {
        name: String,
        first: usize,
    },
    /// Not even the `$` of a hash: perhaps a plain-text password.
    NotAHash,
    /// The scheme we do not know, as `$id$` or `{SCHEME}`.
    UnknownScheme(String),
    BadHash(String),
    CostTooHigh(String),
    BadAddress(String),
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NotUtf8 => f.write_str("not UTF-8 text"),
            LineProblem::NoHash => f.write_str("expected 'name:hash' or 'name:hash:addresses'"),
            LineProblem::TooManyFields => f.write_str(
                "more than 3 fields: expected 'name:hash' or 'name:hash:addresses'",
            ),
            LineProblem::BadName(name) => write!(
                f,
                "'{}' is not a login name (1 to 64 letters, digits, '.', '_', '-')",
                printable(name)
            ),
            LineProblem::DuplicateName { name, first } => {
                write!(f, "user '{name}' again (first on line {first})")
            }
            LineProblem::NotAHash => f.write_str(
                "not a password hash (plain-text passwords are not accepted; use 'postilion passwd')",
            ),
            LineProblem::UnknownScheme(scheme) => write!(
                f,
                "unsupported hash scheme '{scheme}' (use argon2id from 'postilion passwd', or SHA-512-crypt '$6$')"
            ),
            LineProblem::BadHash(why) => write!(f, "bad hash: {why}"),
            LineProblem::CostTooHigh(why) => write!(f, "hash too costly to check: {why}"),
            LineProblem::BadAddress(address) => {
                write!(f, "'{address}' is not an address (local@domain)")
            }
        }
    }
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            UsersError::Line {
                path,
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
        }
    }
}

impl std::error::Error for UsersError {}

#[cfg(test)]
#[path = "users_tests.rs"]
mod tests;
