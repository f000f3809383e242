//! MIME repair before mail-parser reads a received message (SPEC 6.2, 6.3 "MIME"). One
//! pass indexes every boundary line; a walk decides the MIME tree from that index; the copy
//! handed to mail-parser spells the tree out with fresh boundaries that occur nowhere else.
//! Invariant: mail-parser never searches for a boundary that is not there, so parsing the
//! copy, like building it, is linear in the message size whatever its structure.
//!
//! The tree follows SPEC 6.2: a missing closing boundary ends the part at the end of the
//! message; a multipart nested deeper than [`MAX_DEPTH`] levels, or whose boundary never
//! opens a part within it, is not descended and becomes one opaque part; nested messages
//! (`message/rfc822`, `message/global`) are opaque parts too (the MO event carries them as
//! attachments, byte for byte). Opaque parts keep their reported type and name in
//! [`TYPE_HEADER`] and [`NAME_HEADER`], which [`reported`] reads back.

use mail_parser::{HeaderName, MessageParser, MessagePart, MimeHeaders};
use std::collections::HashMap;

/// Multipart levels that are descended; deeper ones stay one opaque part.
pub const MAX_DEPTH: usize = 64;

/// Content type given to opaque parts in the copy: mail-parser keeps them as one binary
/// part and never looks inside.
const OPAQUE: &str = "application/x-postern-opaque";
/// Reported content type of an opaque part (`type/subtype`, lower case).
const TYPE_HEADER: &str = "X-Postern-Type";
/// Reported name of an opaque part, hex-encoded UTF-8.
const NAME_HEADER: &str = "X-Postern-Name";

/// The copy of a message that mail-parser reads, and how many parts it spells out (the
/// number of `MessagePart`s mail-parser finds in it: one per header block).
pub struct Repaired {
    pub bytes: Vec<u8>,
    pub parts: usize,
}

/// One line that starts with `--`: where it starts, where the next line starts, and
/// whether it closes (`--boundary--`).
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    next: usize,
    closing: bool,
}

/// Every `--` line of a message, by the boundary it names, in message order. The walk only
/// moves forward, so each boundary keeps a cursor and every lookup is amortised O(1).
#[derive(Default)]
struct Lines {
    at: Vec<Line>,
    cursor: usize,
}

struct Walk<'a> {
    raw: &'a [u8],
    /// Built at the first multipart: a message without one never pays for the index.
    lines: Option<HashMap<&'a [u8], Lines>>,
    out: Vec<u8>,
    /// Chosen at the first multipart, like `lines`.
    token: Option<String>,
    multiparts: usize,
    parts: usize,
}

/// Builds the copy of `raw` that mail-parser reads; `None` when `raw` has no header at all
/// (the caller then hands the bytes over as text).
pub fn repair(raw: &[u8]) -> Option<Repaired> {
    let mut walk = Walk {
        raw,
        lines: None,
        out: Vec::with_capacity(raw.len() + 4096),
        token: None,
        multiparts: 0,
        parts: 0,
    };
    walk.entity(0, raw.len(), 0, false, false)?;
    Some(Repaired {
        bytes: walk.out,
        parts: walk.parts,
    })
}

/// One pass over the line starts (memchr for `\n`): every line starting with `--`, under
/// the boundary it names. Trailing white space is ignored (RFC 2046 transport padding).
fn index(raw: &[u8]) -> HashMap<&[u8], Lines> {
    let mut lines: HashMap<&[u8], Lines> = HashMap::new();
    let mut start = 0;
    let mut add = |start: usize, end: usize, next: usize| {
        let Some(rest) = raw.get(start..end).and_then(|l| l.strip_prefix(b"--")) else {
            return;
        };
        let key = rest.trim_ascii_end();
        if key.is_empty() {
            return;
        }
        lines.entry(key).or_default().at.push(Line {
            start,
            next,
            closing: false,
        });
        if let Some(b) = key.strip_suffix(b"--").filter(|b| !b.is_empty()) {
            lines.entry(b).or_default().at.push(Line {
                start,
                next,
                closing: true,
            });
        }
    };
    for nl in memchr::memchr_iter(b'\n', raw) {
        add(start, nl, nl + 1);
        start = nl + 1;
    }
    add(start, raw.len(), raw.len());
    lines
}

/// The body of a part between `body_start` and its end. The line break before a
/// boundary line belongs to the boundary; at the end of an unclosed multipart, the last
/// one is dropped likewise.
fn part_body(body: &[u8], child: bool) -> &[u8] {
    if !child {
        return body;
    }
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.strip_suffix(b"\r").unwrap_or(body)
}

