//! Limits checked in one linear pass before a file reaches the YAML or JSON parser.
//!
//! The YAML scanner (libyaml, through yaml_serde) walks its stack of flow levels on every token,
//! so a file of nested `[[[[…` or `{a: {a: …` costs time in the square of its depth: 10 000
//! levels took 0.4 s, a 1 MiB file over two minutes, before the deserializer's own depth limit
//! could refuse it. The parser cannot be told to stop earlier, so this pass follows the
//! scanner's rules for where tokens start (quoted, block and plain scalars, comments,
//! indentation) and refuses a file whose lists and maps nest deeper than [`MAX_DEPTH`], at the
//! line where they do. It must never see less nesting than the scanner does: a bracket it took
//! for text would let a nested file through to the quadratic scanner.

use super::Error;

/// Deepest nesting of lists and maps accepted in a workflow or agents file (the top-level map is
/// level 1).
pub const MAX_DEPTH: usize = 64;

/// What one pass over a file found (1-based lines).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Scan {
    /// Where lists and maps first nest deeper than the limit (the pass stops there).
    pub(super) too_deep: Option<usize>,
    /// Where a double-quoted string first writes U+0000 (`\0`, `\x00`, `\u0000`): the log
    /// cannot store it (Postgres refuses it in JSON), so the file is refused before anything runs.
    pub(super) nul: Option<usize>,
    /// Where the first alias (`*name`) is; only then can the file expand beyond its size.
    pub(super) first_alias: Option<usize>,
}

/// Scans `source` (JSON when `json`) in one linear pass, stopping where it nests deeper than
/// `limit`.
pub(super) fn scan(source: &str, json: bool, limit: usize) -> Scan {
    if json { json_scan(source.as_bytes(), limit) } else { Yaml::new(source).scan(limit) }
}

/// Refuses `source` if its lists and maps nest deeper than [`MAX_DEPTH`] or it writes U+0000.
/// Linear in its length. Returns where its first alias is, if any.
pub(super) fn check(source: &str, file: &str, json: bool) -> Result<Option<usize>, Error> {
    let found = scan(source, json, MAX_DEPTH);
    let refuse =
        |line: usize, message: String| Error { file: file.to_owned(), line: Some(line), field: String::new(), message };
    if let Some(line) = found.too_deep {
        return Err(refuse(
            line,
            format!("lists and maps are nested more than {MAX_DEPTH} levels deep here; the limit is {MAX_DEPTH}"),
        ));
    }
    if let Some(line) = found.nul {
        return Err(refuse(
            line,
            "a string holds the character U+0000, which the event log cannot store; remove it".to_owned(),
        ));
    }
    Ok(found.first_alias)
}

/// Whether the escape at `s[i..]` (just after a backslash) writes U+0000.
fn nul_escape(s: &[u8], i: usize) -> bool {
    let zeros = |n: usize| s.get(i + 1..i + 1 + n).is_some_and(|d| d.iter().all(|&b| b == b'0'));
    match s.get(i) {
        Some(b'0') => true,
        Some(b'x') => zeros(2),
        Some(b'u') => zeros(4),
        Some(b'U') => zeros(8),
        _ => false,
    }
}

fn json_scan(s: &[u8], limit: usize) -> Scan {
    let mut found = Scan::default();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' {
                        if s.get(i + 1) == Some(&b'u') && nul_escape(s, i + 1) {
                            found.nul = found.nul.or(Some(line));
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    found.too_deep = Some(line);
                    return found;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
        i += 1;
    }
    found
}

mod yaml;

use yaml::Yaml;

#[cfg(test)]
mod tests;
