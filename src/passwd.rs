//! User and group lookups in `/etc/passwd` and `/etc/group`, read as files: a static binary
//! has no NSS modules to ask, and the daemon's own system user is always a local one.
//!
//! The parsers are pure (file text in, entries out); only `user_by_name` and `group_name`
//! read the files. As the C library's "files" source does, comment lines (`#`), blank lines
//! and malformed lines are skipped, and the first entry of a name or number wins. NIS
//! compatibility lines (`+name`, `-name`) are not users. Nothing here changes who we run as.

use std::fs;
use std::io;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// An entry of `/etc/passwd`: what switching to a user needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// The primary group; it need not be named in `/etc/group`.
    pub gid: u32,
}

/// The fields of one line of a colon-separated database, when it has exactly `count` of
/// them and a name; `None` for comments, blank lines and malformed lines.
fn fields(line: &str, count: usize) -> Option<Vec<&str>> {
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    let name = fields[0];
    let named = !name.is_empty()
        && !name.starts_with(['+', '-'])
        && !name.contains(|c: char| c.is_whitespace() || c.is_control());
    (fields.len() == count && named).then_some(fields)
}

/// A user or group id: decimal digits only (no sign, no spaces), fitting 32 bits, and not
/// 4294967295: that is -1, which the set*id calls read as "leave it as it is".
fn id(field: &str) -> Option<u32> {
    match field.bytes().all(|b| b.is_ascii_digit()) {
        true => field.parse().ok().filter(|&id| id != u32::MAX),
        false => None,
    }
}

/// One `name:password:uid:gid:gecos:home:shell` line.
fn parse_user(line: &str) -> Option<User> {
    let f = fields(line, 7)?;
    Some(User {
        name: f[0].to_string(),
        uid: id(f[2])?,
        gid: id(f[3])?,
    })
}

/// The first well-formed entry named `name` in the text of a passwd file.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    passwd
        .lines()
        .filter_map(parse_user)
        .find(|user| user.name == name)
}

/// The first well-formed entry with uid `uid` in the text of a passwd file.
pub fn find_user_by_uid(passwd: &str, uid: u32) -> Option<User> {
    passwd
        .lines()
        .filter_map(parse_user)
        .find(|user| user.uid == uid)
}

/// The name of group `gid` in the text of a group file (`name:password:gid:members` lines).
pub fn find_group_name(group: &str, gid: u32) -> Option<String> {
    group
        .lines()
        .filter_map(|line| fields(line, 4))
        .find(|f| id(f[2]) == Some(gid))
        .map(|f| f[0].to_string())
}

/// Looks `name` up in `/etc/passwd`; `Ok(None)` when it is not there.
pub fn user_by_name(name: &str) -> io::Result<Option<User>> {
    Ok(find_user(&fs::read_to_string(PASSWD)?, name))
}

/// Looks uid `uid` up in `/etc/passwd`; `Ok(None)` when no entry has it.
pub fn user_by_uid(uid: u32) -> io::Result<Option<User>> {
    Ok(find_user_by_uid(&fs::read_to_string(PASSWD)?, uid))
}

/// The name of group `gid` in `/etc/group`, if it has one there.
pub fn group_name(gid: u32) -> Option<String> {
    find_group_name(&fs::read_to_string(GROUP).ok()?, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_SAMPLE: &str = "\
# /etc/passwd of a test box
root:x:0:0:root:/root:/bin/bash

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
   
postilion:x:998:998:Postilion MTA:/var/spool/postilion:/usr/sbin/nologin
# a user whose primary group is only a number, named in no group line
numeric:x:1500:4242::/home/numeric:/bin/sh
too-few:x:1600:1600:/home/too-few
too-many:x:1601:1601:a:b:c:d
baduid:x:12a:100::/:/bin/sh
negative:x:-1:100::/:/bin/sh
spaced:x: 77:100::/:/bin/sh
huge:x:4294967296:100::/:/bin/sh
:x:1700:1700::/:/bin/sh
+nisuser:x:1800:1800::/:/bin/sh
-nisuser2::::::
postilion:x:1999:1999:a second entry, never used:/:/bin/sh
minus-one:x:4294967295:0::/:/bin/sh
big:x:4294967294:4294967294::/:/bin/sh
";

    const GROUP_SAMPLE: &str = "\
# /etc/group
root:x:0:
daemon:x:1:

postilion:x:998:
broken:x:12
mail:x:8:alice,bob
+nisgroup:x:4242:
";

    #[test]
    fn users_are_found_by_name_and_the_first_entry_wins() {
        assert_eq!(
            find_user(PASSWD_SAMPLE, "postilion"),
            Some(User {
                name: "postilion".into(),
                uid: 998,
                gid: 998
            })
        );
        assert_eq!(find_user(PASSWD_SAMPLE, "root").map(|u| u.uid), Some(0));
        assert_eq!(
            find_user(PASSWD_SAMPLE, "big").map(|u| (u.uid, u.gid)),
            Some((u32::MAX - 1, u32::MAX - 1))
        );
        assert_eq!(find_user(PASSWD_SAMPLE, "nobody"), None);
        assert_eq!(
            find_user(PASSWD_SAMPLE, "Postilion"),
            None,
            "names are exact"
        );
    }

    #[test]
    fn users_are_found_by_uid_and_the_first_entry_wins() {
        assert_eq!(
            find_user_by_uid(PASSWD_SAMPLE, 998).map(|u| u.name),
            Some("postilion".into())
        );
        assert_eq!(
            find_user_by_uid(PASSWD_SAMPLE, 0).map(|u| u.name),
            Some("root".into())
        );
        // Malformed and NIS lines name nobody.
        assert_eq!(find_user_by_uid(PASSWD_SAMPLE, 1800), None);
        assert_eq!(find_user_by_uid(PASSWD_SAMPLE, 1700), None);
        assert_eq!(find_user_by_uid(PASSWD_SAMPLE, 4242), None);
    }

    #[test]
    fn a_primary_group_named_nowhere_is_still_a_gid() {
        let user = find_user(PASSWD_SAMPLE, "numeric").unwrap();
        assert_eq!((user.uid, user.gid), (1500, 4242));
        // The only line with 4242 is a NIS line: no name for it.
        assert_eq!(find_group_name(GROUP_SAMPLE, 4242), None);
    }

    #[test]
    fn comments_blank_and_malformed_lines_are_skipped() {
        for name in [
            "too-few",
            "too-many",
            "baduid",
            "negative",
            "spaced",
            "huge",
            "minus-one",
            "",
            "+nisuser",
            "nisuser",
            "-nisuser2",
            "#",
            "# /etc/passwd of a test box",
        ] {
            assert_eq!(find_user(PASSWD_SAMPLE, name), None, "{name:?}");
        }
        assert_eq!(find_user("", "root"), None);
        assert_eq!(find_user("\n\n# only comments\n", "root"), None);
    }

    #[test]
    fn groups_are_named_by_number() {
        assert_eq!(
            find_group_name(GROUP_SAMPLE, 998).as_deref(),
            Some("postilion")
        );
        assert_eq!(find_group_name(GROUP_SAMPLE, 8).as_deref(), Some("mail"));
        assert_eq!(find_group_name(GROUP_SAMPLE, 0).as_deref(), Some("root"));
        // A line with three fields is malformed.
        assert_eq!(find_group_name(GROUP_SAMPLE, 12), None);
        assert_eq!(find_group_name(GROUP_SAMPLE, 7), None);
    }

    #[test]
    fn the_real_files_can_be_read() {
        // Every Linux box has root as uid 0, in /etc/passwd itself.
        let root = user_by_name("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