/// A boundary prefix that does not occur in `raw`: 128 random bits, checked.
fn fresh_token(raw: &[u8]) -> String {
    loop {
        let t = format!("postern.{}.", uuid::Uuid::new_v4().simple());
        if memchr::memmem::find(raw, t.as_bytes()).is_none() {
            return t;
        }
    }
}

/// What the walk makes of one header block.
enum Kind {
    /// Kept as mail-parser reads it.
    Leaf,
    /// Not descended: one binary part with its reported type and name.
    Opaque { ctype: String, name: Option<String> },
    /// Descended: its subtype in the copy, whether it is a digest (whose parts default to
    /// messages: the walk applies that rule, the copy says `mixed`), its boundary and
    /// first delimiter line.
    Multipart {
        subtype: &'static str,
        digest: bool,
        first: Line,
        boundary: Vec<u8>,
    },
}

impl<'a> Walk<'a> {
    /// The first line of `boundary` that starts at or after `from`.
    fn next_line(&mut self, boundary: &[u8], from: usize) -> Option<Line> {
        let raw = self.raw;
        let lines = self
            .lines
            .get_or_insert_with(|| index(raw))
            .get_mut(boundary)?;
        while lines.at.get(lines.cursor).is_some_and(|l| l.start < from) {
            lines.cursor += 1;
        }
        lines.at.get(lines.cursor).copied()
    }

    /// Emits the entity whose header block starts at `start`. As a leaf it ends at `limit`
    /// (the parent's next boundary line, or the end of the message); a multipart runs to
    /// its own closing line, or to the end of the message when that is missing. Returns
    /// where the parent resumes, or `None` for a top level without any header.
    fn entity(
        &mut self,
        start: usize,
        limit: usize,
        depth: usize,
        in_digest: bool,
        child: bool,
    ) -> Option<usize> {
        let raw = self.raw;
        let (headers_end, body_start) = header_block(raw, start, limit);
        let parsed = MessageParser::new().parse_headers(&raw[start..headers_end]);
        if parsed.is_none() && !child {
            return None;
        }
        let header = parsed.as_ref().and_then(|m| m.parts.first());
        let kind = self.kind(header, body_start, limit, depth, in_digest);
        self.parts += 1;
        let token = match kind {
            Kind::Multipart { .. } => {
                let prefix = self.token.get_or_insert_with(|| fresh_token(raw));
                format!("{prefix}{}.", self.multiparts)
            }
            // Only a multipart's header and delimiters name the token.
            Kind::Leaf | Kind::Opaque { .. } => String::new(),
        };
        let body = part_body(&raw[body_start.min(limit)..limit], child);
        let kind = self.write_header(&raw[start..headers_end], header, kind, &token, body);
        match kind {
            Kind::Leaf | Kind::Opaque { .. } => {
                self.out.extend_from_slice(body);
                Some(limit)
            }
            Kind::Multipart {
                digest,
                first,
                boundary,
                ..
            } => self.children(&token, &boundary, first, depth, digest),
        }
    }

    /// Writes the header block of an entity of `kind` (and the blank line after it) as
    /// mail-parser will read it in the copy. Returns the kind, which turns opaque when a
    /// leaf's own header lines would not read back as written.
    fn write_header(
        &mut self,
        block: &[u8],
        header: Option<&MessagePart<'_>>,
        mut kind: Kind,
        token: &str,
        body: &[u8],
    ) -> Kind {
        let delimiter = format!("--{token}\r\n");
        let follow = match kind {
            Kind::Multipart { .. } => delimiter.as_bytes(),
            Kind::Leaf | Kind::Opaque { .. } => &body[..body.len().min(64)],
        };
        let headers = header.map(|h| h.headers.as_slice()).unwrap_or_default();
        let own = header.and_then(|h| h.content_type());
        let (mut written, count) = header_lines(block, headers, &kind, token);
        if !reads_as_written(&written, count, follow, &kind, token, own) {
            // A malformed header read beyond its line in the new context (mail-parser's
            // date parser does): keep only the lines of our own making.
            if let Kind::Leaf = kind {
                kind = self.opaque(header, None);
            }
            written = header_lines(block, &[], &kind, token).0;
        }
        self.out.extend_from_slice(&written);
        self.out.extend_from_slice(b"\r\n");
        kind
    }

