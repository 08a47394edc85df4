//! Framing: a message's events found by JSON structure alone (an array's elements, a
//! stream's values), before any of them is parsed.

/// Splits a JSON array into its elements by structure alone (strings and escapes skipped,
/// brackets counted); each element is parsed on its own afterwards. `None` if the array is
/// never closed. Anything after the closing bracket becomes one more (invalid) element.
pub(super) fn split_array(payload: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut i = payload.iter().position(|b| *b == b'[')? + 1;
    loop {
        while i < payload.len() && payload[i].is_ascii_whitespace() {
            i += 1;
        }
        match payload.get(i) {
            None => return None,
            Some(b']') => break,
            Some(_) => {}
        }
        let start = i;
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
        elements.push(trim_ascii(&payload[start..i.min(payload.len())]));
        match payload.get(i) {
            Some(b',') => i += 1,
            Some(_) => {}
            None => return None,
        }
    }
    let rest = trim_ascii(&payload[i + 1..]);
    if !rest.is_empty() {
        elements.push(rest);
    }
    Some(elements)
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
    while i < payload.len() {
        match payload[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
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
