//! The fast reader: one pass over the bytes of a plain, well-formed event, filling the same
//! [`WireEvent`] and [`WireData`] that serde would.
//!
//! It reads a strict subset of JSON: strings without escapes and of ASCII only, numbers,
//! `true`, `false` and `null`, and objects only where `event_data` is. On anything else (an
//! escape, a nested value, a repeated known member, a syntax error, anything after the object)
//! it declines, and serde reads the event and names what is wrong. So every rejection, and
//! every event outside the subset, goes through serde exactly as before; within the subset the
//! two readers agree (`scan_and_serde_read_alike` in the tests), and the rules checked
//! afterwards are the same code for both.

use std::borrow::Cow;

use super::wire::{Scalar, WireData, WireEvent};

/// Reads `bytes` (one JSON object, trimmed or not) into `event` and, when `event_data` is
/// there, `data`; `false` leaves the event to serde (and `event` and `data` to be ignored).
/// The members are filled in place: the two are several hundred bytes, too big to return.
pub(super) fn scan_event<'a>(
    bytes: &'a [u8],
    event: &mut WireEvent<'a>,
    data: &mut WireData<'a>,
) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut reader = Reader { text, at: 0 };
    reader.event(event, data).is_some() && reader.end().is_some()
}

/// Reads the object that starts at `start` in `text` (an array's element) as [`scan_event`]
/// does, and returns the index after it; what follows is the caller's to check.
pub(super) fn scan_event_at<'a>(
    text: &'a str,
    start: usize,
    event: &mut WireEvent<'a>,
    data: &mut WireData<'a>,
) -> Option<usize> {
    let mut reader = Reader { text, at: start };
    reader.event(event, data)?;
    Some(reader.at)
}

/// Fills a member's slot, declining a member that appears twice (serde names the duplicate).
fn set_once<'a>(slot: &mut Scalar<'a>, value: Scalar<'a>) -> Option<()> {
    if *slot != Scalar::Absent {
        return None;
    }
    *slot = value;
    Some(())
}

/// Reads UTF-8 text by its bytes; every position it stops at is an ASCII byte's, so slicing
/// there is always on a character boundary.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace (space, tab, newline, carriage return: not form feed).
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.whitespace();
        (self.at == self.text.len()).then_some(())
    }

    /// An event: its known members into `event`, its `event_data` into `data`.
    fn event(&mut self, event: &mut WireEvent<'a>, data: &mut WireData<'a>) -> Option<()> {
        self.object(|reader, name| {
            let slot = match name {
                "event_id" => &mut event.event_id,
                "event_type" => &mut event.event_type,
                "event_created" => &mut event.event_created,
                "studio_id" => &mut event.studio_id,
                "class_id" => &mut event.class_id,
                "member_id" => &mut event.member_id,
                "device_id" => &mut event.device_id,
                "schema_version" => &mut event.schema_version,
                "event_data" if event.event_data.is_none() => {
                    let start = reader.at;
                    reader.data(data)?;
                    event.event_data = Some(&reader.text[start..reader.at]);
                    return Some(());
                }
                "event_data" => return None,
                _ => {
                    reader.scalar()?;
                    return Some(());
                }
            };
            set_once(slot, reader.scalar()?)
        })
    }

    /// An object, calling `member` with each member's name; `member` reads the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            let name = self.string()?;
            self.expect(b':')?;
            self.whitespace();
            member(self, name)?;
            self.whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The `event_data` object's known members; others must be plain values too.
    fn data(&mut self, data: &mut WireData<'a>) -> Option<()> {
        self.object(|reader, name| {
            let slot = match name {
                "bpm" => &mut data.bpm,
                "speed_kph" => &mut data.speed_kph,
                "incline_pct" => &mut data.incline_pct,
                "distance_m" => &mut data.distance_m,
                "calories" => &mut data.calories,
                "stroke_rate_spm" => &mut data.stroke_rate_spm,
                "watts" => &mut data.watts,
                "cadence_rpm" => &mut data.cadence_rpm,
                "exercise" => &mut data.exercise,
                "reps" => &mut data.reps,
                "weight_kg" => &mut data.weight_kg,
                _ => {
                    reader.scalar()?;
                    return Some(());
                }
            };
            set_once(slot, reader.scalar()?)
        })
    }

    /// A string, number, boolean or null; `None` for anything else.
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(|text| Scalar::Str(Cow::Borrowed(text))),
            b'-' | b'0'..=b'9' => self.number().map(Scalar::Num),
            b't' => self.word(b"true", Scalar::Other("a boolean")),
            b'f' => self.word(b"false", Scalar::Other("a boolean")),
            b'n' => self.word(b"null", Scalar::Null),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8], value: Scalar<'a>) -> Option<Scalar<'a>> {
        self.text.as_bytes()[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            value
        })
    }

    /// A string's content, without its quotes: printable ASCII without escapes only, read to
    /// the first byte that is not plain: the closing quote, or a reason to decline.
    fn string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let content = &self.text.as_bytes()[start..];
        let len = plain_len(content);
        (*content.get(len)? == b'"').then(|| {
            self.at = start + len + 1;
            &self.text[start..start + len]
        })
    }

    /// A number by JSON's grammar, as serde_json (with `float_roundtrip`) reads it: correctly
    /// rounded, too large for `f64` declined.
    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        let number: f64 = self.text[start..self.at].parse().ok()?;
        number.is_finite().then_some(number)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// A byte a plain string may hold: printable ASCII other than the quote and the backslash.
