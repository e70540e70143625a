//! Opening the store for a verb: verbs that only read never create a database.

use anyhow::Context;
use ltmc_engine::Store;
use ltmc_engine::config::Config;

use crate::exit::BadInput;

/// Opens (and migrates) the store of `config`, creating an embedded database if there is none:
/// for verbs that write (`run`, `session create`, `memory put`, `projections follow`, …).
pub(crate) async fn for_writing(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.database_url).await.context("opening the event store")
}

/// Opens the store of `config` for a verb that only reads (`runs`, `status`, `events`,
/// `audit`, `metrics`, …): an embedded database that does not exist is not created, and the
/// error says how to start one (exit 2). A typo in a path, or the wrong folder, then leaves no
/// empty `.ltmc/` behind.
pub(crate) async fn for_reading(config: &Config) -> anyhow::Result<Store> {
    if let Some(path) = config.database_url.strip_prefix("sqlite://")
        && !std::path::Path::new(path).exists()
    {
        let path = crate::term::line(path).into_owned();
        return Err(BadInput(format!(
            "no LTMC database at {path} (from LTMC_DATABASE_URL, ltmc.toml, or the default .ltmc/ltmc.db in \
             this folder); `ltmc run FILE` here creates one, or point LTMC_DATABASE_URL at an existing database"
        ))
        .into());
    }
    for_writing(config).await
}