    /// Emits the parts of a multipart whose first delimiter line is `first`, each between
    /// fresh `token` delimiters, and the closing delimiter. Returns where the parent
    /// resumes: after the multipart's closing line, or the end of the message.
    fn children(
        &mut self,
        token: &str,
        boundary: &[u8],
        first: Line,
        depth: usize,
        digest: bool,
    ) -> Option<usize> {
        let end_of_message = self.raw.len();
        self.multiparts += 1;
        self.out
            .extend_from_slice(format!("--{token}\r\n").as_bytes());
        let mut at = first.next;
        loop {
            let next = self.next_line(boundary, at);
            let part_end = next.map_or(end_of_message, |l| l.start);
            let resume = self.entity(at, part_end, depth + 1, digest, true)?;
            let next = if resume == part_end {
                next
            } else {
                self.next_line(boundary, resume)
            };
            match next {
                Some(l) if !l.closing => {
                    self.out
                        .extend_from_slice(format!("\r\n--{token}\r\n").as_bytes());
                    at = l.next;
                }
                end => {
                    self.out
                        .extend_from_slice(format!("\r\n--{token}--").as_bytes());
                    return Some(end.map_or(end_of_message, |l| l.next));
                }
            }
        }
    }

    /// Decides what the header block `header` (whose body starts at `body_start`) becomes.
    fn kind(
        &mut self,
        header: Option<&MessagePart<'_>>,
        body_start: usize,
        limit: usize,
        depth: usize,
        in_digest: bool,
    ) -> Kind {
        let Some(ct) = header.and_then(|h| h.content_type()) else {
            return if in_digest {
                self.opaque(header, Some("message/rfc822"))
            } else {
                Kind::Leaf
            };
        };
        let ctype = ct.ctype();
        let subtype = ct.subtype().unwrap_or_default();
        if ctype.eq_ignore_ascii_case("message")
            && (subtype.eq_ignore_ascii_case("rfc822") || subtype.eq_ignore_ascii_case("global"))
        {
            return self.opaque(header, None);
        }
        if !ctype.eq_ignore_ascii_case("multipart") {
            return Kind::Leaf;
        }
        let boundary = ct.attribute("boundary").unwrap_or_default().as_bytes();
        if depth < MAX_DEPTH && !boundary.is_empty() {
            // The first part must open before the parent's next boundary line.
            if let Some(first) = self
                .next_line(boundary, body_start)
                .filter(|l| !l.closing && l.start < limit)
            {
                let copied = ["alternative", "related"]
                    .into_iter()
                    .find(|s| subtype.eq_ignore_ascii_case(s))
                    .unwrap_or("mixed");
                return Kind::Multipart {
                    subtype: copied,
                    digest: subtype.eq_ignore_ascii_case("digest"),
                    first,
                    boundary: boundary.to_vec(),
                };
            }
        }
        self.opaque(header, None)
    }

    /// An opaque part reporting `ctype` (else the header's own type) and the header's name.
    fn opaque(&self, header: Option<&MessagePart<'_>>, ctype: Option<&str>) -> Kind {
        let own = header
            .and_then(|h| h.content_type())
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_string(),
            });
        let ctype = ctype
            .map(str::to_string)
            .or(own)
            .unwrap_or_else(|| "text/plain".into());
        Kind::Opaque {
            // A header value of our own making: printable ASCII, no line break.
            ctype: ctype
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect(),
            name: header.and_then(|h| h.attachment_name()).map(str::to_string),
        }
    }
}

