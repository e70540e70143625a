//! One deployment's NATS names. Every stream and subject an engine, its relay and its workers
//! use starts with the deployment's prefix (`nats_prefix`, default `ltmc`), so deployments
//! sharing a NATS server never see each other's traffic.

/// The NATS names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Names {
        Names { prefix: "ltmc".into() }
    }
}

/// Longest prefix accepted.
const MAX_PREFIX: usize = 32;

impl Names {
    /// The names under `prefix`: lower-case letters, digits, `-` and `_`, 1 to 32 characters,
    /// starting with a letter. (Lower case only: stream names are the prefix in upper case, so
    /// `Dev` and `dev` would share them.)
    pub fn new(prefix: &str) -> Result<Names, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Names { prefix: prefix.to_owned() })
        } else {
            Err(format!(
                "NATS prefix {:?} must be 1 to {MAX_PREFIX} lower-case letters, digits, '-' or '_', starting with a letter",
                // Shortened; `{:?}` escapes control characters.
                prefix.chars().take(MAX_PREFIX + 8).collect::<String>()
            ))
        }
    }

    /// The prefix itself: the first token of every subject.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.to_ascii_uppercase())
    }

    /// The relay's stream of events (`LTMC_EVENTS`).
    pub fn events_stream(&self) -> String {
        self.stream("EVENTS")
    }

    /// The first tokens of the events' subjects (`ltmc.events`).
    pub fn events_subjects(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The work queue of tasks for workers (`LTMC_TASKS`).
    pub fn tasks_stream(&self) -> String {
        self.stream("TASKS")
    }

    /// The stream keeping workers' reports (`LTMC_RESULTS`).
    pub fn results_stream(&self) -> String {
        self.stream("RESULTS")
    }

    /// Subject of an agent's tasks (`ltmc.tasks.<agent>`).
    pub fn task_subject(&self, agent: &str) -> String {
        format!("{}.tasks.{agent}", self.prefix)
    }

    /// Subject of a run's reports (`ltmc.results.<run>`).
    pub fn results_subject(&self, run_id: &str) -> String {
        format!("{}.results.{run_id}", self.prefix)
    }

    /// Subject on which a program emits `trigger` into a run (`ltmc.emit.<run>.<trigger>`).
    pub fn emit_subject(&self, run_id: &str, trigger: &str) -> String {
        format!("{}.emit.{run_id}.{trigger}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_names_are_the_documented_ones() {
        let n = Names::default();
        assert_eq!(
            [n.events_stream(), n.tasks_stream(), n.results_stream(), n.events_subjects()],
            ["LTMC_EVENTS", "LTMC_TASKS", "LTMC_RESULTS", "ltmc.events"]
        );
        assert_eq!(n.task_subject("a"), "ltmc.tasks.a");
        assert_eq!(n.results_subject("r"), "ltmc.results.r");
        assert_eq!(n.emit_subject("r", "T"), "ltmc.emit.r.T");
        let staging = Names::new("staging-2").expect("valid");
        assert_eq!(staging.tasks_stream(), "STAGING-2_TASKS");
        assert_eq!(staging.task_subject("a"), "staging-2.tasks.a");
    }

    #[test]
    fn a_prefix_that_could_collide_or_break_a_subject_is_refused() {
        for bad in ["", "Dev", "a.b", "a*", ">", "a b", "1abc", &"a".repeat(33), "ü"] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
