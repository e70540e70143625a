//! Given / when / then tests of the run decider: given these events (folded with `evolve`), when
//! this command, then these events or this rejection. Plus a property loop over random DAGs.

use ltmc_core::run::{
    Command, Effect, Outcome, Rejection, RunCompleted, RunEvent, RunFailed, RunStarted, RunState, RunStatus,
    StepCompleted, StepDispatched, StepFailed, StepReady, StepStatus, decide, evolve, pending_work,
};
use ltmc_core::spec::{AgentDef, Builtin, ParseOptions, Pattern, StepDef, Workflow, parse_str};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const RUN: &str = "0192aaaa-0000-7000-8000-000000000001";

fn workflow(yaml: &str) -> Workflow {
    parse_str(yaml, "test.yaml", &ParseOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn sequential() -> Workflow {
    workflow(
        "name: seq\npattern: sequential\nagents:\n  a: {builtin: echo}\n  b: {builtin: echo}\n  c: {builtin: echo}\ninput: {seed: 1}\n",
    )
}

fn parallel() -> Workflow {
    workflow(
        "name: par\npattern: parallel\nagents:\n  p1: {builtin: echo}\n  p2: {builtin: echo}\n  p3: {builtin: echo}\n",
    )
}

/// Three roots and an aggregate step that needs all of them.
fn fan_in() -> Workflow {
    workflow(
        "name: fan\nagents:\n  w: {builtin: echo}\n  agg: {builtin: echo}\nsteps:\n  - {name: r1, agent: w}\n  - {name: r2, agent: w}\n  - {name: r3, agent: w}\n  - {name: agg, needs: [r1, r2, r3]}\n",
    )
}

fn retrying(retries: u32) -> Workflow {
    workflow(&format!(
        "name: retry\npattern: sequential\nagents:\n  a:\n    builtin: fail\n    retries: {retries}\n  b: {{builtin: echo}}\n"
    ))
}

fn start(wf: &Workflow) -> Command {
    Command::Start { run_id: RUN.into(), workflow: wf.clone(), input: None, workdir: None }
}

fn completed(step: &str, attempt: u32, output: Value) -> Command {
    Command::RecordOutcome {
        step: step.into(),
        attempt,
        outcome: Outcome::Completed { output, facts: vec![], vote: None, events: vec![], duration_ms: 5 },
    }
}

fn failed(step: &str, attempt: u32) -> Command {
    Command::RecordOutcome {
        step: step.into(),
        attempt,
        outcome: Outcome::Failed { error: "boom".into(), duration_ms: 7 },
    }
}

fn retry(step: &str, attempt: u32) -> Command {
    Command::Retry { step: step.into(), attempt }
}

/// Folds `events` from the empty state; panics on an illegal transition.
fn given(events: &[RunEvent]) -> RunState {
    events.iter().fold(RunState::default(), |s, e| {
        evolve(s, e).unwrap_or_else(|err| panic!("given history does not fold: {err}"))
    })
}

/// A history built by deciding `cmds` in turn and folding each answer; returns the full log.
fn history(cmds: Vec<Command>) -> Vec<RunEvent> {
    let mut log = Vec::new();
    let mut s = RunState::default();
    for cmd in cmds {
        let events = decide(&s, cmd.clone()).unwrap_or_else(|r| panic!("{cmd:?} rejected: {r}"));
        for e in &events {
            s = evolve(s, e).unwrap_or_else(|err| panic!("decided events do not fold: {err}"));
        }
        log.extend(events);
    }
    log
}

fn ready(step: &str) -> RunEvent {
    RunEvent::StepReady(StepReady { step: step.into() })
}

fn dispatched(step: &str, agent: &str, attempt: u32) -> RunEvent {
    RunEvent::StepDispatched(StepDispatched {
        step: step.into(),
        agent: agent.into(),
        attempt,
        idempotency_key: format!("{RUN}/{step}/{attempt}"),
    })
}

fn step_completed(step: &str, attempt: u32, output: Value) -> RunEvent {
    RunEvent::StepCompleted(StepCompleted {
        step: step.into(),
        attempt,
        output,
        duration_ms: 5,
        facts: vec![],
        vote: None,
        events: vec![],
    })
}

fn run_started(wf: &Workflow, input: Value) -> RunEvent {
    let (definition, definition_hash) = wf.pinned();
    RunEvent::RunStarted(RunStarted {
        run_id: RUN.into(),
        workflow: wf.name.clone(),
        definition,
        definition_hash,
        input,
        workdir: None,
    })
}

/// Folds the answer into the state, so a test can go on from there.
fn then_fold(s: RunState, events: &[RunEvent]) -> RunState {
    events.iter().fold(s, |s, e| evolve(s, e).unwrap_or_else(|err| panic!("{err}")))
}

// ----------------------------------------------------------------------------------------- start

#[test]
fn start_emits_run_started_then_ready_and_dispatched_for_roots_only() {
    let wf = sequential();
    let events = decide(&RunState::default(), start(&wf)).expect("start");
    assert_eq!(events, vec![run_started(&wf, json!({"seed": 1})), ready("a"), dispatched("a", "a", 1)]);
    let s = given(&events);
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(s.version, 3);
    assert_eq!(s.steps[1].status, StepStatus::Pending);
    assert_eq!(s.step_input(0), json!({"seed": 1}), "the first step gets the run input");
}

#[test]
fn start_input_overrides_the_file_input() {
    let wf = sequential();
    let cmd = Command::Start { run_id: RUN.into(), workflow: wf.clone(), input: Some(json!([1, 2])), workdir: None };
    let events = decide(&RunState::default(), cmd).expect("start");
    assert_eq!(events[0], run_started(&wf, json!([1, 2])));
}

#[test]
fn start_twice_is_rejected() {
    let wf = sequential();
    let s = given(&history(vec![start(&wf)]));
    assert_eq!(decide(&s, start(&wf)), Err(Rejection::AlreadyStarted(RUN.into())));
}

#[test]
fn parallel_start_dispatches_every_root() {
    let wf = parallel();
    let events = decide(&RunState::default(), start(&wf)).expect("start");
    assert_eq!(
        events[1..],
        [
            ready("p1"),
            dispatched("p1", "p1", 1),
            ready("p2"),
            dispatched("p2", "p2", 1),
            ready("p3"),
            dispatched("p3", "p3", 1),
        ]
    );
    let s = given(&events);
    assert_eq!(
        pending_work(&s),
        vec![
            Effect::RunAgent { step: 0, attempt: 1 },
            Effect::RunAgent { step: 1, attempt: 1 },
            Effect::RunAgent { step: 2, attempt: 1 },
        ]
    );
}

// ------------------------------------------------------------------------------------ completion

#[test]
fn completing_step_one_releases_step_two_with_its_output() {
    let wf = sequential();
    let s = given(&history(vec![start(&wf)]));
    let events = decide(&s, completed("a", 1, json!({"from": "a"}))).expect("complete a");
    assert_eq!(events, vec![step_completed("a", 1, json!({"from": "a"})), ready("b"), dispatched("b", "b", 1)]);
    let s = then_fold(s, &events);
    assert_eq!(s.step_input(1), json!({"from": "a"}), "step 2 gets step 1's output");
    assert_eq!(pending_work(&s), vec![Effect::RunAgent { step: 1, attempt: 1 }]);
}

#[test]
fn completing_the_last_step_completes_the_run_with_its_output() {
    let wf = sequential();
    let s = given(&history(vec![start(&wf), completed("a", 1, json!("A")), completed("b", 1, json!("B"))]));
    let events = decide(&s, completed("c", 1, json!({"final": true}))).expect("complete c");
    assert_eq!(
        events,
        vec![
            step_completed("c", 1, json!({"final": true})),
            RunEvent::RunCompleted(RunCompleted { output: json!({"final": true}) }),
        ]
    );
    let s = then_fold(s, &events);
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(s.output, Some(json!({"final": true})));
    assert!(pending_work(&s).is_empty());
}

#[test]
fn aggregate_step_waits_for_all_its_needs_and_gets_a_map_of_outputs() {
    let wf = fan_in();
    let mut s = given(&history(vec![start(&wf)]));
    assert_eq!(pending_work(&s).len(), 3, "the three roots run at once");

    // Complete in an order other than file order.
    let e = decide(&s, completed("r2", 1, json!(2))).expect("r2");
    assert_eq!(e, vec![step_completed("r2", 1, json!(2))], "agg is not released yet");
    s = then_fold(s, &e);
    let e = decide(&s, completed("r3", 1, json!("three"))).expect("r3");
    assert_eq!(e, vec![step_completed("r3", 1, json!("three"))], "agg is not released yet");
    s = then_fold(s, &e);
    assert_eq!(s.steps[3].status, StepStatus::Pending);

    let e = decide(&s, completed("r1", 1, json!({"one": 1}))).expect("r1");
    assert_eq!(e, vec![step_completed("r1", 1, json!({"one": 1})), ready("agg"), dispatched("agg", "agg", 1)]);
    s = then_fold(s, &e);
    assert_eq!(s.step_input(3), json!({"r1": {"one": 1}, "r2": 2, "r3": "three"}));

    let e = decide(&s, completed("agg", 1, json!("merged"))).expect("agg");
    assert_eq!(e[1], RunEvent::RunCompleted(RunCompleted { output: json!("merged") }));
}

#[test]
fn parallel_run_output_is_a_map_of_the_final_steps() {
    let wf = parallel();
    let log = history(vec![
        start(&wf),
        completed("p2", 1, json!(2)),
        completed("p1", 1, json!(1)),
        completed("p3", 1, json!(3)),
    ]);
    assert_eq!(log.last(), Some(&RunEvent::RunCompleted(RunCompleted { output: json!({"p1": 1, "p2": 2, "p3": 3}) })));
    assert_eq!(given(&log).status, RunStatus::Completed);
}

#[test]
fn fixed_step_input_wins_over_outputs() {
    let wf = workflow(
        "agents: {w: {builtin: echo}}\nsteps:\n  - {name: a, agent: w}\n  - {name: b, agent: w, needs: [a], input: {fixed: 1}}\n",
    );
    let s = given(&history(vec![start(&wf), completed("a", 1, json!("ignored"))]));
    assert_eq!(s.step_input(1), json!({"fixed": 1}));
}

// --------------------------------------------------------------------------------------- failure

#[test]
fn failure_without_retries_fails_the_run() {
    let wf = sequential();
    let s = given(&history(vec![start(&wf), completed("a", 1, json!(1))]));
    let events = decide(&s, failed("b", 1)).expect("fail b");
    assert_eq!(
        events,
        vec![
            RunEvent::StepFailed(StepFailed {
                step: "b".into(),
                attempt: 1,
                error: "boom".into(),
                duration_ms: 7,
                will_retry: false,
                retry_in_ms: None,
            }),
            RunEvent::RunFailed(RunFailed {
                reason: "step b failed after 1 attempt(s): boom".into(),
                step: Some("b".into()),
                unmet: vec![],
            }),
        ]
    );
    let s = then_fold(s, &events);
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.steps[1].status, StepStatus::Failed);
    assert_eq!(s.steps[2].status, StepStatus::Pending, "c never ran");
    assert!(pending_work(&s).is_empty());
}

#[test]
fn retries_wait_their_backoff_then_dispatch_the_next_attempt_until_they_run_out() {
    let wf = retrying(2);
    let mut s = given(&history(vec![start(&wf)]));
    for attempt in 1..=2 {
        // When the attempt fails: only StepFailed, with the wait before the next attempt.
        let events = decide(&s, failed("a", attempt)).expect("fail");
        let delay = ltmc_core::run::retry_delay_ms(1.0, attempt, &format!("{RUN}/a/{attempt}"));
        assert_eq!(
            events,
            vec![RunEvent::StepFailed(StepFailed {
                step: "a".into(),
                attempt,
                error: "boom".into(),
                duration_ms: 7,
                will_retry: true,
                retry_in_ms: Some(delay),
            })],
            "attempt {attempt}"
        );
        s = then_fold(s, &events);
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(pending_work(&s), vec![Effect::RetryAfter { step: 0, attempt: attempt + 1, delay_ms: delay }]);
        // An outcome while waiting is refused; so is a retry of another attempt.
        assert_eq!(decide(&s, failed("a", attempt)), Err(Rejection::NotRunning { step: "a".into(), attempt }));
        assert_eq!(
            decide(&s, retry("a", attempt + 2)),
            Err(Rejection::NotRunning { step: "a".into(), attempt: attempt + 2 })
        );
        // When the wait is over: the next attempt is dispatched.
        let events = decide(&s, retry("a", attempt + 1)).expect("retry");
        assert_eq!(events, vec![dispatched("a", "a", attempt + 1)]);
        s = then_fold(s, &events);
        assert_eq!(pending_work(&s), vec![Effect::RunAgent { step: 0, attempt: attempt + 1 }]);
        assert_eq!(s.steps[0].attempts, attempt + 1);
    }
    let events = decide(&s, failed("a", 3)).expect("last failure");
    assert!(
        matches!(&events[..], [RunEvent::StepFailed(StepFailed { will_retry: false, attempt: 3, retry_in_ms: None, .. }), RunEvent::RunFailed(RunFailed { step: Some(st), .. })] if st == "a"),
        "{events:?}"
    );
    assert_eq!(then_fold(s, &events).status, RunStatus::Failed);
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    use ltmc_core::run::{MAX_BACKOFF_MS, retry_delay_ms};
    for attempt in 1..=10u32 {
        let exp = (1000u64 << (attempt - 1)).min(MAX_BACKOFF_MS);
        let d = retry_delay_ms(1.0, attempt, &format!("k/{attempt}"));
        assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d} not in [{}, {exp}]", exp / 2);
        assert_eq!(d, retry_delay_ms(1.0, attempt, &format!("k/{attempt}")), "deterministic");
    }
    // Different steps failing together spread out.
    let spread: std::collections::BTreeSet<u64> =
        (0..20).map(|i| retry_delay_ms(1.0, 1, &format!("r/s{i}/1"))).collect();
    assert!(spread.len() > 10, "{spread:?}");
    assert_eq!(retry_delay_ms(0.0, 3, "k"), 0);
}

