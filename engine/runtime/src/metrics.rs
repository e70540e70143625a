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

/// The metrics in Prometheus text exposition format. Every family has one type and one label
/// set: current numbers are gauges (`ltmc_active_agents`, `ltmc_workflows{status}`), totals that
/// only grow are counters (`…_total`), and times are gauges in seconds, one per statistic
/// (`…_seconds_p50`, `…_p95`, `…_mean`), since they are read from the views, not observed here
/// (a summary's `quantile` label belongs with its `_sum` and `_count`).
pub fn prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, Option<f64>)]| {
        out.push_str(&format!("# HELP ltmc_{name} {help}\n# TYPE ltmc_{name} {kind}\n"));
        for (labels, v) in samples {
            if let Some(v) = v {
                out.push_str(&format!("ltmc_{name}{labels} {v}\n"));
            }
        }
    };
    let n = |v: i64| Some(v as f64);
    let secs = |ms: Option<f64>| ms.map(|v| v / 1000.0);
    family("active_agents", "gauge", "Agents with a step running now.", &[("", n(m.active_agents))]);
    family(
        "workflows",
        "gauge",
        "Runs by status.",
        &[
            ("{status=\"running\"}", n(m.running_workflows)),
            ("{status=\"completed\"}", n(m.completed_workflows)),
            ("{status=\"failed\"}", n(m.failed_workflows)),
        ],
    );
    let coordination = "Engine time from a step being ready to its dispatch being recorded";
    for (stat, what, v) in [
        ("p50", "median", m.p50_coordination_ms),
        ("p95", "95th percentile", m.p95_coordination_ms),
        ("mean", "mean", m.avg_coordination_time_ms),
    ] {
        let name = format!("coordination_seconds_{stat}");
        family(&name, "gauge", &format!("{coordination}, {what}."), &[("", secs(v))]);
    }
    for (stat, what, v) in [("p50", "median", m.p50_step_ms), ("p95", "95th percentile", m.p95_step_ms)] {
        let name = format!("step_seconds_{stat}");
        family(&name, "gauge", &format!("Agent time of a step, {what}."), &[("", secs(v))]);
    }
    family(
        "handoff_latency_seconds_mean",
        "gauge",
        "Ready-to-dispatch time of accepted hand-overs, mean.",
        &[("", secs(m.avg_handoff_latency_ms))],
    );
    family("retries_total", "counter", "Retries across runs.", &[("", n(m.retries))]);
    family("refused_handoffs_total", "counter", "Hand-overs refused.", &[("", n(m.refused_handoffs))]);
    family(
        "consensus_disagreements_total",
        "counter",
        "Parallel groups whose votes disagreed.",
        &[("", n(m.consensus_disagreements))],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family has one `# TYPE`, its samples carry its own name, no `quantile` label sits on
    /// a gauge, counters end in `_total`, and times are in seconds.
    #[test]
    fn the_prometheus_text_is_well_typed() {
        let m = Metrics {
            completed_workflows: 3,
            p50_coordination_ms: Some(2.0),
            p95_coordination_ms: Some(9.0),
            avg_coordination_time_ms: Some(4.0),
            p50_step_ms: Some(1500.0),
            retries: 2,
            ..Metrics::default()
        };
        let text = prometheus(&m);
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_default();
                family = name.to_owned();
                assert!(kind == "gauge" || kind == "counter", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&format!("{family} ")) || line.starts_with(&format!("{family}{{")),
                    "{line} outside {family}"
                );
                assert!(!line.contains("quantile"), "{line}");
            }
        }
        assert!(text.contains("ltmc_coordination_seconds_p95 0.009\n"), "{text}");
        assert!(text.contains("ltmc_step_seconds_p50 1.5\n"), "{text}");
        assert!(text.contains("ltmc_retries_total 2\n"), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("ltmc_step_seconds_p95")),
            "a time with nothing to measure has no sample"
        );
    }
}
