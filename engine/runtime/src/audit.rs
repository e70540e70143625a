//! `ltmc audit`: the whole log checked stream by stream, every damaged stream listed.
//!
//! Race-free while runs append: the head records are read before the events and again after
//! them. Each stream's events must reach its first head record (else its tail or all of it was
//! deleted), and none may lie past its second one (an append writes its events and its head
//! record in one transaction, so such events were not appended by the engine). Memory holds one
//! check per stream, not the log.

use ltmc_core::audit::{Damage, Head, StreamCheck, check_recorded};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

use crate::store::{EventStore, Result};

/// Events read per query.
const BATCH: usize = 5000;

/// What an audit found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nothing is broken (of what was checked).
    pub ok: bool,
    /// Events read (unreadable rows included).
    pub events: usize,
    /// Streams seen, in the events or the head records.
    pub streams: usize,
    /// Whether the chains and head records were checked (`--verify`), or only that every row
    /// can be read.
    pub verified: bool,
    /// Every damaged stream, by stream id.
    pub broken: Vec<Broken>,
}

/// One damaged stream.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    /// The stream.
    pub stream: String,
    /// What is wrong, first thing first.
    #[serde(flatten)]
    pub damage: Damage,
}

/// Reads the whole log. With `verify`, checks every stream's versions, hash chain and head
/// record; without, only that every row can be read.
pub async fn audit<S: EventStore>(store: &S, verify: bool) -> Result<Report> {
    let before: HashMap<String, Head> =
        if verify { store.stream_heads().await?.into_iter().collect() } else { HashMap::new() };
    let mut checks: BTreeMap<String, StreamCheck> = BTreeMap::new();
    let mut unreadable: BTreeMap<String, Damage> = BTreeMap::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let (mut after, mut events) = (0, 0usize);
    loop {
        let batch = store.read_all(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        events += batch.len();
        for e in &batch {
            if verify {
                let check = checks
                    .entry(e.stream_id.clone())
                    .or_insert_with(|| StreamCheck::new(before.get(&e.stream_id).cloned()));
                check.push(e);
            } else if !seen.contains(&e.stream_id) {
                seen.insert(e.stream_id.clone());
            }
            if !verify && e.is_unreadable() && !unreadable.contains_key(&e.stream_id) {
                let mut check = StreamCheck::default();
                check.push(e);
                if let Some(d) = check.finish() {
                    unreadable.insert(e.stream_id.clone(), d);
                }
            }
        }
    }
    let mut broken = Vec::new();
    if verify {
        let after_heads: HashMap<String, Head> = store.stream_heads().await?.into_iter().collect();
        // Streams whose every event is gone have a head record and nothing else.
        for (stream, head) in &before {
            checks.entry(stream.clone()).or_insert_with(|| StreamCheck::new(Some(head.clone())));
        }
        for (stream, check) in checks.iter() {
            let last = check.last_version();
            let damage = check.clone().finish().or_else(|| check_recorded(last, after_heads.get(stream)));
            if let Some(damage) = damage {
                broken.push(Broken { stream: stream.clone(), damage });
            }
        }
    } else {
        broken = unreadable.into_iter().map(|(stream, damage)| Broken { stream, damage }).collect();
    }
    let streams = if verify { checks.len() } else { seen.len() };
    Ok(Report { ok: broken.is_empty(), events, streams, verified: verify, broken })
}