#[test]
fn a_retry_that_succeeds_continues_the_run() {
    let wf = retrying(1);
    let s = given(&history(vec![start(&wf), failed("a", 1), retry("a", 2)]));
    let events = decide(&s, completed("a", 2, json!("second time"))).expect("complete attempt 2");
    assert_eq!(events, vec![step_completed("a", 2, json!("second time")), ready("b"), dispatched("b", "b", 1)]);
}

// ------------------------------------------------------------------------------------ rejections

#[test]
fn duplicate_outcome_for_the_same_attempt_is_not_running() {
    let wf = sequential();
    let s = given(&history(vec![start(&wf), completed("a", 1, json!(1))]));
    assert_eq!(decide(&s, completed("a", 1, json!(1))), Err(Rejection::NotRunning { step: "a".into(), attempt: 1 }));
    assert_eq!(decide(&s, failed("a", 1)), Err(Rejection::NotRunning { step: "a".into(), attempt: 1 }));
}

#[test]
fn stale_or_future_attempts_are_not_running() {
    let wf = retrying(3);
    let s = given(&history(vec![start(&wf), failed("a", 1), retry("a", 2)]));
    // Attempt 2 is running; a late result of attempt 1 and a made-up attempt 3 are refused.
    assert_eq!(decide(&s, failed("a", 1)), Err(Rejection::NotRunning { step: "a".into(), attempt: 1 }));
    assert_eq!(decide(&s, completed("a", 3, json!(null))), Err(Rejection::NotRunning { step: "a".into(), attempt: 3 }));
    // A step that was never dispatched.
    assert_eq!(decide(&s, completed("b", 1, json!(null))), Err(Rejection::NotRunning { step: "b".into(), attempt: 1 }));
}

