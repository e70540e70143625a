//! ltmc-core: the vocabulary and the rules of LTMC, with no IO.
//!
//! Everything here is pure: no tokio, no SQL, no clock, no randomness. The runtime hands in ids
//! and timestamps, asks the deciders for events, appends them, and performs the effects that
//! [`run::pending_work`] yields. That keeps every decision replayable from the log.
//!
//! ```
//! use ltmc_core::spec;
//! let wf = spec::parse_str(
//!     "pattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: echo}\n",
//!     "inline.yaml",
//!     &Default::default(),
//! ).unwrap();
//! let plan = wf.plan().unwrap();
//! assert_eq!(plan.steps.len(), 2);
//! assert_eq!(plan.steps[1].needs, vec![0]);
//! ```

pub mod audit;
pub mod event;
pub mod hash;
pub mod names;
pub mod protocol;
pub mod run;
pub mod session;
pub mod spec;

pub use event::{Metadata, NewEvent, RecordedEvent};
