//! The one shape every pattern compiles to: a DAG of steps.

use serde_json::Value;
use std::collections::HashMap;

use super::{Error, Workflow};

/// A compiled workflow: steps with the indices of the steps they need, in a valid order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps in file order; `needs` hold indices into this list.
    pub steps: Vec<PlanStep>,
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    /// Step name.
    pub name: String,
    /// Agent name (a key of the workflow's `agents`).
    pub agent: String,
    /// Indices of the steps that must complete first.
    pub needs: Vec<usize>,
    /// Fixed input, if the file gave one.
    pub input: Option<Value>,
}

impl Plan {
    /// Builds the plan and refuses cycles, naming one (`a -> b -> a`).
    pub fn compile(wf: &Workflow) -> Result<Plan, Error> {
        let index: HashMap<&str, usize> = wf.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut steps = Vec::with_capacity(wf.steps.len());
        for s in &wf.steps {
            let mut needs = Vec::with_capacity(s.needs.len());
            for n in &s.needs {
                let Some(&i) = index.get(n.as_str()) else {
                    return Err(Error {
                        file: String::new(),
                        line: None,
                        field: format!("steps.{}.needs", s.name),
                        message: format!("step `{}` needs `{n}`, which is not a step", s.name),
                    });
                };
                if !needs.contains(&i) {
                    needs.push(i);
                }
            }
            steps.push(PlanStep { name: s.name.clone(), agent: s.agent.clone(), needs, input: s.input.clone() });
        }
        let plan = Plan { steps };
        if let Some(cycle) = plan.find_cycle() {
            let names: Vec<&str> = cycle.iter().map(|&i| plan.steps[i].name.as_str()).collect();
            return Err(Error {
                file: String::new(),
                line: None,
                field: "needs".into(),
                message: format!("the steps form a cycle: `{}`; remove one of these needs", names.join(" -> ")),
            });
        }
        Ok(plan)
    }

    /// Indices of the steps that need step `i`.
    pub fn dependents(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.steps.iter().enumerate().filter(move |(_, s)| s.needs.contains(&i)).map(|(j, _)| j)
    }

    /// Indices of steps nothing depends on (the run's result comes from them).
    pub fn leaves(&self) -> Vec<usize> {
        let mut needed = vec![false; self.steps.len()];
        for s in &self.steps {
            for &n in &s.needs {
                needed[n] = true;
            }
        }
        (0..self.steps.len()).filter(|&i| !needed[i]).collect()
    }

    /// A cycle as a list of step indices, first repeated at the end; iterative DFS so a deep
    /// graph cannot overflow the stack.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let n = self.steps.len();
        let mut mark = vec![Mark::New; n];
        for root in 0..n {
            if mark[root] != Mark::New {
                continue;
            }
            // (node, next edge to explore)
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = Mark::Open;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                if let Some(&next) = self.steps[node].needs.get(*edge) {
                    *edge += 1;
                    match mark[next] {
                        Mark::New => {
                            mark[next] = Mark::Open;
                            stack.push((next, 0));
                        }
                        Mark::Open => {
                            let start = stack.iter().position(|&(s, _)| s == next).unwrap_or(0);
                            // Edges point from a step to what it needs; show them in run order.
                            let mut cycle: Vec<usize> = stack[start..].iter().map(|&(s, _)| s).collect();
                            cycle.reverse();
                            cycle.push(cycle[0]);
                            return Some(cycle);
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
        None
    }
}
