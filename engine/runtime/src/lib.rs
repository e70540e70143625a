//! ltmc-engine: LTMC's IO around the pure core: event stores (Postgres, SQLite), the JetStream
//! relay, agents, and the run driver.

pub mod agents;
pub mod audit;
mod backoff;
pub mod config;
pub mod driver;
pub mod metrics;
pub mod projector;
pub mod relay;
pub mod sessions;
pub mod store;
pub mod triggers;
pub mod workers;

pub use driver::{Engine, EngineOptions};
pub use store::{EventStore, ExpectedVersion, Store};
