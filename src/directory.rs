//! Local recipients: the user directories under `mailbox_root` plus the names in `aliases`.
//!
//! A user is a plain directory: an entry that is a link, a file, a dot name (`.hidden`,
//! `.Trash`) or `lost+found` is not one. Kept in memory and reloaded when either changes (checked by modification time at each new
//! connection), so adding a user or an alias needs no restart.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::aliases;

pub struct Directory {
    mailbox_root: PathBuf,
    aliases: Option<PathBuf>,
    cache: Mutex<Cache>,
}

struct Cache {
    stamp: Stamp,
    /// Users and alias names, for RCPT checks.
    names: Arc<HashSet<String>>,
    table: Arc<LocalTable>,
}

/// Local users and aliases, for delivery.
#[derive(Debug, Default)]
pub struct LocalTable {
    /// Lower-case user name -> the name of the user's directory under `mailbox_root`.
    pub users: HashMap<String, String>,
    pub aliases: HashMap<String, Vec<String>>,
}

impl LocalTable {
    fn names(&self) -> HashSet<String> {
        self.users
            .keys()
            .chain(self.aliases.keys())
            .cloned()
            .collect()
    }
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

#[derive(Debug)]
pub struct DirectoryError(String);

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn modified(path: Option<&Path>) -> Option<SystemTime> {
    fs::metadata(path?).and_then(|m| m.modified()).ok()
}

impl Directory {
    /// Loads the names once; an aliases file that is set but unreadable or malformed is an error.
    pub fn load(mailbox_root: &Path, aliases: Option<&Path>) -> Result<Directory, DirectoryError> {
        let directory = Directory {
            mailbox_root: mailbox_root.into(),
            aliases: aliases.map(Into::into),
            cache: Mutex::new(Cache {
                stamp: (None, None),
                names: Arc::default(),
                table: Arc::default(),
            }),
        };
        let table = directory.read_table()?;
        if let Ok(mut cache) = directory.cache.lock() {
            *cache = Cache {
                stamp: directory.stamp(),
                names: Arc::new(table.names()),
                table: Arc::new(table),
            };
        }
        Ok(directory)
    }

    fn stamp(&self) -> Stamp {
        (
            modified(Some(&self.mailbox_root)),
            modified(self.aliases.as_deref()),
        )
    }

    /// Lower-case user and alias names, reloaded if the mailbox root or aliases file changed.
    pub fn names(&self) -> Arc<HashSet<String>> {
        self.refreshed(|cache| Arc::clone(&cache.names))
    }

    /// Users and aliases, reloaded as `names` is.
    pub fn table(&self) -> Arc<LocalTable> {
        self.refreshed(|cache| Arc::clone(&cache.table))
    }

    fn refreshed<T: Default>(&self, get: impl FnOnce(&Cache) -> T) -> T {
        let Ok(mut cache) = self.cache.lock() else {
            return T::default();
        };
        let stamp = self.stamp();
        if stamp != cache.stamp {
            match self.read_table() {
                Ok(table) => {
                    log::info!(
                        "local recipients reloaded: {} users, {} aliases",
                        table.users.len(),
                        table.aliases.len()
                    );
                    cache.names = Arc::new(table.names());
                    cache.table = Arc::new(table);
                }
                // Keep serving with what we had; say why once per change.
                Err(e) => log::error!("local recipients not reloaded: {e}"),
            }
            cache.stamp = stamp;
        }
        get(&cache)
    }

    fn read_table(&self) -> Result<LocalTable, DirectoryError> {
        let mut table = LocalTable::default();
        // A missing mailbox root simply means no users yet.
        if let Ok(entries) = fs::read_dir(&self.mailbox_root) {
            for entry in entries.flatten() {
                // The entry's own type: a link to a directory is a link.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(dir) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if is_user_dir(&dir) {
                    table.users.insert(dir.to_lowercase(), dir);
                }
            }
        }
        if let Some(path) = &self.aliases {
            let text = fs::read_to_string(path).map_err(|e| {
                DirectoryError(format!("cannot read aliases file {}: {e}", path.display()))
            })?;
            let aliases = aliases::parse(&text).map_err(|e| {
                DirectoryError(format!("{}:{}: {}", path.display(), e.line, e.what))
            })?;
            table.aliases = aliases.into_iter().map(|a| (a.name, a.targets)).collect();
        }
        Ok(table)
    }
}

/// Whether a directory of this name under the mailbox root is a user's: not `lost+found`
/// (made by mkfs on a mailbox file system) nor a dot name.
fn is_user_dir(name: &str) -> bool {
    !name.starts_with('.') && name != "lost+found"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_directories_and_aliases_add_names() {
        let dir = std::env::temp_dir().join(format!("postilion-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("mail/Alice")).unwrap();
        fs::write(dir.join("mail/not-a-user"), b"").unwrap();
        for not_a_user in ["lost+found", ".hidden", ".Trash"] {
            fs::create_dir(dir.join("mail").join(not_a_user)).unwrap();
        }
        std::os::unix::fs::symlink(dir.join("mail/Alice"), dir.join("mail/link")).unwrap();
        fs::write(dir.join("aliases"), "root: alice\n").unwrap();
        let d = Directory::load(&dir.join("mail"), Some(&dir.join("aliases"))).unwrap();
        let names = d.names();
        assert!(names.contains("alice") && names.contains("root"));
        assert!(!names.contains("not-a-user"));
        for not_a_user in ["lost+found", ".hidden", ".trash", "link"] {
            assert!(!names.contains(not_a_user), "{not_a_user}");
        }
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(d.table().aliases["root"], ["alice"]);
        assert_eq!(d.table().users["alice"], "Alice");
        fs::create_dir(dir.join("mail/bob")).unwrap();
        // The mailbox root's mtime changed with the new directory.
        assert!(d.names().contains("bob"));
        assert!(Directory::load(&dir.join("mail"), Some(&dir.join("missing"))).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