#[test]
fn unknown_step_and_not_started_are_rejected() {
    let wf = sequential();
    assert_eq!(decide(&RunState::default(), completed("a", 1, json!(1))), Err(Rejection::NotStarted));
    assert_eq!(decide(&RunState::default(), Command::Abort { reason: "x".into() }), Err(Rejection::NotStarted));
    let s = given(&history(vec![start(&wf)]));
    assert_eq!(decide(&s, completed("zz", 1, json!(1))), Err(Rejection::UnknownStep("zz".into())));
}

#[test]
fn outcome_after_the_run_finished_is_rejected() {
    let wf = sequential();
    let done = given(&history(vec![
        start(&wf),
        completed("a", 1, json!(1)),
        completed("b", 1, json!(2)),
        completed("c", 1, json!(3)),
    ]));
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(decide(&done, completed("c", 1, json!(3))), Err(Rejection::Finished("completed")));
    assert_eq!(decide(&done, Command::Abort { reason: "late".into() }), Err(Rejection::Finished("completed")));

    let par = parallel();
    let failed_run = given(&history(vec![start(&par), failed("p1", 1)]));
    assert_eq!(failed_run.status, RunStatus::Failed);
    // p2 was still running when p1 failed the run; its late result is refused.
    assert_eq!(decide(&failed_run, completed("p2", 1, json!(2))), Err(Rejection::Finished("failed")));
}

