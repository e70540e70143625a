//! Result aggregation for the `parallel` pattern: how the agents' votes decide the run.
//!
//! A step's vote is the `vote` of its agent's result, or `completed` when it gives none; a step
//! that failed for good votes `failed`. Modes:
//!
//! | mode | decided when | succeeds when |
//! |---|---|---|
//! | `all` | every step finished (a failure ends the run at once) | every step completed |
//! | `first` | the first step completes (the others are abandoned), or all failed | a step completed |
//! | `any` | every step finished | at least one step completed |
//! | `majority` | every step finished | one vote other than `failed` is held by more than half |
//! | `consensus_required` | every step finished (a failure ends the run at once) | every vote is the same |

use std::collections::BTreeMap;

/// The vote of a step that failed for good.
pub const FAILED_VOTE: &str = "failed";
/// The vote of a step whose agent completed without voting.
pub const COMPLETED_VOTE: &str = "completed";

/// An aggregation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every agent must succeed.
    All,
    /// At least one.
    Any,
    /// The first to complete decides.
    First,
    /// More than half vote the same (not `failed`).
    Majority,
    /// Every agent votes the same.
    Consensus,
}

impl Mode {
    /// From the workflow's `aggregation` value.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "all" => Mode::All,
            "any" => Mode::Any,
            "first" => Mode::First,
            "majority" => Mode::Majority,
            "consensus_required" => Mode::Consensus,
            _ => return None,
        })
    }

    /// Whether a step failing for good leaves the run going (the group decides later).
    pub fn tolerates_failures(self) -> bool {
        matches!(self, Mode::Any | Mode::First | Mode::Majority)
    }
}

/// The group's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The winning vote, if there is one.
    pub decision: Option<String>,
    /// Whether every finished step voted the same.
    pub agreed: bool,
    /// Whether the run succeeds.
    pub success: bool,
}

/// Decides the group from each step's vote (`None` while it has not finished), or `None` when
/// it cannot be decided yet.
pub fn verdict(mode: Mode, votes: &[Option<&str>]) -> Option<Verdict> {
    let finished: Vec<&str> = votes.iter().flatten().copied().collect();
    let all_finished = finished.len() == votes.len();
    let agreed = finished.windows(2).all(|w| w[0] == w[1]);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &finished {
        *counts.entry(v).or_default() += 1;
    }
    let completed = finished.iter().filter(|v| **v != FAILED_VOTE).count();
    let top = counts.iter().filter(|(v, _)| **v != FAILED_VOTE).max_by_key(|(_, n)| **n).map(|(v, n)| (*v, *n));
    match mode {
        Mode::First => {
            let first = votes.iter().flatten().find(|v| **v != FAILED_VOTE);
            match first {
                Some(v) => Some(Verdict { decision: Some((*v).to_owned()), agreed, success: true }),
                None if all_finished => Some(Verdict { decision: None, agreed, success: false }),
                None => None,
            }
        }
        _ if !all_finished => None,
        Mode::All => Some(Verdict {
            decision: agreed.then(|| finished.first().map(|v| (*v).to_owned())).flatten(),
            agreed,
            success: completed == votes.len(),
        }),
        Mode::Any => Some(Verdict { decision: top.map(|(v, _)| v.to_owned()), agreed, success: completed > 0 }),
        Mode::Majority => {
            let winner = top.filter(|(_, n)| *n * 2 > votes.len()).map(|(v, _)| v.to_owned());
            Some(Verdict { success: winner.is_some(), decision: winner, agreed })
        }
        Mode::Consensus => {
            let success = agreed && completed == votes.len();
            Some(Verdict {
                decision: success.then(|| finished.first().map(|v| (*v).to_owned())).flatten(),
                agreed,
                success,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_decides_as_documented() {
        let v = |d: Option<&str>, agreed, success| Some(Verdict { decision: d.map(str::to_owned), agreed, success });
        assert_eq!(verdict(Mode::Consensus, &[Some("approve"), Some("approve")]), v(Some("approve"), true, true));
        assert_eq!(verdict(Mode::Consensus, &[Some("approve"), Some("reject")]), v(None, false, false));
        assert_eq!(verdict(Mode::Consensus, &[Some("approve"), None]), None);
        assert_eq!(verdict(Mode::Majority, &[Some("a"), Some("a"), Some("b")]), v(Some("a"), false, true));
        assert_eq!(verdict(Mode::Majority, &[Some("a"), Some("b"), Some("failed")]), v(None, false, false));
        assert_eq!(
            verdict(Mode::Majority, &[Some("a"), Some("a"), Some("failed"), Some("failed")]),
            v(None, false, false)
        );
        assert_eq!(verdict(Mode::Any, &[Some("failed"), Some("x")]), v(Some("x"), false, true));
        assert_eq!(verdict(Mode::Any, &[Some("failed"), Some("failed")]), v(None, true, false));
        assert_eq!(verdict(Mode::First, &[None, Some("x"), None]), v(Some("x"), true, true));
        assert_eq!(verdict(Mode::First, &[Some("failed"), None]), None);
        assert_eq!(verdict(Mode::First, &[Some("failed"), Some("failed")]), v(None, true, false));
        assert_eq!(verdict(Mode::All, &[Some("completed"), Some("completed")]), v(Some("completed"), true, true));
    }
}
