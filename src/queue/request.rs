//! The control channel's protocol, no I/O: one request line from a queue tool
//! (`flush`, `flush ID`, `delete ID`, `hold ID`, `release ID`, `bounce ID`), answered by
//! lines in the style of SMTP replies, `250-text` then a last `250 text`. The code says how it
//! went: 2xx done, 4xx not now (try again), 550 no such message, 500 a bad request.

use std::fmt;

/// The longest request line read; anything longer is refused.
pub const MAX_REQUEST: usize = 256;

/// What a tool asks the daemon (or does itself, when the daemon is down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Flush,
    Delete,
    Hold,
    Release,
    Bounce,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Flush => "flush",
            Verb::Delete => "delete",
            Verb::Hold => "hold",
            Verb::Release => "release",
            Verb::Bounce => "bounce",
        }
    }

    pub fn from_name(name: &str) -> Option<Verb> {
        [
            Verb::Flush,
            Verb::Delete,
            Verb::Hold,
            Verb::Release,
            Verb::Bounce,
        ]
        .into_iter()
        .find(|verb| verb.name() == name)
    }
}

/// One request: a verb and its queue id (`None` only for `flush`, which is then every queued
/// message not on hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub verb: Verb,
    pub id: Option<String>,
}

impl Request {
    /// Reads a request line (without its line end); the error is the reply's text.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split(' ');
        let name = words.next().unwrap_or("");
        let verb = Verb::from_name(name).ok_or_else(|| format!("unknown request '{name}'"))?;
        let id = words.next().map(str::to_string);
        if words.next().is_some() {
            return Err("too many words".into());
        }
        match (&id, verb) {
            (None, Verb::Flush) => {}
            (None, _) => return Err(format!("{name} needs a queue id")),
            (Some(id), _) if !is_queue_id(id) => {
                return Err(format!("'{id}' is not a queue id"));
            }
            (Some(_), _) => {}
        }
        Ok(Request { verb, id })
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{} {id}", self.verb.name()),
            None => f.write_str(self.verb.name()),
        }
    }
}

/// What a queue id may look like (`1795558229.M094315P4418Q0R5f3a9c1e`): letters, digits and
/// dots, never a path. Checked before any id names a file.
pub fn is_queue_id(id: &str) -> bool {
    (1..=100).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        && !id.starts_with('.')
}

/// The answer to a request: a code and at least one line of text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, line: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![line.into()],
        }
    }

    pub fn ok(line: impl Into<String>) -> Reply {
        Reply::new(250, line)
    }

    pub fn no_such_message(id: &str) -> Reply {
        Reply::new(550, format!("{id}: no such message in the queue"))
    }

    /// The wire form: `250-first`, ..., `250 last`, each ending in `\n`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            let line: String = line.chars().filter(|c| !c.is_control()).collect();
            out.push_str(&format!("{}{separator}{line}\n", self.code));
        }
        if self.lines.is_empty() {
            out.push_str(&format!("{} \n", self.code));
        }
        out
    }

    /// Reads one reply line into `self` (start from `Reply::default()`); `Ok(true)` once the
    /// last line is in.
    pub fn read_line(&mut self, line: &str) -> Result<bool, String> {
        let bad = || format!("not a control reply line: '{line}'");
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(bad)?;
        let last = match line.as_bytes().get(3) {
            Some(b' ') | None => true,
            Some(b'-') => false,
            Some(_) => return Err(bad()),
        };
        self.code = code;
        self.lines.push(line.get(4..).unwrap_or("").to_string());
        Ok(last)
    }

    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print() {
        let id = "1795558229.M094315P4418Q0R5f3a9c1e";
        for line in [
            format!("delete {id}"),
            format!("hold {id}"),
            format!("release {id}"),
            format!("bounce {id}"),
            format!("flush {id}"),
            "flush".to_string(),
        ] {
            let request = Request::parse(&line).unwrap();
            assert_eq!(request.to_string(), line);
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(Request::parse("delete")
            .unwrap_err()
            .contains("needs a queue id"));
        assert!(Request::parse("delete ../../etc/passwd")
            .unwrap_err()
            .contains("not a queue id"));
        assert!(Request::parse("delete .env").is_err());
        assert!(Request::parse("erase 1.M1")
            .unwrap_err()
            .contains("unknown"));
        assert!(Request::parse("hold a b").is_err());
        assert!(Request::parse("").is_err());
        assert!(Request::parse(&format!("hold {}", "1".repeat(101))).is_err());
    }

    #[test]
    fn replies_round_trip_line_by_line() {
        let reply = Reply {
            code: 250,
            lines: vec!["one".into(), "two\r\nthree".into()],
        };
        let text = reply.to_text();
        assert_eq!(text, "250-one\n250 twothree\n");
        let mut read = Reply::default();
        let mut done = false;
        for line in text.lines() {
            assert!(!done);
            done = read.read_line(line).unwrap();
        }
        assert!(done && read.is_ok());
        assert_eq!(read.lines, ["one", "twothree"]);
        assert!(Reply::default().read_line("hello").is_err());
        assert!(!Reply::no_such_message("1.M1").is_ok());
    }
}
