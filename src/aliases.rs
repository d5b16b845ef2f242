//! The aliases file, in `/etc/aliases` form: `name: target, target` lines, `#` comments,
//! continuation lines that start with white space. Targets are local names or addresses;
//! `|command`, `/file` and `:include:` targets are refused rather than silently ignored.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// Lower-case.
    pub name: String,
    pub targets: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct AliasError {
    pub line: usize,
    pub what: String,
}

pub fn parse(text: &str) -> Result<Vec<Alias>, AliasError> {
    // Join continuation lines first, remembering where each entry started.
    let mut entries: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match entries.last_mut() {
                Some((_, entry)) => entry.push_str(line),
                None => {
                    return Err(AliasError {
                        line: i + 1,
                        what: "continuation line with no entry before it".into(),
                    })
                }
            }
        } else {
            entries.push((i + 1, line.to_string()));
        }
    }
    entries
        .into_iter()
        .map(|(line, entry)| {
            let err = |what: String| AliasError { line, what };
            let (name, targets) = entry
                .split_once(':')
                .ok_or_else(|| err("expected 'name: target, ...'".into()))?;
            let name = name.trim().trim_matches('"').to_lowercase();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(err(format!("bad alias name '{name}'")));
            }
            let targets: Vec<String> = targets
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(t) = targets.iter().find(|t| t.starts_with(['|', '/', ':'])) {
                return Err(err(format!(
                    "unsupported target '{t}' (only users and addresses)"
                )));
            }
            if targets.is_empty() {
                return Err(err(format!("alias '{name}' has no target")));
            }
            Ok(Alias { name, targets })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_comments_and_continuations() {
        let text = "# comment\nPostmaster: root\nstaff: alice,\n  bob@example.org\n\nroot: alice\n";
        let aliases = parse(text).unwrap();
        assert_eq!(aliases.len(), 3);
        assert_eq!(aliases[0].name, "postmaster");
        assert_eq!(aliases[1].targets, ["alice", "bob@example.org"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("ok: a\nbroken line\n").unwrap_err().line, 2);
        assert!(parse("x: |/bin/sh\n")
            .unwrap_err()
            .what
            .contains("unsupported"));
        assert!(parse(" starts indented\n").is_err());
        assert!(parse("empty:\n").is_err());
    }
}
