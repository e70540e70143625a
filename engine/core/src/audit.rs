//! What is wrong with a stream: the checks of `ltmc audit --verify` and of folding a run.
//!
//! A stream's events are checked against themselves (versions 1..N with no gap, the hash chain)
//! and against its *head record* (`stream_heads`): the version and hash of its last event,
//! written in the same transaction as every append, in a table of its own. Deleting a stream's
//! last events, or all of them, leaves its chain intact but its head record ahead of it, so a
//! truncated or deleted stream is named too. Pure: the caller reads the rows.

use serde::Serialize;

use crate::event::RecordedEvent;
use crate::hash::{Link, chain};

/// A stream's head record: the version and hash of its last event, as of some read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last version.
    pub version: i64,
    /// That event's chain hash.
    pub hash: String,
}

/// How a stream is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A row cannot be read back (its JSON is not JSON, its metadata not an object, ...).
    Unreadable,
    /// An event differs from what was appended (its hash does not chain).
    Altered,
    /// Versions are missing in the middle of the stream.
    Missing,
    /// The stream's last events are missing: its head record is ahead of it.
    Truncated,
    /// Every event of the stream is missing; only its head record is left.
    Deleted,
    /// Events without a head record, or past it: written behind the engine's back, or the head
    /// record was deleted.
    Unrecorded,
}

/// The first thing wrong with a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// What is wrong.
    pub kind: Kind,
    /// The first version concerned.
    pub version: i64,
    /// The same in words, for people.
    pub detail: String,
}

impl Damage {
    fn new(kind: Kind, version: i64, detail: String) -> Damage {
        Damage { kind, version, detail }
    }
}

/// Checks one stream's events, fed in version order, against themselves and against the head
/// record read *before* them (`None` when it had none). Events past that head are fine: they
/// were appended after it was read, and the chain covers them. Holds one hash, so a whole log
/// is checked stream by stream as it is read, in position order.
#[derive(Debug, Clone, Default)]
pub struct StreamCheck {
    head: Option<Head>,
    seen: i64,
    prev: String,
    damage: Option<Damage>,
}

impl StreamCheck {
    /// A check against `head_before`.
    pub fn new(head_before: Option<Head>) -> StreamCheck {
        StreamCheck { head: head_before, ..StreamCheck::default() }
    }

    /// The stream's next event.
    pub fn push(&mut self, e: &RecordedEvent) {
        if self.damage.is_none() {
            self.damage = self.check(e);
            self.seen += 1;
        }
    }

    fn check(&mut self, e: &RecordedEvent) -> Option<Damage> {
        if let Some(damage) = unreadable(e) {
            return Some(damage);
        }
        let expected = self.seen + 1;
        if e.stream_version > expected {
            let detail = format!("versions {expected} to {} are missing", e.stream_version - 1);
            return Some(Damage::new(Kind::Missing, expected, detail));
        }
        if e.stream_version != expected {
            return Some(Damage::new(
                Kind::Altered,
                e.stream_version,
                format!("version {} is out of place", e.stream_version),
            ));
        }
        let hash = chain(&self.prev, Link::from(e));
        if hash != e.hash {
            let detail = format!("version {} was altered: its hash does not chain", e.stream_version);
            return Some(Damage::new(Kind::Altered, e.stream_version, detail));
        }
        if self.head.as_ref().is_some_and(|h| h.version == e.stream_version && h.hash != hash) {
            let detail = format!("version {} differs from its head record", e.stream_version);
            return Some(Damage::new(Kind::Altered, e.stream_version, detail));
        }
        self.prev = hash;
        None
    }

    /// The last version fed (all of them, unless damage was found).
    pub fn last_version(&self) -> i64 {
        self.seen
    }

    /// The first damage found, or the missing tail the head record names.
    pub fn finish(self) -> Option<Damage> {
        if self.damage.is_some() {
            return self.damage;
        }
        let head = self.head?;
        if self.seen == 0 {
            let detail =
                format!("all {} events are missing; its head record is at version {}", head.version, head.version);
            return Some(Damage::new(Kind::Deleted, 1, detail));
        }
        if self.seen < head.version {
            let detail = format!(
                "versions {} to {} are missing; its head record is at version {}",
                self.seen + 1,
                head.version,
                head.version
            );
            return Some(Damage::new(Kind::Truncated, self.seen + 1, detail));
        }
        None
    }
}