#[test]
fn abort_fails_a_running_run_without_a_step() {
    let wf = parallel();
    let s = given(&history(vec![start(&wf)]));
    let events = decide(&s, Command::Abort { reason: "run timed out".into() }).expect("abort");
    assert_eq!(
        events,
        vec![RunEvent::RunFailed(RunFailed { reason: "run timed out".into(), step: None, unmet: vec![] })]
    );
    let s = then_fold(s, &events);
    assert_eq!(s.failure.as_deref(), Some("run timed out"));
    assert!(pending_work(&s).is_empty(), "a failed run has no work left");
}

// --------------------------------------------------------------------------------------- evolve

#[test]
fn illegal_transitions_are_named_errors() {
    let wf = sequential();
    let started = run_started(&wf, Value::Null);

    let err = evolve(RunState::default(), &step_completed("a", 1, json!(1))).expect_err("completed before started");
    assert_eq!(err.version, 1);
    assert_eq!(err.event, "StepCompleted");
    assert!(err.to_string().contains("[LTMC-E001]"), "{err}");

    let s = given(std::slice::from_ref(&started));
    let err = evolve(s.clone(), &started).expect_err("started twice");
    assert_eq!((err.version, err.event.as_str()), (2, "RunStarted"));

    // Dispatch before ready; completion of a step that was never dispatched; unknown step.
    assert!(evolve(s.clone(), &dispatched("a", "a", 1)).is_err());
    assert!(evolve(s.clone(), &step_completed("a", 1, json!(1))).is_err());
    assert!(evolve(s.clone(), &ready("nope")).is_err());
    // Run completed while steps are unfinished.
    assert!(evolve(s.clone(), &RunEvent::RunCompleted(RunCompleted { output: Value::Null })).is_err());

    let s = given(&[started.clone(), ready("a"), dispatched("a", "a", 1)]);
    // Ready twice, attempt 2 without a failed attempt 1, completion of the wrong attempt.
    assert!(evolve(s.clone(), &ready("a")).is_err());
    assert!(evolve(s.clone(), &dispatched("a", "a", 2)).is_err());
    assert!(evolve(s.clone(), &step_completed("a", 2, json!(1))).is_err());

    // Nothing follows a finished run.
    let failed_run = then_fold(s, &[RunEvent::RunFailed(RunFailed { reason: "x".into(), step: None, unmet: vec![] })]);
    let err = evolve(failed_run, &ready("b")).expect_err("after the end");
    assert_eq!(err.version, 5);
}

