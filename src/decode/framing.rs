//! Framing: a message's events found by JSON structure alone (an array's elements, a
//! stream's values), before any of them is parsed.

/// A JSON array's elements, cut one at a time by structure alone (strings and escapes skipped,
/// brackets counted); each element is parsed on its own. A reader that has already read an
/// element whole ends it where it stopped ([`Elements::end_at`]) rather than walking its bytes
/// a second time; both cut exactly where the other would.
pub(super) struct Elements<'a> {
    payload: &'a [u8],
    /// Where the next element, or the closing bracket, is looked for.
    at: usize,
}

/// What [`Elements::next_start`] finds.
pub(super) enum Next {
    /// An element starts at this index.
    Element(usize),
    /// The array is closed: [`Elements::rest`] is what follows it.
    Closed,
    /// The payload ends with the array still open.
    Truncated,
}

impl<'a> Elements<'a> {
    /// The elements of the array opened by the payload's first `[`.
    pub(super) fn new(payload: &'a [u8]) -> Option<Self> {
        let at = payload.iter().position(|b| *b == b'[')? + 1;
        Some(Self { payload, at })
    }

    pub(super) fn next_start(&mut self) -> Next {
        self.at += whitespace_len(&self.payload[self.at..]);
        match self.payload.get(self.at) {
            None => Next::Truncated,
            Some(b']') => Next::Closed,
            Some(_) => Next::Element(self.at),
        }
    }

    /// The element from `start` to `end`, a reader's end of it, when only whitespace and then
    /// a comma or the closing bracket follow; `None` leaves it to [`Elements::end_by_structure`].
    pub(super) fn end_at(&mut self, start: usize, end: usize) -> Option<&'a [u8]> {
        let next = end + whitespace_len(&self.payload[end..]);
        self.at = match self.payload.get(next)? {
            b',' => next + 1,
            b']' => next,
            _ => return None,
        };
        Some(&self.payload[start..end])
    }

    /// The element from `start` to the first comma or bracket outside its strings and brackets;
    /// `None` if the payload ends first.
    pub(super) fn end_by_structure(&mut self, start: usize) -> Option<&'a [u8]> {
        let payload = self.payload;
        let mut i = start;
        let mut depth = 0usize;
        while i < payload.len() {
            match payload[i] {
                b'"' => {
                    i = string_end(payload, i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        self.at = match payload.get(i)? {
            b',' => i + 1,
            _ => i,
        };
        Some(trim_ascii(&payload[start..i]))
    }

    /// What follows the closing bracket, trimmed; anything there is one more (invalid) element.
    pub(super) fn rest(&self) -> &'a [u8] {
        trim_ascii(&self.payload[self.at + 1..])
    }
}

fn whitespace_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len())
}

/// Splits concatenated or newline-delimited JSON values by structure alone. An object or array
/// ends where its brackets balance (so pretty-printed events stay whole); anything else runs
/// to the end of its line.
pub(super) fn split_stream(payload: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut i = 0;
    loop {
        while i < payload.len() && payload[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= payload.len() {
            return pieces;
        }
        let start = i;
        i = match payload[i] {
            b'{' | b'[' => value_end(payload, i),
            _ => payload[i..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(payload.len(), |n| i + n),
        };
        pieces.push(&payload[start..i]);
    }
}

/// The index after the object or array starting at `start`, or the end of the payload.
fn value_end(payload: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < payload.len() {
        match payload[i] {
            b'"' => {
                i = string_end(payload, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    payload.len()
}

/// The index after the string whose opening quote is at `quote` (escapes skipped), or the end
/// of the payload for an unterminated string.
fn string_end(payload: &[u8], quote: usize) -> usize {
    let mut i = quote + 1;
    while let Some(found) = payload
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        i += found;
        match payload[i] {
            b'\\' => i += 2,
            _ => return i + 1,
        }
    }
    payload.len()
}

pub(super) fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}