/// The damage `e` is when it stands in for a row that cannot be read back.
pub fn unreadable(e: &RecordedEvent) -> Option<Damage> {
    let reason = e.unreadable_reason()?;
    Some(Damage::new(
        Kind::Unreadable,
        e.stream_version,
        format!("the event at position {} (version {}) cannot be read: {reason}", e.global_position, e.stream_version),
    ))
}

/// [`StreamCheck`] of a whole stream.
pub fn check_stream(events: &[RecordedEvent], head_before: Option<&Head>) -> Option<Damage> {
    let mut check = StreamCheck::new(head_before.cloned());
    for e in events {
        check.push(e);
    }
    check.finish()
}

/// Checks that none of a stream's events (the last being `last_version`, 0 for none) lies past
/// its head record read *after* them: every append writes its events and the head record in
/// one transaction, so such events were written behind the engine's back (or the head record
/// was deleted).
pub fn check_recorded(last_version: i64, head_after: Option<&Head>) -> Option<Damage> {
    if last_version == 0 {
        return None;
    }
    match head_after {
        None => Some(Damage::new(Kind::Unrecorded, 1, "its events have no head record".into())),
        Some(h) if last_version > h.version => Some(Damage::new(
            Kind::Unrecorded,
            h.version + 1,
            format!("versions {} to {last_version} lie past its head record (version {})", h.version + 1, h.version),
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Metadata;
    use chrono::DateTime;
    use serde_json::json;
    use uuid::Uuid;

    fn stream(n: i64) -> Vec<RecordedEvent> {
        let mut prev = String::new();
        (1..=n)
            .map(|v| {
                let mut e = RecordedEvent {
                    global_position: v * 10,
                    stream_id: "run-x".into(),
                    stream_version: v,
                    event_id: Uuid::from_u128(v as u128),
                    event_type: "StepReady".into(),
                    schema_version: 1,
                    data: json!({ "step": v }),
                    metadata: Metadata::default(),
                    recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + v).unwrap_or_default(),
                    hash: String::new(),
                };
                e.hash = chain(&prev, Link::from(&e));
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    fn head(events: &[RecordedEvent]) -> Head {
        let last = &events[events.len() - 1];
        Head { version: last.stream_version, hash: last.hash.clone() }
    }

    #[test]
    fn a_whole_stream_with_its_head_passes() {
        let s = stream(4);
        assert_eq!(check_stream(&s, Some(&head(&s))), None);
        assert_eq!(check_recorded(4, Some(&head(&s))), None);
        // Appended after the head was read: fine.
        assert_eq!(check_stream(&s, Some(&head(&s[..2]))), None);
    }

    #[test]
    fn deletions_are_named() {
        let s = stream(5);
        let h = head(&s);
        let kind = |events: &[RecordedEvent]| check_stream(events, Some(&h)).map(|d| (d.kind, d.version));
        assert_eq!(kind(&s[..3]), Some((Kind::Truncated, 4)));
        assert_eq!(kind(&[]), Some((Kind::Deleted, 1)));
        let gap: Vec<_> = s.iter().filter(|e| e.stream_version != 2).cloned().collect();
        assert_eq!(kind(&gap), Some((Kind::Missing, 2)));
        // The chain alone does not see a truncation.
        assert_eq!(check_stream(&s[..3], None), None);
    }

    #[test]
    fn alterations_and_unreadable_rows_are_named() {
        let mut s = stream(3);
        s[1].data = json!({ "step": "evil" });
        assert_eq!(check_stream(&s, None).map(|d| (d.kind, d.version)), Some((Kind::Altered, 2)));
        let mut s = stream(3);
        s[2] = RecordedEvent::unreadable(30, "run-x".into(), 3, "data: expected value".into());
        let d = check_stream(&s, None);
        assert_eq!(d.as_ref().map(|d| (d.kind, d.version)), Some((Kind::Unreadable, 3)));
        assert!(d.is_some_and(|d| d.detail.contains("position 30") && d.detail.contains("expected value")));
        // A head record that disagrees with the event at its version.
        let s = stream(3);
        let forged = Head { version: 3, hash: "0".repeat(64) };
        assert_eq!(check_stream(&s, Some(&forged)).map(|d| d.kind), Some(Kind::Altered));
    }

    #[test]
    fn events_past_the_head_record_are_named() {
        let s = stream(3);
        assert_eq!(check_recorded(3, None).map(|d| d.kind), Some(Kind::Unrecorded));
        assert_eq!(check_recorded(3, Some(&head(&s[..2]))).map(|d| (d.kind, d.version)), Some((Kind::Unrecorded, 3)));
        assert_eq!(check_recorded(0, None), None);
    }
}
