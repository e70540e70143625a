//! Exit codes and the mapping from errors to them.

use ltmc_engine::{driver, store};

/// Success.
pub(crate) const OK: u8 = 0;
/// The run failed.
pub(crate) const RUN_FAILED: u8 = 1;
/// Bad input (file, flag, id).
pub(crate) const BAD_INPUT: u8 = 2;
/// A backend is unavailable.
pub(crate) const UNAVAILABLE: u8 = 3;

/// Bad input that is not a spec or store error (a flag, an argument).
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn store_code(e: &store::Error) -> u8 {
    match e {
        store::Error::Unavailable(_) | store::Error::Migration(_) => UNAVAILABLE,
        store::Error::Invalid(_) | store::Error::PayloadTooLarge { .. } => BAD_INPUT,
        _ => RUN_FAILED,
    }
}

/// The exit code for an error.
pub(crate) fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ltmc_core::spec::Error>() || cause.is::<BadInput>() || cause.is::<ltmc_engine::config::Error>() {
            return BAD_INPUT;
        }
        if cause.is::<ltmc_engine::workers::Error>() {
            return UNAVAILABLE;
        }
        if let Some(s) = cause.downcast_ref::<store::Error>() {
            return store_code(s);
        }
        if let Some(e) = cause.downcast_ref::<ltmc_engine::sessions::Error>() {
            return match e {
                ltmc_engine::sessions::Error::Store(s) => store_code(s),
                ltmc_engine::sessions::Error::Rejected(_) => BAD_INPUT,
                _ => RUN_FAILED,
            };
        }
        if let Some(d) = cause.downcast_ref::<driver::Error>() {
            return match d {
                driver::Error::Store(s) => store_code(s),
                driver::Error::NotFound(_) | driver::Error::NeedsNats(_) | driver::Error::Rejected(_) => BAD_INPUT,
                driver::Error::Workers(_) => UNAVAILABLE,
                _ => RUN_FAILED,
            };
        }
    }
    RUN_FAILED
}