#[test]
fn run_started_with_an_unreadable_definition_is_illegal() {
    let bad = RunEvent::RunStarted(RunStarted {
        run_id: RUN.into(),
        workflow: "w".into(),
        definition: json!({"not": "a workflow"}),
        definition_hash: "sha256:00".into(),
        input: Value::Null,
        workdir: None,
    });
    assert!(evolve(RunState::default(), &bad).is_err());
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let wf = retrying(1);
    for e in history(vec![start(&wf), failed("a", 1), retry("a", 2), completed("a", 2, json!({"x": [1]}))]) {
        let back = RunEvent::from_parts(e.event_type(), &e.data()).expect("read back");
        assert_eq!(back, e);
    }
    assert!(RunEvent::from_parts("StepExploded", &json!({})).is_err());
}

// ------------------------------------------------------------------------------------- recovery

#[test]
fn pending_work_after_a_crash_re_derives_the_dispatched_agent() {
    let wf = sequential();
    let s = given(&[run_started(&wf, Value::Null), ready("a"), dispatched("a", "a", 1)]);
    assert_eq!(pending_work(&s), vec![Effect::RunAgent { step: 0, attempt: 1 }]);

    // After a failed attempt, its retry's wait is the work; after the retry's dispatch, the agent.
    let wf = retrying(1);
    let s = given(&history(vec![start(&wf), failed("a", 1)]));
    assert!(matches!(pending_work(&s)[..], [Effect::RetryAfter { step: 0, attempt: 2, .. }]));
    let s = given(&history(vec![start(&wf), failed("a", 1), retry("a", 2)]));
    assert_eq!(pending_work(&s), vec![Effect::RunAgent { step: 0, attempt: 2 }]);

    // Ready but not dispatched (cannot be written by this decider, but must not start twice).
    let s = given(&[run_started(&wf, Value::Null), ready("a")]);
    assert!(pending_work(&s).is_empty());
    assert!(pending_work(&RunState::default()).is_empty());
}

