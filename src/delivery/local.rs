//! Local delivery of one recipient. An address that is not yet resolved goes through the
//! aliases first: a user of its own name is written at once; anything else becomes one
//! recipient per target in the same envelope, each with its own state, so a retry goes only
//! to the targets still pending (invariant 6). Each Maildir file is named after the queue id,
//! so a second try after a crash finds the copy the first one made instead of writing
//! another.

use super::headers::Headers;
use super::maildir::{self, MaildirError, Written};
use super::outcome::{DsnStatus, Outcome};
use super::route::{self, Route};
use super::{Context, Job};
use crate::directory::LocalTable;
use crate::envelope::{Envelope, Recipient};
use crate::smtp::address::{ForwardPath, Mailbox};

impl Context {
    /// Resolves recipient `i` if needed, then writes its Maildir.
    pub(super) fn deliver_local(
        &self,
        job: &mut Job,
        i: usize,
        table: &LocalTable,
        headers: &Headers,
    ) -> Outcome {
        // Not mounted yet, or gone: no user can be told apart from an unknown one, so wait.
        let root = &self.config.mailbox_root;
        if !root.is_dir() {
            return Outcome::deferred(
                DsnStatus::new(4, 3, 0),
                format!("451 4.3.0 mailbox_root {} is not available", root.display()),
            );
        }
        if job.env.recipients[i].maildir.is_none() {
            if let Some(outcome) = self.resolve(&mut job.env, i, table) {
                return outcome;
            }
        }
        let rcpt = &job.env.recipients[i];
        let Some(user) = rcpt.maildir.clone() else {
            return Outcome::failed(DsnStatus::new(5, 3, 0), "550 5.3.0 no Maildir resolved");
        };
        let address = format!("{user}@{}", self.domain_of(&rcpt.path));
        // Gone since the alias was expanded: never made anew by delivering into it.
        if !table.users.contains_key(&user) && user != "postmaster" {
            return Outcome::failed(
                DsnStatus::new(5, 1, 1),
                format!("550 5.1.1 {address}: unknown local user '{user}'"),
            );
        }
        if headers.was_delivered_to(&address) {
            return Outcome::failed(
                DsnStatus::new(5, 4, 6),
                format!("554 5.4.6 mail forwarding loop for {address}"),
            );
        }
        let headers = format!(
            "Return-Path: {}\r\nDelivered-To: {address}\r\n",
            job.env.reverse_path
        );
        // The directory as it is named on disk (user names match in any case).
        let dir = table.users.get(&user).map_or(user.as_str(), String::as_str);
        let maildir = self.config.mailbox_root.join(dir);
        let name = format!(
            "{}.{}",
            job.id,
            self.config.hostname.replace(['/', ':'], "_")
        );
        // A copy can exist only if a try came this far before: in an earlier run that died
        // before recording it (the id was in the queue at start), or in an earlier attempt
        // whose end was not sure (the Maildir's directory could not be synced).
        let recovered = self
            .recovered
            .lock()
            .map_or(true, |recovered| recovered.contains(job.id));
        let look_in_cur = rcpt.attempts > 0 || recovered;
        match maildir::deliver(&maildir, &name, &headers, &job.message, look_in_cur) {
            Ok(Written::New(_)) => {
                Outcome::delivered(format!("250 2.0.0 delivered to maildir of {user}"))
            }
            Ok(Written::AlreadyThere(path)) => Outcome::delivered(format!(
                "250 2.0.0 already in the maildir of {user} ({}), not written twice",
                path.display()
            )),
            // Planted by an attack or left by a mistake, a link is never written through; the
            // mail waits for a person to look (and bounces at the end of its queue lifetime).
            Err(e @ MaildirError::Symlink(_)) => {
                log::error!("{}: Maildir of {user} refused: {e}", job.id);
                Outcome::deferred(
                    DsnStatus::new(4, 3, 0),
                    format!("451 4.3.0 Maildir of {user} refused: {e}"),
                )
            }
            Err(e) => Outcome::deferred(
                DsnStatus::new(4, 3, 0),
                format!("451 4.3.0 cannot write to the Maildir of {user}: {e}"),
            ),
        }
    }

    /// Runs recipient `i` through the aliases. `None`: it is the Maildir of its own name,
    /// now set on it, to be written. Otherwise its outcome: expanded into new recipients (or
    /// into targets the message already has), or failed.
    fn resolve(&self, env: &mut Envelope, i: usize, table: &LocalTable) -> Option<Outcome> {
        let rcpt = env.recipients[i].path.clone();
        let expansion = route::resolve(&rcpt, &self.config.local_domains, table);
        for problem in &expansion.problems {
            log::warn!("{rcpt}: {problem}");
        }
        if expansion.routes.is_empty() {
            let why = expansion.problems.join("; ");
            return Some(Outcome::failed(
                DsnStatus::new(5, 1, 1),
                format!("550 5.1.1 {rcpt}: {why}"),
            ));
        }
        let domain = self.domain_of(&rcpt);
        let own = match &rcpt {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => m.local_unquoted().to_lowercase(),
        };
        let has_target = |env: &Envelope, user: &str| {
            env.recipients
                .iter()
                .any(|r| r.maildir.as_deref() == Some(user))
        };
        if let [Route::Local(user)] = &expansion.routes[..] {
            if *user == own && !has_target(env, user) {
                env.recipients[i].maildir = Some(user.clone());
                return None;
            }
        }
        let mut added = Vec::new();
        for route in expansion.routes {
            let child = match route {
                Route::Local(user) if has_target(env, &user) => continue,
                Route::Local(user) => Recipient {
                    maildir: Some(user.clone()),
                    ..Recipient::pending(route::local_address(&user, &domain, &rcpt))
                },
                Route::Remote(mailbox) => {
                    let path = ForwardPath::Mailbox(mailbox);
                    if env
                        .recipients
                        .iter()
                        .any(|r| r.maildir.is_none() && r.path == path)
                    {
                        continue;
                    }
                    Recipient::pending(path)
                }
            };
            added.push(child.path.to_string());
            env.recipients.push(child);
        }
        Some(Outcome::expanded(match added.is_empty() {
            true => "250 2.0.0 alias of targets the message already has".to_string(),
            false => format!("250 2.0.0 expanded to {}", added.join(", ")),
        }))
    }

    /// The domain a local recipient is delivered under (our host name for `<postmaster>`),
    /// lower-case.
    fn domain_of(&self, path: &ForwardPath) -> String {
        match path {
            ForwardPath::Mailbox(Mailbox { domain, .. }) => domain.to_lowercase(),
            ForwardPath::Postmaster => self.config.hostname.to_lowercase(),
        }
    }
}
