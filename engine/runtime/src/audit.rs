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
    // With `verify`, a check per stream; without, each stream's first unreadable row, if any.
    let mut checks: BTreeMap<String, StreamCheck> = BTreeMap::new();
    let mut unreadable: BTreeMap<String, Option<Damage>> = BTreeMap::new();
    let (mut after, mut events) = (0, 0usize);
    loop {
        let batch = store.read_all(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        events += batch.len();
        for e in &batch {
            if verify {
                match checks.get_mut(&e.stream_id) {
                    Some(check) => check.push(e),
                    None => {
                        let mut check = StreamCheck::new(before.get(&e.stream_id).cloned());
                        check.push(e);
                        checks.insert(e.stream_id.clone(), check);
                    }
                }
            } else {
                match unreadable.get_mut(&e.stream_id) {
                    Some(first) => *first = first.take().or_else(|| ltmc_core::audit::unreadable(e)),
                    None => {
                        unreadable.insert(e.stream_id.clone(), ltmc_core::audit::unreadable(e));
                    }
                }
            }
        }
    }
    if !verify {
        let streams = unreadable.len();
        let broken: Vec<Broken> =
            unreadable.into_iter().filter_map(|(stream, d)| d.map(|damage| Broken { stream, damage })).collect();
        return Ok(Report { ok: broken.is_empty(), events, streams, verified: false, broken });
    }
    let after_heads: HashMap<String, Head> = store.stream_heads().await?.into_iter().collect();
    // Streams whose every event is gone have a head record and nothing else.
    for (stream, head) in &before {
        checks.entry(stream.clone()).or_insert_with(|| StreamCheck::new(Some(head.clone())));
    }
    let streams = checks.len();
    let mut broken = Vec::new();
    for (stream, check) in checks {
        let last = check.last_version();
        if let Some(damage) = check.finish().or_else(|| check_recorded(last, after_heads.get(&stream))) {
            broken.push(Broken { stream, damage });
        }
    }
    Ok(Report { ok: broken.is_empty(), events, streams, verified: true, broken })
}