/// The header lines of one entity in the copy: the original header fields (their exact
/// bytes) but ours and, unless a leaf, the content type; then the lines of our making.
fn header_lines(
    block: &[u8],
    headers: &[mail_parser::Header<'_>],
    kind: &Kind,
    token: &str,
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(block.len() + 160);
    let mut count = 0;
    for h in headers {
        let name = h.name.as_str();
        let ours = name.eq_ignore_ascii_case(TYPE_HEADER) || name.eq_ignore_ascii_case(NAME_HEADER);
        let is_type = h.name == HeaderName::ContentType;
        if ours || (is_type && !matches!(kind, Kind::Leaf)) {
            continue;
        }
        let bytes = block
            .get(h.offset_field as usize..h.offset_end as usize)
            .unwrap_or_default();
        out.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        count += 1;
    }
    match kind {
        Kind::Leaf => {}
        Kind::Opaque { ctype, name } => {
            out.extend_from_slice(format!("{TYPE_HEADER}: {ctype}\r\n").as_bytes());
            if let Some(n) = name {
                out.extend_from_slice(format!("{NAME_HEADER}: {}\r\n", hex::encode(n)).as_bytes());
                count += 1;
            }
            out.extend_from_slice(format!("Content-Type: {OPAQUE}\r\n").as_bytes());
            count += 2;
        }
        Kind::Multipart { subtype, .. } => {
            out.extend_from_slice(
                format!("Content-Type: multipart/{subtype}; boundary=\"{token}\"\r\n").as_bytes(),
            );
            count += 1;
        }
    }
    (out, count)
}

/// Whether mail-parser reads `lines` (`count` header fields), followed by the empty line
/// and `follow` (what comes next in the copy), as `count` fields ending where the lines
/// end, with the content type the walk decided.
fn reads_as_written(
    lines: &[u8],
    count: usize,
    follow: &[u8],
    kind: &Kind,
    token: &str,
    own: Option<&mail_parser::ContentType<'_>>,
) -> bool {
    let mut probe = Vec::with_capacity(lines.len() + 2 + follow.len());
    probe.extend_from_slice(lines);
    probe.extend_from_slice(b"\r\n");
    probe.extend_from_slice(follow);
    let Some(read) = crate::webhooks::mo::parse(&probe) else {
        return lines.is_empty();
    };
    let Some(r) = read.parts.first() else {
        return false;
    };
    let ct = r.content_type();
    let type_ok = match kind {
        Kind::Leaf => ct == own,
        Kind::Opaque { .. } => ct.is_some_and(|c| {
            format!("{}/{}", c.ctype(), c.subtype().unwrap_or_default()) == OPAQUE
        }),
        Kind::Multipart { .. } => ct.and_then(|c| c.attribute("boundary")) == Some(token),
    };
    type_ok
        && r.headers.len() == count
        && r.offset_body as usize == lines.len() + 2
        && r.headers
            .last()
            .is_none_or(|h| h.offset_end as usize == lines.len())
}

/// The header block of the entity at `start` (up to and including its last header line)
/// and where its body starts: after the first empty line, or at `limit` when none comes
/// first (then the whole entity is headers).
fn header_block(raw: &[u8], start: usize, limit: usize) -> (usize, usize) {
    let region = &raw[start..limit];
    if region.starts_with(b"\n") {
        return (start, start + 1);
    }
    if region.starts_with(b"\r\n") {
        return (start, start + 2);
    }
    for nl in memchr::memchr_iter(b'\n', region) {
        let rest = &region[nl + 1..];
        if rest.starts_with(b"\n") {
            return (start + nl + 1, start + nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return (start + nl + 1, start + nl + 3);
        }
    }
    (limit, limit)
}

/// The type (`type/subtype`, lower case) and name an attachment reports: those of the
/// original part when the repair made it opaque, else its own.
pub fn reported(part: &MessagePart<'_>) -> (Option<String>, Option<String>) {
    let own_type = || {
        part.content_type().map(|ct| {
            match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            }
            .to_ascii_lowercase()
        })
    };
    let own_name = || part.attachment_name().map(str::to_string);
    let opaque = part
        .content_type()
        .is_some_and(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()) == OPAQUE);
    if !opaque {
        return (own_type(), own_name());
    }
    let ours = |name: &str| {
        part.headers
            .iter()
            .rev()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .and_then(|h| h.value.as_text())
            .map(|v| v.trim().to_string())
    };
    let name = ours(NAME_HEADER)
        .and_then(|h| hex::decode(h).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .or_else(own_name);
    (ours(TYPE_HEADER).or_else(own_type), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mail-parser finds exactly the parts the repair spelled out.
    fn same_structure(raw: &[u8]) {
        let Some(r) = repair(raw) else { return };
        let parsed = crate::webhooks::mo::parse(&r.bytes).expect("the copy parses");
        assert_eq!(
            parsed.parts.len(),
            r.parts,
            "copy: {:?}",
            String::from_utf8_lossy(&r.bytes)
        );
    }

    #[test]
    fn fuzz_regressions_keep_the_structure() {
        for raw in [
            // A malformed Date read past its line into the content type written after it.
            &b"m\nContent-Type:multipart/m;boundary=o\"\nDate:*-o\n\n--o\r\n"[..],
            b"From: a@example.org\r\nDate: -o\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\nDate: 1 -o\r\nContent-Type: text/html\r\n\r\nx\r\n--s--\r\n",
            b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\n\r\nx\r\n--s--\r\n--s--\r\n",
            b"From: a@example.org\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nContent-Type: multipart/mixed; boundary=never\r\n\r\n--d--\r\n",
        ] {
            same_structure(raw);
        }
    }
}
