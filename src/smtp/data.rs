//! The DATA reader: finds `<CRLF>.<CRLF>`, removes dot-stuffing, normalises line ends, caps size.
//! In chunk mode (BDAT, RFC 3030) there is no dot-stuffing and no terminator: the session
//! counts the octets and calls `finish` after the last chunk.
//!
//! Only a real `<CR><LF>.<CR><LF>` ends a message (invariant 4). A bare CR or bare LF is never a
//! line end for the terminator or for dot-unstuffing; in the stored content it becomes CRLF
//! (`normalize`) or marks the message for refusal (`reject`). The reader starts as if a CRLF was
//! just read, so an empty message ends on the first `.` line. Past the size limit it stops
//! keeping content but still reads to the terminator, so the rest is never read as commands.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareNewline {
    Normalize,
    Reject,
}

/// What the reader thinks of the message so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Acceptable,
    TooBig,
    BareNewline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Just after a CRLF (or at the start): a `.` here is special.
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line, a CR seen: CRLF or bare CR depends on the next byte.
    TextCr,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line: an LF now ends the message.
    DotCr,
}

#[derive(Debug)]
pub struct DataReader {
    /// DATA (dot-terminated, dot-stuffed) rather than BDAT chunks.
    dot_terminated: bool,
    position: Position,
    /// Content bytes counted so far (after unstuffing and normalisation).
    size: u64,
    limit: u64,
    bare_newline: BareNewline,
    verdict: Verdict,
}

impl DataReader {
    /// A reader for DATA.
    pub fn new(limit: u64, bare_newline: BareNewline) -> DataReader {
        DataReader {
            dot_terminated: true,
            position: Position::LineStart,
            size: 0,
            limit,
            bare_newline,
            verdict: Verdict::Acceptable,
        }
    }

    /// A reader for BDAT chunks: the same line-end rules, no dots, no terminator.
    pub fn chunked(limit: u64, bare_newline: BareNewline) -> DataReader {
        DataReader {
            dot_terminated: false,
            ..DataReader::new(limit, bare_newline)
        }
    }

