//! The DATA phase as a pure, incremental scanner: dot-unstuffing, the end-of-data line,
//! and the checks the SPEC requires (bare CR or LF, text lines over 998 octets). No I/O:
//! the session feeds it whatever bytes arrived and writes out what it returns.
//!
//! Smuggling safety: only `<CRLF>.<CRLF>` ends the data. A line starts only after CRLF, so
//! `<LF>.<LF>`, `<LF>.<CRLF>` and `<CR>.<CR>` are ordinary (and rejected) content.

/// Longest text line allowed by RFC 5322, without its CRLF.
pub const MAX_LINE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` `CR` at the start of a line.
    DotCr,
    /// Inside a line.
    Middle,
    /// Saw `CR` inside a line.
    Cr,
}

/// What was wrong with the data, reported after the end-of-data line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFault {
    BareLf,
    BareCr,
    LineTooLong,
}

#[derive(Debug)]
pub struct DataScanner {
    state: State,
    line_len: usize,
    fault: Option<DataFault>,
}

impl Default for DataScanner {
    fn default() -> Self {
        DataScanner {
            state: State::LineStart,
            line_len: 0,
            fault: None,
        }
    }
}

/// Result of feeding one chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of `input` consumed; less than its length only when the data ended.
    pub consumed: usize,
    /// Whether the end-of-data line was seen.
    pub done: bool,
}

impl DataScanner {
    /// The first fault seen, if any.
    pub fn fault(&self) -> Option<DataFault> {
        self.fault
    }

    fn flag(&mut self, f: DataFault) {
        self.fault.get_or_insert(f);
    }

    /// Scans `input`, appending the unstuffed message bytes to `out`. Stops right after the
    /// end-of-data line; bytes after it (pipelined commands) are left unconsumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scanned {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Middle {
                i += self.copy_run(&input[i..], out);
                continue;
            }
            let b = input[i];
            i += 1;
            if self.edge_byte(b, out) {
                return Scanned {
                    consumed: i,
                    done: true,
                };
            }
        }
        Scanned {
            consumed: input.len(),
            done: false,
        }
    }

    /// The fast path inside a line: copies the run up to the next CR or LF in one go, then
    /// takes that CR or LF. Returns the bytes of `rest` consumed.
    #[inline(always)]
    fn copy_run(&mut self, rest: &[u8], out: &mut Vec<u8>) -> usize {
        let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        self.line_len += run;
        if self.line_len > MAX_LINE {
            self.flag(DataFault::LineTooLong);
        }
        match rest.get(run) {
            None => run,
            Some(b'\r') => {
                self.state = State::Cr;
                run + 1
            }
            Some(_) => {
                self.flag(DataFault::BareLf);
                out.push(b'\n');
                run + 1
            }
        }
    }

    /// One byte at a line's edges: its start, after a leading dot, after a CR. True once
    /// it completed the end-of-data line.
    #[inline(always)]
    fn edge_byte(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            // `feed` takes runs inside a line by `copy_run`; byte by byte is the same.
            State::Middle => self.ordinary(b, out),
            State::LineStart => {
                self.line_len = 0;
                match b {
                    b'.' => self.state = State::Dot,
                    _ => self.ordinary(b, out),
                }
            }
            State::Dot => {
                // A leading dot of a stuffed line is dropped; it still counts on the wire.
                self.line_len = 1;
                match b {
                    b'\r' => self.state = State::DotCr,
                    _ => self.ordinary(b, out),
                }
            }
            State::DotCr => {
                if b == b'\n' {
                    self.state = State::LineStart;
                    return true;
                }
                // `.` CR x: a bare CR on a stuffed line.
                self.flag(DataFault::BareCr);
                out.push(b'\r');
                self.state = State::Middle;
                self.ordinary(b, out);
            }
            State::Cr => match b {
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.state = State::LineStart;
                }
                b'\r' => {
                    self.flag(DataFault::BareCr);
                    out.push(b'\r');
                }
                _ => {
                    self.flag(DataFault::BareCr);
                    out.push(b'\r');
                    self.state = State::Middle;
                    self.ordinary(b, out);
                }
            },
        }
        false
    }

    /// One byte inside a line (not the fast path).
    fn ordinary(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.flag(DataFault::BareLf);
                out.push(b'\n');
                self.state = State::Middle;
            }
            _ => {
                out.push(b);
                self.line_len += 1;
                if self.line_len > MAX_LINE {
                    self.flag(DataFault::LineTooLong);
                }
                self.state = State::Middle;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of every size from 1 to 7 and checks all agree.
    fn scan(input: &[u8]) -> (Vec<u8>, Option<usize>, Option<DataFault>) {
        let mut results = Vec::new();
        for chunk in 1..=7 {
            let mut s = DataScanner::default();
            let mut out = Vec::new();
            let mut end = None;
            let mut pos = 0;
            while pos < input.len() {
                let stop = (pos + chunk).min(input.len());
                let r = s.feed(&input[pos..stop], &mut out);
                pos += r.consumed;
                if r.done {
                    end = Some(pos);
                    break;
                }
            }
            results.push((out, end, s.fault()));
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the result"
        );
        results.remove(0)
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        let (out, end, fault) = scan(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end, Some(24));
        assert_eq!(fault, None);
    }

    #[test]
    fn empty_body_ends_at_once() {
        assert_eq!(scan(b".\r\n"), (vec![], Some(3), None));
    }

    #[test]
    fn unstuffs_leading_dots() {
        let (out, _, fault) = scan(b"..hidden\r\n...\r\n.\r\n");
        assert_eq!(out, b".hidden\r\n..\r\n");
        assert_eq!(fault, None);
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x>\r\n"[..],
            b"a\n.\r\nRCPT\r\n",
            b"a\r.\rDATA\r\n",
        ] {
            let mut input = evil.to_vec();
            input.extend_from_slice(b"tail\r\n.\r\n");
            let (out, end, fault) = scan(&input);
            assert_eq!(
                end,
                Some(input.len()),
                "{:?}",
                String::from_utf8_lossy(evil)
            );
            assert!(matches!(fault, Some(DataFault::BareLf | DataFault::BareCr)));
            assert!(out.ends_with(b"tail\r\n"));
        }
    }

    #[test]
    fn flags_bare_lf_and_bare_cr() {
        assert_eq!(scan(b"a\nb\r\n.\r\n").2, Some(DataFault::BareLf));
        assert_eq!(scan(b"a\rb\r\n.\r\n").2, Some(DataFault::BareCr));
        assert_eq!(scan(b".\rb\r\n.\r\n").2, Some(DataFault::BareCr));
    }

    #[test]
    fn flags_lines_over_998_octets_only() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(scan(&ok).2, None);
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(scan(&long).2, Some(DataFault::LineTooLong));
    }

    #[test]
    fn leaves_pipelined_bytes_unconsumed() {
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        let r = s.feed(b"x\r\n.\r\nRSET\r\n", &mut out);
        assert_eq!(
            r,
            Scanned {
                consumed: 6,
                done: true
            }
        );
    }
}