// ------------------------------------------------------------------------------------- property

/// Knuth's MMIX LCG; deterministic, no crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random DAG of 1..=30 steps listed in a shuffled order (so needs also point forward in the
/// file), each needing a random subset of the steps before it in a hidden topological order.
fn random_workflow(rng: &mut Lcg, retries: u32) -> Workflow {
    let n = 1 + rng.below(30);
    let mut steps: Vec<StepDef> = (0..n)
        .map(|i| {
            let mut needs = Vec::new();
            for j in 0..i {
                if rng.below(4) == 0 {
                    needs.push(format!("s{j}"));
                }
            }
            StepDef { name: format!("s{i}"), agent: "w".into(), needs, input: None }
        })
        .collect();
    for i in (1..steps.len()).rev() {
        let j = rng.below(i + 1);
        steps.swap(i, j);
    }
    let agent = AgentDef { builtin: Some(Builtin::Echo), retries: Some(retries), ..Default::default() };
    Workflow {
        name: "random".into(),
        pattern: Pattern::Dependency,
        agents: BTreeMap::from([("w".to_owned(), agent)]),
        steps,
        handoff_validation: false,
        handoff_policy: Default::default(),
        rollback_on_failure: false,
        coordination_points: vec![],
        aggregation: None,
        success_criteria: vec![],
        timeout: None,
        input: json!("in"),
        triggers: BTreeMap::new(),
        dynamic_agent_allocation: false,
        max_activations: None,
        idle_timeout: None,
    }
}

#[test]
fn random_dags_always_fold_and_complete() {
    let mut rng = Lcg(0x5eed);
    for case in 0..400 {
        let retries = (case % 3) as u32;
        let wf = random_workflow(&mut rng, retries);
        let plan = wf.plan().expect("a random DAG is acyclic");
        let mut s = RunState::default();
        let mut log: Vec<RunEvent> = Vec::new();
        let apply = |s: RunState, events: Vec<RunEvent>, log: &mut Vec<RunEvent>| {
            let mut s = s;
            for e in events {
                s = evolve(s, &e).unwrap_or_else(|err| panic!("case {case}: {err}\nlog: {log:#?}"));
                log.push(e);
            }
            s
        };
        let events = decide(&s, start(&wf)).expect("start");
        s = apply(s, events, &mut log);
        let mut done_outcomes: Vec<(String, u32)> = Vec::new();
        let mut guard = 0;
        while s.status == RunStatus::Running {
            guard += 1;
            assert!(guard < 10_000, "case {case}: the run makes no progress");
            let work = pending_work(&s);
            assert!(!work.is_empty(), "case {case}: a running run with no pending work is stuck");
            for w in &work {
                let (Effect::RunAgent { step, .. } | Effect::RetryAfter { step, .. }) = w else {
                    panic!("case {case}: {w:?} in a workflow that is not event-driven");
                };
                let st = &plan.steps[*step];
                assert!(
                    st.needs.iter().all(|&n| s.steps[n].status == StepStatus::Completed),
                    "case {case}: {} runs before what it needs",
                    st.name
                );
            }
            // Sometimes re-deliver an old outcome: it must be refused and change nothing.
            if !done_outcomes.is_empty() && rng.below(5) == 0 {
                let (step, attempt) = done_outcomes[rng.below(done_outcomes.len())].clone();
                let r = decide(&s, completed(&step, attempt, json!("dup")));
                assert_eq!(r, Err(Rejection::NotRunning { step, attempt }), "case {case}");
            }
            let (step, attempt, cmd) = match work[rng.below(work.len())].clone() {
                // A retry's wait is over.
                Effect::RetryAfter { step, attempt, .. } => (step, attempt, retry(&plan.steps[step].name, attempt)),
                Effect::IdleAfter { .. } => panic!("case {case}: idle in a workflow that is not event-driven"),
                Effect::RunAgent { step, attempt } => {
                    let name = plan.steps[step].name.clone();
                    // Fail only while a retry remains, so every run must complete.
                    let cmd = if attempt <= retries && rng.below(3) == 0 {
                        failed(&name, attempt)
                    } else {
                        let input = s.step_input(step);
                        completed(&name, attempt, json!({"step": name, "input": input}))
                    };
                    (step, attempt, cmd)
                }
            };
            let name = plan.steps[step].name.clone();
            let is_outcome = matches!(cmd, Command::RecordOutcome { .. });
            let events = decide(&s, cmd).unwrap_or_else(|r| panic!("case {case}: rejected {r}"));
            s = apply(s, events, &mut log);
            if is_outcome {
                done_outcomes.push((name, attempt));
            }
        }
        assert_eq!(s.status, RunStatus::Completed, "case {case}: {:?}", s.failure);
        assert!(s.steps.iter().all(|st| st.status == StepStatus::Completed), "case {case}");
        assert_eq!(s.version as usize, log.len());
        assert!(matches!(log.last(), Some(RunEvent::RunCompleted(_))), "case {case}");
        let readies = log.iter().filter(|e| matches!(e, RunEvent::StepReady(_))).count();
        assert_eq!(readies, plan.steps.len(), "case {case}: every step becomes ready exactly once");
        // Replaying the log from scratch gives the same state.
        let replayed = given(&log);
        assert_eq!(
            (replayed.status, replayed.version, replayed.output.clone()),
            (s.status, s.version, s.output.clone())
        );
        assert!(pending_work(&replayed).is_empty());
    }
}

