//! Names that become NATS subject tokens or stream ids.
//!
//! Sessions, agents, workflows and steps must match `[A-Za-z0-9_-]{1,64}` so that they are safe
//! as subject tokens (no `.`, `*`, `>` or whitespace) and readable in SQL and logs.

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name is empty.
    #[error("{what} name is empty; use 1-64 characters from [A-Za-z0-9_-]")]
    Empty {
        /// What kind of name (agent, step, workflow, ...).
        what: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{what} name {name:?} is {len} characters long; the limit is 64")]
    TooLong {
        /// What kind of name.
        what: &'static str,
        /// The first 80 characters of the offending name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The name has a character outside `[A-Za-z0-9_-]`.
    #[error("{what} name {name:?} has the character {bad:?}; only [A-Za-z0-9_-] is allowed")]
    BadChar {
        /// What kind of name.
        what: &'static str,
        /// The offending name.
        name: String,
        /// The first character that is not allowed.
        bad: char,
    },
}

/// Checks that `name` is a valid `what` name (`[A-Za-z0-9_-]{1,64}`).
pub fn validate(what: &'static str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::Empty { what });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(Error::BadChar { what, name: name.chars().take(80).collect(), bad });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::TooLong { what, name: name.chars().take(80).collect(), len: name.len() });
    }
    Ok(())
}

/// Longest stream id accepted (a category, a dash and a name or UUID).
pub const MAX_STREAM_ID_LEN: usize = 128;

/// Checks a stream id: `<category>-<rest>`, all from `[A-Za-z0-9_-]`, at most 128 characters.
pub fn validate_stream_id(stream_id: &str) -> Result<(), Error> {
    if stream_id.is_empty() {
        return Err(Error::Empty { what: "stream" });
    }
    if let Some(bad) = stream_id.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(Error::BadChar { what: "stream", name: stream_id.chars().take(80).collect(), bad });
    }
    if stream_id.len() > MAX_STREAM_ID_LEN {
        return Err(Error::TooLong {
            what: "stream",
            name: stream_id.chars().take(80).collect(),
            len: stream_id.len(),
        });
    }
    Ok(())
}

/// The category of a stream: the part before the first `-` (`run-0192…` → `run`).
pub fn category(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_names() {
        assert!(validate("agent", "dev_1-a").is_ok());
        assert!(validate("agent", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_unsafe_names() {
        assert!(matches!(validate("agent", ""), Err(Error::Empty { .. })));
        assert!(matches!(validate("agent", "a.b"), Err(Error::BadChar { bad: '.', .. })));
        assert!(matches!(validate("agent", "a>"), Err(Error::BadChar { bad: '>', .. })));
        assert!(matches!(validate("agent", "ä"), Err(Error::BadChar { .. })));
        assert!(matches!(validate("agent", &"a".repeat(65)), Err(Error::TooLong { len: 65, .. })));
    }

    #[test]
    fn category_is_prefix() {
        assert_eq!(category("run-0192-ab"), "run");
        assert_eq!(category("plain"), "plain");
    }
}
