//! Command-line values checked before the database is opened: a refused argument leaves no
//! `.ltmc/` folder, no file and no event behind.

use crate::exit::BadInput;
use crate::term;
use serde_json::Value;

/// A run id as `ltmc runs` prints it: a UUID, in its usual lowercase hyphenated form.
pub(crate) fn run_id(arg: &str) -> Result<String, BadInput> {
    uuid::Uuid::try_parse(arg)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| BadInput(format!("no run {}: run ids are UUIDs; `ltmc runs` lists them", term::short(arg, 80))))
}

/// A JSON value given as an argument (`what` names it in messages), checked with [`storable`].
pub(crate) fn json(what: &str, text: &str, limit: usize) -> Result<Value, BadInput> {
    let value = serde_json::from_str(text).map_err(|e| BadInput(format!("{what} is not valid JSON: {e}")))?;
    storable(what, &value, limit)?;
    Ok(value)
}

/// A value the log can hold: without U+0000 (Postgres cannot store it, so the log refuses it on
/// both backends) and at most `limit` bytes as compact JSON.
pub(crate) fn storable(what: &str, value: &Value, limit: usize) -> Result<(), BadInput> {
    if ltmc_engine::store::has_nul(value) {
        return Err(BadInput(format!(
            "{what} holds the character U+0000 (\\u0000), which the log cannot store; remove it"
        )));
    }
    let size = ltmc_engine::store::json_len(value);
    if size > limit {
        return Err(BadInput(format!("{what} is {size} bytes as JSON; the limit is {limit} bytes")));
    }
    Ok(())
}
