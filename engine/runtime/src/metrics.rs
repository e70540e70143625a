//! Coordination metrics, read from the `coordination_metrics` SQL view (docs/sql.md), for
//! `ltmc metrics` as a table, JSON or Prometheus text.

use serde::Serialize;

use crate::store::{self, Store};

/// One reading of the `coordination_metrics` view. Times in milliseconds; `None` when there is
/// nothing to measure yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Agents with a step running (or waiting to retry) now.
    pub active_agents: i64,
    /// Runs not finished.
    pub running_workflows: i64,
    /// Runs completed.
    pub completed_workflows: i64,
    /// Runs failed.
    pub failed_workflows: i64,
    /// Mean coordination time: a step's ready → its first dispatch recorded.
    pub avg_coordination_time_ms: Option<f64>,
    /// Median coordination time (nearest rank).
    pub p50_coordination_ms: Option<f64>,
    /// 95th percentile coordination time (nearest rank).
    pub p95_coordination_ms: Option<f64>,
    /// Median agent time of a step.
    pub p50_step_ms: Option<f64>,
    /// 95th percentile agent time of a step.
    pub p95_step_ms: Option<f64>,
    /// Retries across runs.
    pub retries: i64,
    /// Mean time from ready to dispatch of steps whose hand-over was checked and accepted
    /// (includes the wait under `handoff_policy: wait`).
    pub avg_handoff_latency_ms: Option<f64>,
    /// Hand-overs refused (the run failed on them).
    pub refused_handoffs: i64,
    /// Parallel groups whose votes disagreed.
    pub consensus_disagreements: i64,
}

const COLUMNS: &str = "active_agents, running_workflows, completed_workflows, failed_workflows, \
    avg_coordination_time_ms, p50_coordination_ms, p95_coordination_ms, p50_step_ms, p95_step_ms, retries, \
    avg_handoff_latency_ms, refused_handoffs, consensus_disagreements";

impl Metrics {
    /// Builds a reading from the view's columns, in [`COLUMNS`] order, given how a backend reads
    /// a count and a time.
    pub(crate) fn from_columns<E>(
        int: impl Fn(usize) -> Result<i64, E>,
        ms: impl Fn(usize) -> Result<Option<f64>, E>,
    ) -> Result<Metrics, E> {
        Ok(Metrics {
            active_agents: int(0)?,
            running_workflows: int(1)?,
            completed_workflows: int(2)?,
            failed_workflows: int(3)?,
            avg_coordination_time_ms: ms(4)?,
            p50_coordination_ms: ms(5)?,
            p95_coordination_ms: ms(6)?,
            p50_step_ms: ms(7)?,
            p95_step_ms: ms(8)?,
            retries: int(9)?,
            avg_handoff_latency_ms: ms(10)?,
            refused_handoffs: int(11)?,
            consensus_disagreements: int(12)?,
        })
    }
}

/// Reads the view (bring the views up to date first with [`crate::projector::catch_up`]).
pub async fn read(store: &Store) -> Result<Metrics, store::Error> {
    let sql = format!("SELECT {COLUMNS} FROM coordination_metrics");
    match store {
        Store::Postgres(pg) => {
            let row = pg.client().await?.query_one(&sql, &[]).await.map_err(store::postgres::db_err)?;
            Metrics::from_columns(|i| row.try_get(i), |i| row.try_get(i)).map_err(store::postgres::db_err)
        }
        Store::Sqlite(s) => s.read_metrics(sql).await,
    }
}

/// The metrics in Prometheus text exposition format.
pub fn prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, Option<f64>)]| {
        out.push_str(&format!("# HELP ltmc_{name} {help}\n# TYPE ltmc_{name} gauge\n"));
        for (labels, v) in samples {
            if let Some(v) = v {
                out.push_str(&format!("ltmc_{name}{labels} {v}\n"));
            }
        }
    };
    let n = |v: i64| Some(v as f64);
    gauge("active_agents", "Agents with a step running now.", &[("", n(m.active_agents))]);
    gauge(
        "workflows",
        "Runs by status.",
        &[
            ("{status=\"running\"}", n(m.running_workflows)),
            ("{status=\"completed\"}", n(m.completed_workflows)),
            ("{status=\"failed\"}", n(m.failed_workflows)),
        ],
    );
    gauge(
        "coordination_time_ms",
        "Engine time from a step being ready to its dispatch being recorded.",
        &[
            ("{quantile=\"0.5\"}", m.p50_coordination_ms),
            ("{quantile=\"0.95\"}", m.p95_coordination_ms),
            ("{stat=\"mean\"}", m.avg_coordination_time_ms),
        ],
    );
    gauge(
        "step_time_ms",
        "Agent time of a step.",
        &[("{quantile=\"0.5\"}", m.p50_step_ms), ("{quantile=\"0.95\"}", m.p95_step_ms)],
    );
    gauge("retries", "Retries across runs.", &[("", n(m.retries))]);
    gauge(
        "handoff_latency_ms",
        "Mean ready-to-dispatch time of accepted hand-overs.",
        &[("", m.avg_handoff_latency_ms)],
    );
    gauge("refused_handoffs", "Hand-overs refused.", &[("", n(m.refused_handoffs))]);
    gauge("consensus_disagreements", "Parallel groups whose votes disagreed.", &[("", n(m.consensus_disagreements))]);
    out
}
