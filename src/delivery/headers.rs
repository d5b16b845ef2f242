//! What delivery needs from a queued message's header section: its size-bounded bytes (for
//! DSNs), the number of `Received:` headers (hops, for loop detection) and the addresses in
//! `Delivered-To:` headers (a message coming back to a Maildir it already reached).

use std::io::Read;

use crate::spool::MessageFile;

/// The most header bytes read (and put into a DSN); headers past it are not looked at.
const MAX_HEADER_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default)]
pub struct Headers {
    /// The header section, CRLF line ends, ending with the CRLF of its last line.
    pub bytes: Vec<u8>,
    pub hops: usize,
    /// Lower-case.
    pub delivered_to: Vec<String>,
}

impl Headers {
    /// Reads the header section of a queued message; an unreadable file gives none.
    pub fn read(message: &MessageFile) -> Headers {
        let mut head = Vec::new();
        if let Ok(file) = message.open() {
            let _ = file.take(MAX_HEADER_BYTES).read_to_end(&mut head);
        }
        Headers::parse(head)
    }

    fn parse(mut head: Vec<u8>) -> Headers {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 2);
        }
        let mut headers = Headers::default();
        for line in head.split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("Received") {
                headers.hops += 1;
            } else if name.eq_ignore_ascii_case("Delivered-To") {
                let address = value.trim().trim_start_matches('<').trim_end_matches('>');
                headers.delivered_to.push(address.to_lowercase());
            }
        }
        headers.bytes = head;
        headers
    }

    /// The message already went through a Maildir delivery to `address`.
    pub fn was_delivered_to(&self, address: &str) -> bool {
        self.delivered_to
            .iter()
            .any(|d| d.eq_ignore_ascii_case(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_and_delivered_to_come_from_the_header_section_only() {
        let h = Headers::parse(
            b"Received: from a\r\n\tby b\r\nreceived: x\r\nDelivered-To: Alice@Example.Test\r\n\
              Subject: hi\r\n\r\nReceived: in the body\r\nDelivered-To: bob@example.test\r\n"
                .to_vec(),
        );
        assert_eq!(h.hops, 2);
        assert_eq!(h.delivered_to, ["alice@example.test"]);
        assert!(h.was_delivered_to("ALICE@example.test"));
        assert!(!h.was_delivered_to("bob@example.test"));
        assert!(h.bytes.ends_with(b"Subject: hi\r\n"));
    }
}