// ------------------------------------------------------------------ facts, hand-overs, criteria

fn completed_with_facts(step: &str, facts: &[&str]) -> Command {
    Command::RecordOutcome {
        step: step.into(),
        attempt: 1,
        outcome: Outcome::Completed {
            output: json!(null),
            facts: facts.iter().map(|f| (*f).to_owned()).collect(),
            vote: None,
            events: vec![],
            duration_ms: 1,
        },
    }
}

fn gated(validation: bool) -> Workflow {
    workflow(&format!(
        "name: gated\npattern: sequential\nhandoff_validation: {validation}\nsuccess_criteria: [review_approved]\nagents:\n  dev: {{builtin: noop}}\n  test:\n    builtin: noop\n    requires: [code_review_passed, documentation_updated]\n  review: {{builtin: noop}}\n"
    ))
}

#[test]
fn a_hand_over_whose_prerequisites_hold_is_accepted_before_the_dispatch() {
    let wf = gated(true);
    let s = given(&history(vec![start(&wf)]));
    let events = decide(&s, completed_with_facts("dev", &["code_review_passed", "documentation_updated"])).expect("ok");
    assert!(
        matches!(&events[..], [RunEvent::StepCompleted(c), RunEvent::StepReady(_), RunEvent::HandoffAccepted(h), RunEvent::StepDispatched(d)]
        if c.facts.len() == 2 && h.step == "test" && h.from == ["dev"] && h.requires.len() == 2 && d.step == "test"),
        "{events:?}"
    );
    let s = then_fold(s, &events);
    assert!(s.facts.contains("code_review_passed"));
}

#[test]
fn a_hand_over_with_unmet_prerequisites_is_refused_and_fails_the_run() {
    let wf = gated(true);
    let s = given(&history(vec![start(&wf)]));
    let events = decide(&s, completed_with_facts("dev", &["code_review_passed"])).expect("decided");
    match &events[..] {
        [RunEvent::StepCompleted(_), RunEvent::StepReady(r), RunEvent::HandoffRefused(h), RunEvent::RunFailed(f)] => {
            assert_eq!(r.step, "test");
            assert_eq!(h.unmet, ["documentation_updated"]);
            assert_eq!(f.unmet, ["documentation_updated"]);
            assert_eq!(f.step.as_deref(), Some("test"));
            assert!(f.reason.contains("unmet prerequisites documentation_updated"), "{}", f.reason);
        }
        other => panic!("{other:?}"),
    }
    let s = then_fold(s, &events);
    assert_eq!(s.status, RunStatus::Failed);
    assert!(pending_work(&s).is_empty());
}

