//! Where a recipient goes: local users (after aliases) or remote mailboxes. Pure: the caller
//! passes the local domains and the user/alias table.
//!
//! Aliases expand recursively, at most `MAX_DEPTH` deep; a name seen twice on one path is a
//! loop and goes nowhere more. An alias that lists itself means the user of that name, as in
//! Postfix (`alice: alice, alice@elsewhere.example`).

use std::collections::HashSet;

use crate::directory::LocalTable;
use crate::smtp::address::{self, ForwardPath, Mailbox};

const MAX_DEPTH: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// A Maildir under `mailbox_root`; the name is lower-case.
    Local(String),
    Remote(Mailbox),
}

/// The routes of one recipient, and what went wrong on the way (unknown names, loops).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    pub routes: Vec<Route>,
    pub problems: Vec<String>,
}

/// The address under which an alias target's Maildir is a recipient: `user@domain`, quoted
/// if the user name needs it; the alias's own address if even that is not an address.
pub fn local_address(user: &str, domain: &str, alias: &ForwardPath) -> ForwardPath {
    let quoted = format!("\"{}\"", user.replace('\\', "\\\\").replace('"', "\\\""));
    [user.to_string(), quoted]
        .iter()
        .find_map(|local| recipient(&format!("{local}@{domain}")))
        .map_or_else(|| alias.clone(), ForwardPath::Mailbox)
}

/// `address` as a mailbox that an envelope's `Rcpt:` line can hold (a whole path of at most
/// 256 characters, RFC 5321 4.5.3.1.3), or `None`.
fn recipient(address: &str) -> Option<Mailbox> {
    match address::parse_forward_path(&format!("<{address}>")) {
        Ok((ForwardPath::Mailbox(mailbox), "")) => Some(mailbox),
        _ => None,
    }
}

pub fn is_local(domain: &str, local_domains: &[String]) -> bool {
    local_domains.contains(&domain.to_lowercase())
}

pub fn resolve(rcpt: &ForwardPath, local_domains: &[String], table: &LocalTable) -> Expansion {
    let mut expansion = Expansion::default();
    match rcpt {
        ForwardPath::Postmaster => expand(
            "postmaster",
            0,
            &mut Vec::new(),
            local_domains,
            table,
            &mut expansion,
        ),
        ForwardPath::Mailbox(m) if is_local(&m.domain, local_domains) => {
            let name = m.local_unquoted().to_lowercase();
            expand(
                &name,
                0,
                &mut Vec::new(),
                local_domains,
                table,
                &mut expansion,
            )
        }
        ForwardPath::Mailbox(m) => expansion.routes.push(Route::Remote(m.clone())),
    }
    let postmaster = match rcpt {
        ForwardPath::Postmaster => true,
        ForwardPath::Mailbox(m) => {
            is_local(&m.domain, local_domains)
                && m.local_unquoted().eq_ignore_ascii_case("postmaster")
        }
    };
    if postmaster && expansion.routes.is_empty() {
        // RFC 5321 4.5.1: postmaster must work, even if its aliases lead nowhere (Debian's
        // stock /etc/aliases says `postmaster: root`, and root may have no Maildir here).
        expansion.routes.push(Route::Local("postmaster".into()));
    }
    let mut seen = HashSet::new();
    expansion.routes.retain(|r| seen.insert(r.clone()));
    expansion
}

