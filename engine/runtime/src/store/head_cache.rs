//! The last known (version, hash) of recently appended streams.
//!
//! Versions and hashes of stored events never change, so a cached entry can only be stale in
//! the sense that the stream has grown since; the append then fails with a conflict and the
//! caller re-reads. The cache saves a read per append on the hot path.

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub(crate) struct HeadCache {
    heads: Mutex<HashMap<String, (i64, String)>>,
}

impl HeadCache {
    pub(crate) fn get(&self, stream: &str) -> Option<(i64, String)> {
        self.heads.lock().ok()?.get(stream).cloned()
    }

    pub(crate) fn put(&self, stream: &str, version: i64, hash: String) {
        if let Ok(mut m) = self.heads.lock() {
            if m.len() >= MAX_ENTRIES && !m.contains_key(stream) {
                m.clear();
            }
            m.insert(stream.to_owned(), (version, hash));
        }
    }

    pub(crate) fn forget(&self, stream: &str) {
        if let Ok(mut m) = self.heads.lock() {
            m.remove(stream);
        }
    }
}
