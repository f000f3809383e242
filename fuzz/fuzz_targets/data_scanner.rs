//! The DATA phase scanner (`smtp::data::DataScanner`), fed in chunks.
//!
//! Input: byte 0 `k`, then `k % 16` chunk sizes (each byte `b` is a chunk of `b + 1`
//! bytes, used in a cycle), then the data. Checks:
//! - chunking never changes the result (message bytes, end position, fault) compared
//!   with feeding the data in one call;
//! - `consumed` never exceeds the chunk, equals it unless the data ended, and the end
//!   comes right after the first `.CRLF` that starts a line;
//! - the result equals a plain byte-by-byte reference model of RFC 5321 4.5.2
//!   dot-unstuffing with the SPEC's checks (bare CR, bare LF, lines over 998 octets).

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::smtp::data::{DataFault, DataScanner, MAX_LINE};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    /// Bytes consumed up to and including the end-of-data line, when seen.
    end: Option<usize>,
    fault: Option<DataFault>,
}

fn feed_chunked(data: &[u8], sizes: &[usize]) -> Outcome {
    let mut s = DataScanner::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut end = None;
    let mut n = 0;
    while pos < data.len() {
        let size = sizes[n % sizes.len()];
        n += 1;
        let chunk = &data[pos..(pos + size).min(data.len())];
        let before = out.len();
        let r = s.feed(chunk, &mut out);
        assert!(r.consumed <= chunk.len(), "consumed more than the chunk");
        assert!(
            out.len() - before <= r.consumed + 1,
            "more output than input (a held CR may come out one call later)"
        );
        pos += r.consumed;
        if r.done {
            end = Some(pos);
            break;
        }
        assert_eq!(r.consumed, chunk.len(), "stopped early without the end of data");
    }
    Outcome {
        out,
        end,
        fault: s.fault(),
    }
}

/// The reference: straightforward, no state machine.
fn model(data: &[u8]) -> Outcome {
    // Lines start at 0 and after every CRLF pair.
    let mut starts = vec![0];
    for i in 1..data.len() {
        if data[i - 1] == b'\r' && data[i] == b'\n' {
            starts.push(i + 1);
        }
    }
    let end_line = starts
        .iter()
        .position(|&s| data[s..].starts_with(b".\r\n"));
    let (scan_to, end) = match end_line {
        Some(l) => (starts[l], Some(starts[l] + 3)),
        None => (data.len(), None),
    };
    let body = &data[..scan_to];
    let mut out = Vec::new();
    let mut fault: Option<(usize, u8, DataFault)> = None;
    let mut note = |at: usize, order: u8, f: DataFault| {
        if fault.is_none_or(|(a, o, _)| (at, order) < (a, o)) {
            fault = Some((at, order, f));
        }
    };
    for (l, &s) in starts.iter().enumerate() {
        if s >= scan_to {
            break;
        }
        let e = starts.get(l + 1).copied().unwrap_or(body.len()).min(body.len());
        let line = &body[s..e];
        let skip = usize::from(line.first() == Some(&b'.'));
        out.extend_from_slice(&line[skip..]);
        // Counted octets: everything but CR and LF, the stuffed dot included.
        let mut count = 0;
        for (j, &b) in line.iter().enumerate() {
            let at = s + j;
            match b {
                b'\n' if j == 0 || line[j - 1] != b'\r' => note(at, 0, DataFault::BareLf),
                b'\r' => {
                    if let Some(&next) = body.get(at + 1) {
                        if next != b'\n' {
                            note(at + 1, 0, DataFault::BareCr);
                        }
                    }
                }
                b'\n' => {}
                _ => {
                    count += 1;
                    if count == MAX_LINE + 1 {
                        note(at, 1, DataFault::LineTooLong);
                    }
                }
            }
        }
    }
    // A CR at the very end of unfinished data is held back until the next byte.
    if end.is_none() && body.last() == Some(&b'\r') {
        out.pop();
    }
    Outcome {
        out,
        end,
        fault: fault.map(|(_, _, f)| f),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&k, rest)) = input.split_first() else {
        return;
    };
    let k = (k as usize % 16).min(rest.len());
    let (size_bytes, data) = rest.split_at(k);
    let mut sizes: Vec<usize> = size_bytes.iter().map(|&b| b as usize + 1).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }

    let whole = feed_chunked(data, &[data.len().max(1)]);
    let chunked = feed_chunked(data, &sizes);
    let bytewise = feed_chunked(data, &[1]);
    assert_eq!(whole, chunked, "chunking changed the result");
    assert_eq!(whole, bytewise, "byte-by-byte feeding changed the result");

    if let Some(end) = whole.end {
        assert!(
            data[..end].ends_with(b"\r\n.\r\n") || end == 3,
            "data ended without CRLF.CRLF"
        );
    }
    assert_eq!(whole, model(data), "scanner differs from the reference model");
});
