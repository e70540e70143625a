//! Events larger than one NATS message: published as consecutive parts (decision 0014).
//!
//! The log takes events of up to 1 MiB of data and metadata; NATS takes messages (headers plus
//! payload) of up to the server's `max_payload` (1 MiB by default, often less). An event whose
//! message would not fit goes out as consecutive messages on its subject, each with the event's
//! usual headers plus `Ltmc-Part: <offset>/<total>`: its payload is bytes `offset..` of the
//! event's JSON, whose full length is `total`. The part that reaches `total` completes the
//! event. Offsets rather than part numbers let a relay that resumes after a crash in the middle
//! of an event continue where the stream ends, whatever the server's `max_payload` is now.

use async_nats::HeaderMap;
use ltmc_core::RecordedEvent;
use std::ops::Range;

/// The header that marks a part.
pub const PART: &str = "Ltmc-Part";

/// The smallest part payload the relay accepts to send: a server whose `max_payload` leaves less
/// room beside the headers is refused as misconfigured.
pub const MIN_PART: usize = 512;

/// Bytes a header block takes toward `max_payload` (NATS counts `NATS/1.0\r\n`, each
/// `Name: value\r\n` and the closing `\r\n`).
pub fn header_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for v in values {
            len += AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4;
        }
    }
    len
}

/// The payload ranges that publish bytes `from..total` in messages of at most `room` bytes.
pub fn ranges(total: usize, from: usize, room: usize) -> Vec<Range<usize>> {
    let room = room.max(1);
    (from..total).step_by(room).map(|start| start..total.min(start + room)).collect()
}

/// Parses `Ltmc-Part: <offset>/<total>`.
pub fn parse_part(value: &str) -> Option<(usize, usize)> {
    let (offset, total) = value.split_once('/')?;
    let (offset, total) = (offset.parse().ok()?, total.parse().ok()?);
    (offset < total).then_some((offset, total))
}

/// Puts events back together from the messages of the stream, in stream order.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    position: Option<String>,
    total: usize,
    bytes: Vec<u8>,
}

impl Assembler {
    /// Takes the next message of the stream; returns its event once complete (at once for a
    /// whole message, at the last part for parts). An error says which message breaks the
    /// sequence: a part that does not continue the event before it, or a payload that is not
    /// an event.
    pub fn push(&mut self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Option<RecordedEvent>, String> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let position = header("Ltmc-Position");
        let Some(part) = header(PART) else {
            if let Some(p) = &self.pending {
                return Err(format!(
                    "the event at position {} ends after {} of its {} bytes: the next message is a whole event",
                    p.position.as_deref().unwrap_or("?"),
                    p.bytes.len(),
                    p.total
                ));
            }
            return parse(payload).map(Some);
        };
        let (offset, total) =
            parse_part(&part).ok_or_else(|| format!("{PART} header {part:?} is not <offset>/<total>"))?;
        let pending = self.pending.get_or_insert_with(|| Pending { position: position.clone(), total, bytes: vec![] });
        if offset != pending.bytes.len() || total != pending.total || position != pending.position {
            return Err(format!(
                "a part of the event at position {} ({part}) does not continue the {} bytes received of the \
                 event at position {} ({} bytes)",
                position.as_deref().unwrap_or("?"),
                pending.bytes.len(),
                pending.position.as_deref().unwrap_or("?"),
                pending.total
            ));
        }
        if pending.bytes.len() + payload.len() > total {
            return Err(format!(
                "a part of the event at position {} runs past its {total} bytes",
                position.as_deref().unwrap_or("?")
            ));
        }
        pending.bytes.extend_from_slice(payload);
        if pending.bytes.len() < total {
            return Ok(None);
        }
        let done = self.pending.take().map(|p| p.bytes).unwrap_or_default();
        parse(&done).map(Some)
    }
}

fn parse(payload: &[u8]) -> Result<RecordedEvent, String> {
    serde_json::from_slice(payload).map_err(|e| format!("a message is not an event: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_rest_in_rooms() {
        assert_eq!(ranges(10, 0, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(ranges(10, 3, 4), vec![3..7, 7..10]);
        assert_eq!(ranges(8, 0, 4), vec![0..4, 4..8]);
        assert!(ranges(5, 5, 4).is_empty());
    }

    #[test]
    fn header_len_matches_the_wire() {
        let mut h = HeaderMap::new();
        h.insert("Ltmc-Position", "12");
        h.insert("Nats-Msg-Id", "abc");
        assert_eq!(header_len(&h), "NATS/1.0\r\nLtmc-Position: 12\r\nNats-Msg-Id: abc\r\n\r\n".len());
    }

    #[test]
    fn parts_must_continue_each_other() {
        let e = serde_json::json!({"not": "an event"}).to_string();
        let part = |offset: usize, total: usize| {
            let mut h = HeaderMap::new();
            h.insert("Ltmc-Position", "7");
            h.insert(PART, format!("{offset}/{total}").as_str());
            h
        };
        let mut a = Assembler::default();
        assert_eq!(a.push(Some(&part(0, e.len())), &e.as_bytes()[..5]), Ok(None));
        let gap = a.push(Some(&part(6, e.len())), &e.as_bytes()[6..]).expect_err("a gap");
        assert!(gap.contains("does not continue the 5 bytes"), "{gap}");
        let mut a = Assembler::default();
        assert_eq!(a.push(Some(&part(0, e.len())), &e.as_bytes()[..5]), Ok(None));
        let cut = a.push(None, e.as_bytes()).expect_err("an unfinished event");
        assert!(cut.contains("ends after 5 of its"), "{cut}");
        assert!(parse_part("5/5").is_none() && parse_part("x/5").is_none() && parse_part("2/5") == Some((2, 5)));
    }
}