fn plain(byte: u8) -> bool {
    (0x20..=0x7e).contains(&byte) & (byte != b'"') & (byte != b'\\')
}

/// How many bytes at the start of `bytes` are [`plain`], read eight at a time as one `u64`
/// ("SWAR"): strings are most of an event's bytes.
fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of every byte of `word` below `n` (n <= 0x80). A borrow can also mark a
    // byte above one that is below `n`, never one under it, so the lowest mark is exact.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let equal = |word: u64, byte: u8| below(word ^ (ONES * u64::from(byte)), 1);
    let mut len = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        let stops = below(word, 0x20)
            | (word & HIGH)
            | equal(word, 0x7f)
            | equal(word, b'"')
            | equal(word, b'\\');
        if stops != 0 {
            return len + stops.trailing_zeros() as usize / 8;
        }
        len += 8;
    }
    let tail = &bytes[len..];
    len + tail
        .iter()
        .position(|byte| !plain(*byte))
        .unwrap_or(tail.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the reader reads, in the shape of [`serde_read`].
    fn scan(bytes: &[u8]) -> Option<(WireEvent<'_>, Option<WireData<'_>>)> {
        let (mut event, mut data) = (WireEvent::default(), WireData::default());
        scan_event(bytes, &mut event, &mut data).then(|| {
            let data = event.event_data.is_some().then_some(data);
            (event, data)
        })
    }

    /// What serde reads: the event, and its `event_data` when that is there and readable.
    fn serde_read(bytes: &[u8]) -> Option<(WireEvent<'_>, Option<WireData<'_>>)> {
        let event: WireEvent<'_> = serde_json::from_slice(bytes).ok()?;
        let data = match event.event_data {
            Some(raw) => Some(serde_json::from_str(raw).ok()?),
            None => None,
        };
        Some((event, data))
    }

    /// Member values: mostly plain ones the reader takes, now and then an odd one it must
    /// leave to serde (or read exactly as serde does).
    fn value() -> impl Strategy<Value = String> {
        let plain = prop_oneof![
            prop::sample::select(vec![
                "\"studio-0007\"",
                "\"2025-11-25T16:59:58.250Z\"",
                "\"heart_rate\"",
                "\"\"",
                "\"del\u{7f}\"",
                "true",
                "false",
                "null",
            ])
            .prop_map(str::to_owned),
            any::<f64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:e}")),
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "-0.0",
                "1E+2",
                "2.5e-3",
                "1e-400",
                "-1e-400",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "123456789012345678901234567890",
                "0.1000000000000000055511151231257827",
            ])
            .prop_map(str::to_owned),
        ];
        let odd = prop::sample::select(vec![
            "\"caf\u{e9}\"",
            "\"a\\\"b\"",
            "\"\\u0030\"",
            "\"tab\there\"",
            "\"open",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e400",
            "-1e400",
            "tru",
            "nul",
            "{}",
            "[]",
            "[1,2]",
            "{\"bpm\":1}",
        ])
        .prop_map(str::to_owned);
        prop_oneof![12 => plain, 1 => odd]
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "event_id",
            "event_type",
            "event_created",
            "studio_id",
            "class_id",
            "member_id",
            "device_id",
            "schema_version",
            "event_data",
            "firmware",
            "bpm",
            "watts",
            "reps",
            "exercise",
            "weight_kg",
            "speed_kph",
            "distance_m",
            "calories",
            "b\\u0070m",
        ])
        .prop_map(str::to_owned)
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            30 => prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n "]),
            1 => Just("\u{c}"),
        ]
    }

    /// An object of members drawn from `member`, with odd spacing and now and then a flaw.
    fn object(member: BoxedStrategy<(String, String)>) -> impl Strategy<Value = String> {
        (
            prop::collection::vec((member, space(), space()), 0..8),
            space(),
            prop_oneof![
                12 => Just(""),
                1 => prop::sample::select(vec![",", "x", "}", " {}"]),
            ],
        )
            .prop_map(|(members, outer, flaw)| {
                let body: Vec<String> = members
                    .iter()
                    .map(|((name, value), before, after)| {
                        format!("{before}\"{name}\"{after}:{before}{value}{after}")
                    })
                    .collect();
                format!("{outer}{{{}}}{flaw}{outer}", body.join(","))
            })
    }

    fn data_object() -> impl Strategy<Value = String> {
        object((name(), value()).boxed())
    }

    fn event() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            3 => (name(), value()),
            1 => (Just("event_data".to_owned()), data_object()),
        ];
        object(member.boxed())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Wherever the reader answers, serde reads the same members and values.
        #[test]
        fn scan_and_serde_read_alike(text in event()) {
            if let Some(scanned) = scan(text.as_bytes()) {
                // Compared as debug text, so that -0.0 and 0.0 differ.
                let read = serde_read(text.as_bytes());
                prop_assert_eq!(format!("{:?}", Some(scanned)), format!("{read:?}"), "{}", text);
            }
        }

        /// Arbitrary bytes: the reader never panics, and what it accepts serde reads the same.
        #[test]
        fn arbitrary_bytes_are_declined_or_read_alike(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Some(scanned) = scan(&bytes) {
                prop_assert_eq!(format!("{:?}", Some(scanned)), format!("{:?}", serde_read(&bytes)));
            }
        }
    }

    proptest! {
        #[test]
        fn plain_len_stops_at_the_first_byte_that_is_not_plain(
            bytes in prop::collection::vec(prop_oneof![any::<u8>(), 0x20u8..0x7f], 0..48),
        ) {
            let expected = bytes.iter().position(|byte| !plain(*byte)).unwrap_or(bytes.len());
            prop_assert_eq!(plain_len(&bytes), expected);
        }
    }

    #[test]
    fn plain_events_are_read_and_odd_ones_declined() {
        let plain = r#"{"event_id":"e-1","event_type":"bike","event_created":1764090000000,
            "studio_id":"studio-0007","class_id":"c","member_id":"m","device_id":"eq-m",
            "firmware":"2.1","event_data":{"cadence_rpm":95,"watts":260.5,"note":null}}"#;
        let (event, data) = scan(plain.as_bytes()).expect("a plain event is read");
        assert_eq!(event.event_created, Scalar::Num(1_764_090_000_000.0));
        assert_eq!(
            event.event_data,
            Some(r#"{"cadence_rpm":95,"watts":260.5,"note":null}"#)
        );
        assert_eq!(data.unwrap().watts, Scalar::Num(260.5));
        for odd in [
            r#"{"event_id":"a\"b"}"#,
            r#"{"event_id":"a","event_id":"b"}"#,
            r#"{"event_data":{"bpm":1,"bpm":2}}"#,
            r#"{"event_data":{"rr":[1,2]}}"#,
            r#"{"event_data":null}"#,
            r#"{"firmware":{"v":2}}"#,
            r#"{"bpm":1e400}"#,
            r#"{"member_id":"m"} {"member_id":"n"}"#,
            "{\"member_id\":\"caf\u{e9}\"}",
            "[]",
        ] {
            assert!(scan(odd.as_bytes()).is_none(), "{odd}");
        }
    }
}