fn expand(
    name: &str,
    depth: usize,
    path: &mut Vec<String>,
    local_domains: &[String],
    table: &LocalTable,
    out: &mut Expansion,
) {
    if depth > MAX_DEPTH {
        out.problems.push(format!(
            "aliases nested deeper than {MAX_DEPTH} at '{name}'"
        ));
        return;
    }
    if path.iter().any(|seen| seen == name) {
        out.problems.push(format!("alias loop through '{name}'"));
        return;
    }
    let Some(targets) = table.aliases.get(name) else {
        if table.users.contains_key(name) || name == "postmaster" {
            out.routes.push(Route::Local(name.to_string()));
        } else {
            out.problems.push(format!("unknown local user '{name}'"));
        }
        return;
    };
    path.push(name.to_string());
    for target in targets {
        match target.rsplit_once('@') {
            None if target.eq_ignore_ascii_case(name) => {
                out.routes.push(Route::Local(name.to_string()))
            }
            None => expand(
                &target.to_lowercase(),
                depth + 1,
                path,
                local_domains,
                table,
                out,
            ),
            Some((local, domain)) if is_local(domain, local_domains) => {
                let local = local.to_lowercase();
                if local == name {
                    out.routes.push(Route::Local(local));
                } else {
                    expand(&local, depth + 1, path, local_domains, table, out);
                }
            }
            Some(_) => match recipient(target) {
                Some(mailbox) => out.routes.push(Route::Remote(mailbox)),
                None => out
                    .problems
                    .push(format!("alias '{name}' has a bad address '{target}'")),
            },
        }
    }
    path.pop();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_forward_path;

    fn table(aliases: &[(&str, &[&str])]) -> LocalTable {
        LocalTable {
            users: ["alice", "bob"]
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect(),
            aliases: aliases
                .iter()
                .map(|(n, t)| (n.to_string(), t.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    fn routes(rcpt: &str, t: &LocalTable) -> Expansion {
        resolve(
            &parse_forward_path(rcpt).unwrap().0,
            &["example.test".to_string()],
            t,
        )
    }

    fn local(name: &str) -> Route {
        Route::Local(name.into())
    }

    #[test]
    fn users_remote_and_postmaster() {
        let t = table(&[]);
        assert_eq!(routes("<Alice@Example.Test>", &t).routes, [local("alice")]);
        assert!(
            matches!(&routes("<x@elsewhere.test>", &t).routes[..], [Route::Remote(m)] if m.domain == "elsewhere.test")
        );
        assert_eq!(routes("<postmaster>", &t).routes, [local("postmaster")]);
        let unknown = routes("<carol@example.test>", &t);
        assert!(unknown.routes.is_empty() && unknown.problems[0].contains("carol"));
    }

    #[test]
    fn aliases_expand_to_users_and_remote_addresses() {
        let t = table(&[
            (
                "staff",
                &["alice", "bob@example.test", "ext@elsewhere.test"],
            ),
            ("root", &["staff"]),
        ]);
        let e = routes("<root@example.test>", &t);
        assert_eq!(e.routes.len(), 3);
        assert_eq!(&e.routes[..2], [local("alice"), local("bob")]);
        assert!(matches!(&e.routes[2], Route::Remote(m) if m.to_string() == "ext@elsewhere.test"));
        assert!(e.problems.is_empty());
    }

    #[test]
    fn an_alias_naming_itself_is_the_user() {
        let t = table(&[("alice", &["alice", "copy@elsewhere.test"])]);
        let e = routes("<alice@example.test>", &t);
        assert_eq!(e.routes[0], local("alice"));
        assert_eq!(e.routes.len(), 2);
    }

    #[test]
    fn loops_and_depth_are_bounded() {
        let t = table(&[("a", &["b"]), ("b", &["a", "alice"])]);
        let e = routes("<a@example.test>", &t);
        assert_eq!(e.routes, [local("alice")]);
        assert!(e.problems[0].contains("loop"));
        let chain: Vec<(String, Vec<String>)> = (0..20)
            .map(|i| (format!("n{i}"), vec![format!("n{}", i + 1)]))
            .collect();
        let t = LocalTable {
            users: Default::default(),
            aliases: chain.into_iter().collect(),
        };
        let e = routes("<n0@example.test>", &t);
        assert!(e.routes.is_empty() && e.problems[0].contains("deeper"));
    }

    #[test]
    fn postmaster_always_has_somewhere_to_go() {
        let t = table(&[("postmaster", &["root"])]);
        let e = routes("<postmaster>", &t);
        assert_eq!(e.routes, [local("postmaster")]);
        assert!(e.problems[0].contains("root"));
        let t = table(&[("postmaster", &["alice"])]);
        assert_eq!(
            routes("<Postmaster@example.test>", &t).routes,
            [local("alice")]
        );
    }

    #[test]
    fn alias_targets_have_addresses_of_their_own() {
        let alias = parse_forward_path("<staff@example.test>").unwrap().0;
        let path = |user: &str| local_address(user, "example.test", &alias).to_string();
        assert_eq!(path("bob"), "<bob@example.test>");
        assert_eq!(path("john doe"), "<\"john doe\"@example.test>");
        assert_eq!(path(&"x".repeat(70)), "<staff@example.test>");
        // A local part and domain each within their limits, but a path over 256: no
        // envelope could hold it.
        let long_domain = format!("{}.test", "d".repeat(200));
        assert_eq!(
            local_address(&"u".repeat(60), &long_domain, &alias).to_string(),
            "<staff@example.test>"
        );
        let t = table(&[(
            "far",
            &[
                &format!("{}@{long_domain}", "u".repeat(60)),
                "ok@elsewhere.test",
            ],
        )]);
        let e = routes("<far@example.test>", &t);
        assert_eq!(e.routes.len(), 1);
        assert!(e.problems[0].contains("bad address"));
    }

    #[test]
    fn duplicate_routes_are_merged() {
        let t = table(&[("both", &["alice", "alice@example.test", "alice"])]);
        assert_eq!(routes("<both@example.test>", &t).routes, [local("alice")]);
    }
}