#[test]
fn without_handoff_validation_requires_are_not_checked() {
    let wf = gated(false);
    let s = given(&history(vec![start(&wf)]));
    let events = decide(&s, completed_with_facts("dev", &[])).expect("decided");
    assert!(
        matches!(&events[..], [RunEvent::StepCompleted(_), RunEvent::StepReady(_), RunEvent::StepDispatched(_)]),
        "{events:?}"
    );
}

#[test]
fn success_criteria_decide_between_completed_and_failed() {
    let wf = gated(false);
    let done_but_unapproved = given(&history(vec![
        start(&wf),
        completed_with_facts("dev", &[]),
        completed_with_facts("test", &["all_tests_pass"]),
    ]));
    let events = decide(&done_but_unapproved, completed_with_facts("review", &[])).expect("decided");
    match &events[..] {
        [RunEvent::StepCompleted(_), RunEvent::RunFailed(f)] => {
            assert_eq!(f.unmet, ["review_approved"]);
            assert!(f.reason.contains("success criteria are not met: review_approved"), "{}", f.reason);
        }
        other => panic!("{other:?}"),
    }
    let events = decide(&done_but_unapproved, completed_with_facts("review", &["review_approved"])).expect("decided");
    assert!(matches!(&events[..], [RunEvent::StepCompleted(_), RunEvent::RunCompleted(_)]), "{events:?}");
}

#[test]
fn a_hand_over_relies_only_on_the_facts_of_the_steps_it_needs() {
    // x reports the fact, but z needs only y: the hand-over to z must not depend on whether x
    // happened to finish first.
    let wf = workflow(
        "name: branches\nhandoff_validation: true\nagents:\n  w: {builtin: noop}\n  g: {builtin: noop, requires: [ok]}\nsteps:\n  - {name: x, agent: w}\n  - {name: y, agent: w}\n  - {name: z, agent: g, needs: [y]}\n",
    );
    let s = given(&history(vec![start(&wf), completed_with_facts("x", &["ok"])]));
    let events = decide(&s, completed_with_facts("y", &[])).expect("decided");
    assert!(events.iter().any(|e| matches!(e, RunEvent::HandoffRefused(h) if h.step == "z")), "{events:?}");
    // When the fact comes from a step it needs (even indirectly), it counts.
    let wf = workflow(
        "name: chain\nhandoff_validation: true\nagents:\n  w: {builtin: noop}\n  g: {builtin: noop, requires: [ok]}\nsteps:\n  - {name: x, agent: w}\n  - {name: y, agent: w, needs: [x]}\n  - {name: z, agent: g, needs: [y]}\n",
    );
    let s = given(&history(vec![start(&wf), completed_with_facts("x", &["ok"])]));
    let events = decide(&s, completed_with_facts("y", &[])).expect("decided");
    assert!(events.iter().any(|e| matches!(e, RunEvent::HandoffAccepted(h) if h.step == "z")), "{events:?}");
}

#[test]
fn a_coordination_point_is_reached_when_its_steps_have_completed() {
    let wf = workflow(
        "name: points\npattern: parallel\ncoordination_points:\n  integration: [p1, p2]\n  ready: []\nagents:\n  p1: {builtin: noop}\n  p2: {builtin: noop}\n  p3: {builtin: noop}\n",
    );
    let s = given(&history(vec![start(&wf), completed("p1", 1, json!(1))]));
    assert!(s.reached.is_empty());
    let events = decide(&s, completed("p2", 1, json!(2))).expect("decided");
    assert!(
        matches!(&events[..], [RunEvent::StepCompleted(_), RunEvent::CoordinationPointReached(c)] if c.point == "integration" && c.by == "p2"),
        "{events:?}"
    );
    let s = then_fold(s, &events);
    // A point without steps is reached by the fact of its name.
    let events = decide(&s, completed_with_facts("p3", &["ready"])).expect("decided");
    assert!(
        events.iter().any(|e| matches!(e, RunEvent::CoordinationPointReached(c) if c.point == "ready")),
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(RunEvent::RunCompleted(_))));
}
