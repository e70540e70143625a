//! Reading a file's text as JSON or YAML, and locating errors in it (file, line, field).

use serde_json::Value;

use super::{Error, MAX_FILE_BYTES, aliases, limits};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) source: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, field: impl Into<String>, needle: &[&str], message: impl Into<String>) -> Error {
        Error {
            file: self.file.to_owned(),
            line: line_of(self.source, needle),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The first line that contains every needle as a whole word (found as written or quoted), if
/// any: the agent `a` is not found inside `pattern: sequential`.
pub(super) fn line_of(source: &str, needles: &[&str]) -> Option<usize> {
    if needles.is_empty() {
        return None;
    }
    source.lines().position(|l| needles.iter().all(|n| contains_word(l, n))).map(|i| i + 1)
}

pub(super) fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `needle` occurs in `line` with no name character right before or after it.
pub(super) fn contains_word(line: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    line.match_indices(needle).any(|(i, _)| {
        !line[..i].chars().next_back().is_some_and(is_word_char)
            && !line[i + needle.len()..].chars().next().is_some_and(is_word_char)
    })
}

/// The line has `key: value` (either may be quoted), as a step's `name: build` does.
pub(super) fn declares(line: &str, key: &str, value: &str) -> bool {
    line.match_indices(key).any(|(i, _)| {
        if line[..i].chars().next_back().is_some_and(is_word_char) {
            return false;
        }
        let rest = line[i + key.len()..].trim_start_matches(['"', '\'']).trim_start();
        let Some(rest) = rest.strip_prefix(':') else { return false };
        let rest = rest.trim_start().trim_start_matches(['"', '\'']);
        rest.strip_prefix(value).is_some_and(|after| !after.chars().next().is_some_and(is_word_char))
    })
}

pub(super) fn is_json(source: &str, file: &str) -> bool {
    file.ends_with(".json") || source.trim_start().starts_with('{')
}

/// A workflow file is a map. serde would otherwise accept a list whose items fill the fields
/// in order, which nobody means.
pub(super) fn refuse_non_map(source: &str, file: &str) -> Result<(), Error> {
    if source.len() > MAX_FILE_BYTES {
        return Ok(()); // reported by `deserialize`
    }
    let kind = if is_json(source, file) {
        match serde_json::from_str(source).ok() {
            Some(Value::Object(_)) | None => return Ok(()), // a parse error is reported with its line later
            Some(Value::Array(_)) => "a list",
            Some(Value::Null) => "empty",
            Some(_) => "a single value",
        }
    } else {
        // The kind alone: building the whole value would expand its aliases.
        match yaml_serde::from_str(source) {
            Ok(Kind::Map) | Err(_) => return Ok(()),
            Ok(Kind::List) => "a list",
            Ok(Kind::Empty) => "empty",
            Ok(Kind::Scalar) => "a single value",
        }
    };
    Err(Error {
        file: file.to_owned(),
        line: Some(1),
        field: String::new(),
        message: format!("the file is {kind}; a workflow is a map with keys such as `pattern:`, `agents:` or `steps:`"),
    })
}

/// What a YAML document's top-level node is, read without following any alias.
enum Kind {
    Map,
    List,
    Empty,
    Scalar,
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, SeqAccess};
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a YAML document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::Map)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Kind::List)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Empty)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

fn too_large(source: &str, file: &str) -> Error {
    Error {
        file: file.to_owned(),
        line: None,
        field: String::new(),
        message: format!("file is {} bytes; the limit is {MAX_FILE_BYTES} bytes", source.len()),
    }
}

/// The checks made before any parse, each linear in the file's size: its size, its nesting, no
/// U+0000, and what its aliases expand to. The parser's time grows with the square of the
/// nesting, and aliases can expand a small file without bound (see `limits` and `aliases`).
/// `known` says which top-level keys the file's type takes.
pub(super) fn check_source(source: &str, file: &str, known: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    if source.len() > MAX_FILE_BYTES {
        return Err(too_large(source, file));
    }
    let json = is_json(source, file);
    match limits::check(source, file, json)? {
        Some(alias_line) if !json => aliases::check(source, file, alias_line, known),
        _ => Ok(()),
    }
}

pub(super) fn deserialize<T: serde::de::DeserializeOwned>(source: &str, file: &str) -> Result<T, Error> {
    if source.len() > MAX_FILE_BYTES {
        return Err(too_large(source, file));
    }
    let mut err = if is_json(source, file) {
        match serde_json::from_str(source) {
            Ok(v) => return Ok(v),
            Err(e) => Error {
                file: file.to_owned(),
                line: Some(e.line()),
                field: String::new(),
                message: friendly(&e.to_string()),
            },
        }
    } else {
        match yaml_serde::from_str(source) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let line = e.location().map(|l| l.line());
                // yaml_serde prefixes the path of the faulty node (`agents.dev.retries: ...`).
                let (field, message) = split_path(&friendly(&e.to_string()));
                Error { file: file.to_owned(), line, field, message }
            }
        }
    };
    // A duplicate is reported at the start of its map; point at the second definition instead.
    if (err.message.ends_with("is defined twice") || err.message.starts_with("duplicate field `"))
        && let Some(name) = err.message.split('`').nth(1)
        && let Some(line) = second_definition_line(source, name)
    {
        err.line = Some(line);
    }
    Err(err)
}

/// Splits `path: message` into the path (a field like `steps[0].needs`) and the message.
pub(super) fn split_path(msg: &str) -> (String, String) {
    if let Some((path, rest)) = msg.split_once(": ")
        && !path.is_empty()
        && path.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
    {
        return (path.to_owned(), rest.to_owned());
    }
    (String::new(), msg.to_owned())
}

/// The line of the second `name:` key in a block mapping, if the file writes them one a line.
pub(super) fn second_definition_line(source: &str, name: &str) -> Option<usize> {
    let plain = format!("{name}:");
    let quoted = format!("\"{name}\":");
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with(&plain) || l.starts_with(&quoted)
        })
        .nth(1)
        .map(|(i, _)| i + 1)
}

/// Rewrites serde's wording for the untagged enums into something a user can act on.
pub(super) fn friendly(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg).to_owned();
    if msg.contains("untagged enum Aggregation") {
        return "`result_aggregation` must be true/false or one of all, any, first, majority, consensus_required"
            .into();
    }
    if msg.contains("untagged enum AgentsFile") {
        return "an agents file is a map of agent name -> definition (optionally under `agents:`); \
                each definition takes run, builtin, params, timeout, retries, backoff, requires, compensate, env, cwd, role, duration, description"
            .into();
    }
    if msg.contains("untagged enum Command") {
        return "a command is a list of strings or one string".into();
    }
    msg
}