    /// After the last chunk: a pending CR is bare, and a last line without a line end gets
    /// one, so every stored message ends with CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.position {
            Position::TextCr => self.bare_line_end(out),
            Position::Text | Position::Dot | Position::DotCr => self.keep(b"\r\n", out),
            Position::LineStart => {}
        }
        self.position = Position::LineStart;
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Reads `input`, appending kept content to `out`. Returns the bytes consumed and whether
    /// the terminator was among them; bytes after the terminator are left unconsumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.position == Position::Text {
                // Fast path: copy the run of ordinary bytes up to the next CR or LF.
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(input.len() - i);
                self.keep(&input[i..i + run], out);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let byte = input[i];
            i += 1;
            if self.step(byte, out) {
                return (i, true);
            }
        }
        (i, false)
    }

    /// One byte through the state machine; true when it completed the terminator.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        use Position::*;
        match (self.position, byte) {
            (DotCr, b'\n') => return true,
            (DotCr, _) => {
                // `.` then a bare CR: the dot was stuffing, the CR a bare line end.
                self.bare_line_end(out);
                self.position = Text;
                return self.step(byte, out);
            }
            (Dot, b'\r') => self.position = DotCr,
            (Dot, b'\n') => {
                self.bare_line_end(out);
                self.position = Text;
            }
            (Dot, _) => {
                // Drop the stuffed dot, keep what follows (`..` keeps one dot).
                self.keep(&[byte], out);
                self.position = Text;
            }
            (LineStart, b'.') if self.dot_terminated => self.position = Dot,
            (LineStart | Text, b'\r') => self.position = TextCr,
            (LineStart | Text, b'\n') => {
                self.bare_line_end(out);
                self.position = Text;
            }
            (LineStart | Text, _) => {
                self.keep(&[byte], out);
                self.position = Text;
            }
            (TextCr, b'\n') => {
                self.keep(b"\r\n", out);
                self.position = LineStart;
            }
            (TextCr, b'\r') => self.bare_line_end(out),
            (TextCr, _) => {
                self.bare_line_end(out);
                self.keep(&[byte], out);
                self.position = Text;
            }
        }
        false
    }

    /// A bare CR or LF: never a line end for SMTP, CRLF in the stored content.
    fn bare_line_end(&mut self, out: &mut Vec<u8>) {
        if self.bare_newline == BareNewline::Reject && self.verdict == Verdict::Acceptable {
            self.verdict = Verdict::BareNewline;
        }
        self.keep(b"\r\n", out);
    }

    fn keep(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.verdict != Verdict::Acceptable {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            self.verdict = Verdict::TooBig;
            return;
        }
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in one piece; returns (content, consumed, ended).
    fn read(input: &[u8], mode: BareNewline) -> (Vec<u8>, usize, bool) {
        let mut reader = DataReader::new(1 << 20, mode);
        let mut out = Vec::new();
        let (used, ended) = reader.feed(input, &mut out);
        (out, used, ended)
    }

    #[test]
    fn ends_on_crlf_dot_crlf_and_leaves_the_rest() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, used, ended) = read(input, BareNewline::Normalize);
        assert!(ended);
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(&input[used..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message_ends_on_first_dot_line() {
        let (out, used, ended) = read(b".\r\n", BareNewline::Normalize);
        assert!(ended);
        assert_eq!(used, 3);
        assert!(out.is_empty());
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let (out, _, ended) = read(
            b"..leading\r\n...\r\nmid.dle\r\n.\r\n",
            BareNewline::Normalize,
        );
        assert!(ended);
        assert_eq!(out, b".leading\r\n..\r\nmid.dle\r\n");
    }

    /// The SMTP-smuggling vectors of Dec 2023: none of these may end the message.
    const SMUGGLING: &[&[u8]] = &[
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r\n", b"\r.\n",
    ];

    #[test]
    fn smuggling_vectors_never_end_data() {
        for vector in SMUGGLING {
            let mut input = b"first".to_vec();
            input.extend_from_slice(vector);
            input.extend_from_slice(b"MAIL FROM:<evil@example.org>\r\n");
            let (out, used, ended) = read(&input, BareNewline::Normalize);
            assert!(!ended, "{vector:?} ended the message");
            assert_eq!(used, input.len());
            // Every line end in the stored content is CRLF.
            assert!(
                !has_bare_line_end(&out),
                "{vector:?} left a bare line end: {out:?}"
            );
        }
    }

    #[test]
    fn smuggling_vectors_are_refused_in_reject_mode() {
        for vector in SMUGGLING {
            let mut input = b"first".to_vec();
            input.extend_from_slice(vector);
            input.extend_from_slice(b"x\r\n.\r\n");
            let mut reader = DataReader::new(1 << 20, BareNewline::Reject);
            let (_, ended) = reader.feed(&input, &mut Vec::new());
            assert!(ended);
            assert_eq!(reader.verdict(), Verdict::BareNewline, "{vector:?}");
        }
    }

    fn has_bare_line_end(bytes: &[u8]) -> bool {
        bytes.iter().enumerate().any(|(i, &b)| {
            (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
                || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        })
    }

    #[test]
    fn bare_line_ends_are_normalised() {
        let (out, _, _) = read(b"a\nb\rc\r\r\nd\r\n.\r\n", BareNewline::Normalize);
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\nd\r\n");
    }

    #[test]
    fn split_at_every_byte_gives_the_same_result() {
        let input: &[u8] = b"A: b\r\n\r\n..x\r\ny\n.\nz\r.\r\n\r\n.\r\nNEXT";
        let (whole, used_whole, _) = read(input, BareNewline::Normalize);
        for split in 0..input.len() {
            let mut reader = DataReader::new(1 << 20, BareNewline::Normalize);
            let mut out = Vec::new();
            let (a, ended_a) = reader.feed(&input[..split], &mut out);
            assert!(a == split || ended_a);
            let used = if ended_a {
                a
            } else {
                let (b, ended) = reader.feed(&input[split..], &mut out);
                assert!(ended);
                a + b
            };
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(used, used_whole);
        }
    }

    #[test]
    fn too_big_keeps_nothing_more_but_reads_to_the_end() {
        let mut reader = DataReader::new(10, BareNewline::Normalize);
        let mut out = Vec::new();
        let (_, ended) = reader.feed(b"0123456789abcdef\r\n", &mut out);
        assert!(!ended);
        assert_eq!(reader.verdict(), Verdict::TooBig);
        let (_, ended) = reader.feed(b"more\r\n.\r\n", &mut out);
        assert!(ended);
        assert!(out.len() <= 10);
    }

    #[test]
    fn chunks_keep_dots_and_normalise_across_chunk_boundaries() {
        let mut reader = DataReader::chunked(1 << 20, BareNewline::Normalize);
        let mut out = Vec::new();
        // CR at the end of one chunk and LF at the start of the next are one CRLF.
        for chunk in [&b".x\r"[..], b"\n.\r\n", b"bare\nlf\r", b"\nend"] {
            let (used, ended) = reader.feed(chunk, &mut out);
            assert_eq!((used, ended), (chunk.len(), false));
        }
        reader.finish(&mut out);
        assert_eq!(out, b".x\r\n.\r\nbare\r\nlf\r\nend\r\n");
        assert_eq!(reader.verdict(), Verdict::Acceptable);
    }

    #[test]
    fn chunk_ending_in_a_bare_cr_is_refused_in_reject_mode() {
        let mut reader = DataReader::chunked(1 << 20, BareNewline::Reject);
        let mut out = Vec::new();
        reader.feed(b"text\r", &mut out);
        reader.finish(&mut out);
        assert_eq!(reader.verdict(), Verdict::BareNewline);
    }

    #[test]
    fn exactly_at_the_limit_is_fine() {
        let mut reader = DataReader::new(6, BareNewline::Normalize);
        let (_, ended) = reader.feed(b"1234\r\n.\r\n", &mut Vec::new());
        assert!(ended);
        assert_eq!(reader.verdict(), Verdict::Acceptable);
    }
}
