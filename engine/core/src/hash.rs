//! The per-stream tamper-evident hash chain.
//!
//! `hash(n) = sha256(hash(n-1) ‖ "\n" ‖ canonical_json(envelope(n)))`, hex encoded, where the
//! first event of a stream chains from the empty string and `envelope` holds the stream id,
//! version, event id, type, schema version, recorded time (RFC 3339, microseconds, `Z`),
//! metadata and data. Objects are serialised with sorted keys, so the bytes can be rebuilt from
//! the stored row. The global position is not hashed: it is assigned by the database at commit.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{Metadata, RecordedEvent};

/// The fields of one event that the chain covers.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    /// Stream id.
    pub stream_id: &'a str,
    /// Version in the stream.
    pub stream_version: i64,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: &'a str,
    /// Schema version.
    pub schema_version: i32,
    /// Recorded time.
    pub recorded_at: DateTime<Utc>,
    /// Metadata.
    pub metadata: &'a Metadata,
    /// Data.
    pub data: &'a Value,
}

impl<'a> From<&'a RecordedEvent> for Link<'a> {
    fn from(e: &'a RecordedEvent) -> Self {
        Link {
            stream_id: &e.stream_id,
            stream_version: e.stream_version,
            event_id: e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            metadata: &e.metadata,
            data: &e.data,
        }
    }
}

/// Computes the chain hash of `link` following `prev_hash` (`""` for a stream's first event).
pub fn chain(prev_hash: &str, link: Link<'_>) -> String {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(prev_hash.as_bytes());
    buf.push(b'\n');
    // The envelope as compact JSON with keys in sorted order, written directly (no copy of the
    // data), so the bytes do not depend on map ordering features of serde_json.
    buf.extend_from_slice(b"{\"data\":");
    write_canonical(link.data, &mut buf);
    buf.extend_from_slice(b",\"event_id\":\"");
    buf.extend_from_slice(link.event_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    buf.extend_from_slice(b"\",\"event_type\":");
    write_str(link.event_type, &mut buf);
    buf.extend_from_slice(b",\"metadata\":");
    write_canonical(&serde_json::to_value(link.metadata).unwrap_or(Value::Null), &mut buf);
    buf.extend_from_slice(b",\"recorded_at\":");
    write_str(&link.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true), &mut buf);
    buf.extend_from_slice(format!(",\"schema_version\":{},\"stream_id\":", link.schema_version).as_bytes());
    write_str(link.stream_id, &mut buf);
    buf.extend_from_slice(format!(",\"stream_version\":{}}}", link.stream_version).as_bytes());
    hex(&Sha256::digest(&buf))
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Compact JSON with object keys sorted (byte order), as the chain's canonical form.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                if let Some(child) = map.get(k) {
                    write_canonical(child, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// Recomputes the chain of one stream's events (in version order) and returns the version of the
/// first event whose stored hash differs, if any.
pub fn first_broken_link(events: &[RecordedEvent]) -> Option<i64> {
    let mut prev = String::new();
    for e in events {
        let expected = chain(&prev, Link::from(e));
        if expected != e.hash {
            return Some(e.stream_version);
        }
        prev = expected;
    }
    None
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `sha256:<hex>` of `bytes`; used to pin workflow definitions.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(version: i64, prev: &str, data: Value) -> RecordedEvent {
        let mut e = RecordedEvent {
            global_position: version,
            stream_id: "run-x".into(),
            stream_version: version,
            event_id: Uuid::from_u128(version as u128),
            event_type: "StepReady".into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap_or_default(),
            hash: String::new(),
        };
        e.hash = chain(prev, Link::from(&e));
        e
    }

    #[test]
    fn chain_detects_an_altered_event() {
        let a = event(1, "", json!({"step": "a"}));
        let b = event(2, &a.hash, json!({"step": "b"}));
        let c = event(3, &b.hash, json!({"step": "c"}));
        let mut log = vec![a, b, c];
        assert_eq!(first_broken_link(&log), None);
        log[1].data = json!({"step": "evil"});
        assert_eq!(first_broken_link(&log), Some(2));
    }

    #[test]
    fn canonical_form_is_the_sorted_compact_json() {
        // The documented form: identical to serde_json's compact output with sorted keys.
        let v: Value = serde_json::from_str(r#"{"b":{"z":1,"a":[true,null,"\u001b"]},"a":1.5}"#).unwrap_or_default();
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), r#"{"a":1.5,"b":{"a":[true,null,"\u001b"],"z":1}}"#);
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = event(1, "", serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap_or_default());
        let b = event(1, "", serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap_or_default());
        assert_eq!(a.hash, b.hash);
    }
}
