//! Workflow and agents files: the seed shapes parse as written, and every refusal says which
//! file, which line and which field.

use ltmc_core::spec::{
    AgentDef, AgentKind, Builtin, Error, MAX_FILE_BYTES, MAX_STEPS, ParseOptions, Pattern, Workflow, parse_agents_str,
    parse_str,
};
use std::sync::mpsc;
use std::time::Duration;

fn noop() -> AgentDef {
    AgentDef { builtin: Some(Builtin::Noop), ..Default::default() }
}

/// Options with `names` defined as builtin `noop` agents, as an agents file would.
fn with_agents(names: &[&str]) -> ParseOptions {
    ParseOptions { agents: names.iter().map(|n| ((*n).to_owned(), noop())).collect(), default_name: None }
}

fn parse(src: &str, file: &str) -> Result<Workflow, Error> {
    parse_str(src, file, &ParseOptions::default())
}

fn parse_err(src: &str, file: &str) -> Error {
    match parse(src, file) {
        Ok(wf) => panic!("expected {file} to be refused, got {wf:#?}"),
        Err(e) => e,
    }
}

fn step_names(wf: &Workflow) -> Vec<&str> {
    wf.steps.iter().map(|s| s.name.as_str()).collect()
}

// ---------------------------------------------------------------- seed shapes, accepted as written

fn assert_seed_sequential(wf: &Workflow) {
    assert_eq!(wf.pattern, Pattern::Sequential);
    assert_eq!(step_names(wf), ["dev", "test", "review", "docs"]);
    assert!(wf.handoff_validation);
    assert!(wf.rollback_on_failure);
    let plan = wf.plan().expect("plan");
    let needs: Vec<Vec<usize>> = plan.steps.iter().map(|s| s.needs.clone()).collect();
    assert_eq!(needs, vec![vec![], vec![0], vec![1], vec![2]]);
    assert_eq!(plan.leaves(), vec![3]);
    assert_eq!(wf.agents.len(), 4);
    assert_eq!(wf.agents["review"].kind(), Ok(AgentKind::Builtin(Builtin::Noop)));
}

#[test]
fn seed_sequential_json_with_agents_from_options() {
    let src = r#"{"pattern": "sequential", "agents": ["dev","test","review","docs"], "handoff_validation": true, "rollback_on_failure": true}"#;
    let wf = parse_str(src, "seq.json", &with_agents(&["dev", "test", "review", "docs", "unused"]))
        .expect("seed sequential JSON");
    assert_seed_sequential(&wf);
    assert!(!wf.agents.contains_key("unused"), "only the agents the steps use are pinned");
}

#[test]
fn seed_sequential_yaml_with_agents_from_options() {
    let src =
        "pattern: sequential\nagents: [dev, test, review, docs]\nhandoff_validation: true\nrollback_on_failure: true\n";
    let wf =
        parse_str(src, "seq.yaml", &with_agents(&["dev", "test", "review", "docs"])).expect("seed sequential YAML");
    assert_seed_sequential(&wf);
}

#[test]
fn seed_sequential_json_given_to_a_yaml_named_file() {
    // JSON is YAML; a `.yaml` file holding the seed's JSON must work too.
    let src = r#"{"pattern": "sequential", "agents": ["dev","test","review","docs"], "handoff_validation": true, "rollback_on_failure": true}"#;
    let wf =
        parse_str(src, "seq.yaml", &with_agents(&["dev", "test", "review", "docs"])).expect("JSON in a .yaml file");
    assert_seed_sequential(&wf);
}

fn assert_seed_parallel(wf: &Workflow) {
    assert_eq!(wf.pattern, Pattern::Parallel);
    assert_eq!(step_names(wf), ["frontend", "backend", "database", "api"]);
    assert!(wf.steps.iter().all(|s| s.needs.is_empty()));
    let points: Vec<&str> = wf.coordination_points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(points, ["integration", "testing"]);
    assert!(wf.coordination_points.iter().all(|p| p.after.is_empty()));
    assert_eq!(wf.aggregation.as_deref(), Some("all"));
    assert_eq!(wf.plan().expect("plan").leaves(), vec![0, 1, 2, 3]);
}

#[test]
fn seed_parallel_json() {
    let src = r#"{"pattern": "parallel", "agents": ["frontend","backend","database","api"], "coordination_points": ["integration","testing"], "result_aggregation": true}"#;
    let opts = with_agents(&["frontend", "backend", "database", "api"]);
    assert_seed_parallel(&parse_str(src, "par.json", &opts).expect("seed parallel JSON"));
}

#[test]
fn seed_parallel_yaml() {
    let src = "pattern: parallel\nagents:\n  - frontend\n  - backend\n  - database\n  - api\ncoordination_points:\n  - integration\n  - testing\nresult_aggregation: true\n";
    let opts = with_agents(&["frontend", "backend", "database", "api"]);
    assert_seed_parallel(&parse_str(src, "par.yml", &opts).expect("seed parallel YAML"));
}

#[test]
fn seed_parallel_consensus_json_and_yaml() {
    let json =
        r#"{"agents": ["a1","a2","a3"], "pattern": "parallel", "aggregation": "consensus_required", "timeout": 1800}"#;
    let yaml = "agents: [a1, a2, a3]\npattern: parallel\naggregation: consensus_required\ntimeout: 1800\n";
    let opts = with_agents(&["a1", "a2", "a3"]);
    for (src, file) in [(json, "c.json"), (yaml, "c.yaml")] {
        let wf = parse_str(src, file, &opts).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(wf.pattern, Pattern::Parallel, "{file}");
        assert_eq!(wf.aggregation.as_deref(), Some("consensus_required"), "{file}");
        assert_eq!(wf.timeout, Some(1800.0), "{file}");
        assert_eq!(step_names(&wf), ["a1", "a2", "a3"], "{file}");
    }
}

#[test]
fn unknown_aggregation_is_refused() {
    let src = "agents: [a1]\npattern: parallel\naggregation: sometimes\n";
    let e = parse_str(src, "c.yaml", &with_agents(&["a1"])).expect_err("unknown aggregation");
    assert!(e.message.contains("sometimes"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn inline_agents_win_over_the_agents_file() {
    let src = "pattern: sequential\nagents:\n  dev: {builtin: fail}\n";
    let wf = parse_str(src, "w.yaml", &with_agents(&["dev"])).expect("parse");
    assert_eq!(wf.agents["dev"].kind(), Ok(AgentKind::Builtin(Builtin::Fail)));
}

#[test]
fn sequential_order_is_file_order_of_the_inline_map() {
    let src = "pattern: sequential\nagents:\n  zeta: {builtin: noop}\n  alpha: {builtin: echo}\n  mid:\n    run: [\"python3\", \"agent.py\"]\n    timeout: 5\n    retries: 2\n";
    let wf = parse(src, "order.yaml").expect("parse");
    assert_eq!(step_names(&wf), ["zeta", "alpha", "mid"]);
    assert_eq!(wf.steps[1].needs, ["zeta"]);
    assert_eq!(wf.steps[2].needs, ["alpha"]);
    assert_eq!(wf.agents["mid"].kind(), Ok(AgentKind::Command(vec!["python3".into(), "agent.py".into()])));
    assert_eq!(wf.agents["mid"].retries, Some(2));
    assert_eq!(wf.agents["mid"].timeout, Some(5.0));
    // The same in JSON.
    let json = r#"{"pattern": "sequential", "agents": {"zeta": {"builtin": "noop"}, "alpha": {"builtin": "echo"}, "mid": {"builtin": "noop"}}}"#;
    assert_eq!(step_names(&parse(json, "order.json").expect("json")), ["zeta", "alpha", "mid"]);
}

#[test]
fn default_name_comes_from_options_and_name_key_wins() {
    let opts = ParseOptions { default_name: Some("from_stem".into()), ..with_agents(&["a"]) };
    let wf = parse_str("pattern: sequential\nagents: [a]\n", "x.yaml", &opts).expect("parse");
    assert_eq!(wf.name, "from_stem");
    let wf = parse_str("name: given\npattern: sequential\nagents: [a]\n", "x.yaml", &opts).expect("parse");
    assert_eq!(wf.name, "given");
}

#[test]
fn dependency_form_with_needs() {
    let src = "\
name: diamond
agents:
  worker: {builtin: echo}
  merge: {builtin: noop}
steps:
  - name: fetch
    agent: worker
  - name: left
    agent: worker
    needs: [fetch]
  - name: right
    agent: worker
    needs: [fetch]
  - name: merge
    needs: [left, right]
    input: {fixed: true}
";
    let wf = parse(src, "dag.yaml").expect("dependency form");
    assert_eq!(wf.pattern, Pattern::Dependency);
    assert_eq!(wf.name, "diamond");
    assert_eq!(step_names(&wf), ["fetch", "left", "right", "merge"]);
    assert_eq!(wf.steps[3].agent, "merge", "agent defaults to the step name");
    assert_eq!(wf.steps[3].input, Some(serde_json::json!({"fixed": true})));
    let plan = wf.plan().expect("plan");
    assert_eq!(plan.steps[0].needs, Vec::<usize>::new());
    assert_eq!(plan.steps[1].needs, vec![0]);
    assert_eq!(plan.steps[2].needs, vec![0]);
    assert_eq!(plan.steps[3].needs, vec![1, 2]);
    assert_eq!(plan.leaves(), vec![3]);
    let explicit = parse(&src.replace("name: diamond\n", "name: diamond\npattern: dependency\n"), "dag.yaml")
        .expect("explicit pattern: dependency");
    assert_eq!(explicit.steps, wf.steps);
}

#[test]
fn dependency_form_steps_can_be_listed_before_what_they_need() {
    let src = "agents: {w: {builtin: noop}}\nsteps:\n  - {name: last, agent: w, needs: [first]}\n  - {name: first, agent: w}\n";
    let wf = parse(src, "dag.yaml").expect("forward reference");
    assert_eq!(wf.plan().expect("plan").steps[0].needs, vec![1]);
}

#[test]
fn agents_files_bare_and_wrapped() {
    let bare = "dev:\n  run: [\"./dev.sh\"]\n  retries: 1\ntest: {builtin: echo}\n";
    let wrapped = "agents:\n  dev:\n    run: [\"./dev.sh\"]\n    retries: 1\n  test: {builtin: echo}\n";
    for (src, file) in [(bare, "bare.yaml"), (wrapped, "wrapped.yaml")] {
        let agents = parse_agents_str(src, file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(agents.len(), 2, "{file}");
        assert_eq!(agents["dev"].retries, Some(1), "{file}");
        assert_eq!(agents["test"].builtin, Some(Builtin::Echo), "{file}");
    }
    let json = r#"{"agents": {"dev": {"builtin": "noop"}}}"#;
    assert_eq!(parse_agents_str(json, "agents.json").expect("json").len(), 1);
}

#[test]
fn agents_file_refuses_bad_names_and_worker() {
    let e = parse_agents_str("a.b: {builtin: noop}\n", "agents.yaml").expect_err("bad name");
    assert!(e.message.contains("a.b"), "{e}");
    assert_eq!(e.line, Some(1), "{e}");
    let e = parse_agents_str("ok: {builtin: noop}\nremote: {worker: true, builtin: noop}\n", "agents.yaml")
        .expect_err("two kinds");
    assert!(e.message.contains("worker"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
}

// ------------------------------------------------------------------------------------- refusals

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let src = "pattern: sequential\nagents:\n  a: {builtin: noop\n  b: {builtin: noop}\n";
    let e = parse_err(src, "broken.yaml");
    assert_eq!(e.file, "broken.yaml");
    let line = e.line.expect("a syntax error has a line");
    assert!((3..=5).contains(&line), "line {line}: {e}");
    assert!(e.to_string().starts_with(&format!("broken.yaml:{line}: ")), "{e}");
}

#[test]
fn yaml_tab_indentation_error_has_a_line() {
    let src = "pattern: sequential\nagents:\n\t- a\n";
    let e = parse_err(src, "tabs.yaml");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn json_syntax_error_names_file_and_line() {
    let src = "{\n  \"pattern\": \"sequential\",\n  \"agents\": [\"a\",]\n}\n";
    let e = parse_err(src, "broken.json");
    assert_eq!(e.file, "broken.json");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("broken.json:3: "), "{e}");
}

#[test]
fn unknown_top_level_key_is_named_with_its_line() {
    let src = "name: w\npatern: sequential\nagents: [a]\n";
    let e = parse_str(src, "typo.yaml", &with_agents(&["a"])).expect_err("typo");
    assert!(e.message.contains("patern"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.to_string().starts_with("typo.yaml:2: "), "{e}");

    let json = "{\n  \"agents\": [\"a\"],\n  \"patern\": \"sequential\"\n}\n";
    let e = parse_str(json, "typo.json", &with_agents(&["a"])).expect_err("typo");
    assert!(e.message.contains("patern"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn unknown_key_in_an_inline_agent_is_named_with_its_line() {
    let src = "pattern: sequential\nagents:\n  dev:\n    builtin: noop\n    retires: 2\n";
    let e = parse_err(src, "agentkey.yaml");
    assert!(e.message.contains("retires"), "message should name the unknown key: {e}");
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(e.field, "agents.dev", "{e}");
    assert!(e.to_string().starts_with("agentkey.yaml:5: field `agents.dev`: unknown field `retires`"), "{e}");
    assert!(!e.message.contains(" at line "), "the line is not repeated in the message: {e}");
}

#[test]
fn unknown_key_in_an_agents_file_is_named() {
    let src = "dev:\n  builtin: noop\n  retires: 2\n";
    let e = parse_agents_str(src, "agents.yaml").expect_err("unknown key");
    assert!(e.message.contains("retires"), "message should name the unknown key: {e}");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn unknown_key_in_a_step_is_named() {
    let src = "agents: {w: {builtin: noop}}\nsteps:\n  - name: a\n    agent: w\n    need: [b]\n";
    let e = parse_err(src, "step.yaml");
    assert!(e.message.contains("need"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");
}

#[test]
fn wrong_types_are_refused() {
    let e =
        parse_str("pattern: sequential\nagents: [a]\nhandoff_validation: sometimes\n", "t.yaml", &with_agents(&["a"]))
            .expect_err("string for bool");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("bool"), "{e}");

    let e = parse_str("pattern: sequential\nagents: [a]\ntimeout: soon\n", "t.yaml", &with_agents(&["a"]))
        .expect_err("string for timeout");
    assert_eq!(e.line, Some(3), "{e}");

    let e = parse_str("pattern: sequential\nagents: dev\n", "t.yaml", &with_agents(&["dev"]))
        .expect_err("agents as string");
    assert_eq!(e.field, "agents", "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("list of agent names"), "{e}");

    let e = parse("pattern: sequential\nagents:\n  dev:\n    builtin: noop\n    retries: many\n", "t.yaml")
        .expect_err("string for retries");
    assert_eq!(e.field, "agents.dev.retries", "{e}");
    assert!(e.message.contains("many"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");

    let e =
        parse("pattern: sequential\nagents:\n  dev: {builtin: telepathy}\n", "t.yaml").expect_err("unknown builtin");
    assert!(e.message.contains("telepathy"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");

    let e = parse(r#"{"pattern": 7, "agents": {"a": {"builtin": "noop"}}}"#, "t.json").expect_err("number pattern");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn unknown_pattern_is_refused_with_its_line() {
    let e = parse_str("agents: [a]\npattern: round_robin\n", "p.yaml", &with_agents(&["a"])).expect_err("pattern");
    assert!(e.message.contains("round_robin"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    assert_eq!(e.field, "pattern");
}

#[test]
fn missing_pattern_is_refused() {
    let e = parse_str("agents: [a]\n", "p.yaml", &with_agents(&["a"])).expect_err("no pattern");
    assert_eq!(e.field, "pattern");
}

#[test]
fn unknown_agent_name_is_named_with_its_line() {
    let src = "pattern: sequential\nagents:\n  - dev\n  - ghost\n  - docs\n";
    let e = parse_str(src, "unk.yaml", &with_agents(&["dev", "docs"])).expect_err("unknown agent");
    assert!(e.message.contains("`ghost`"), "{e}");
    assert_eq!(e.line, Some(4), "{e}");
    assert_eq!(e.field, "agents[1]");
    assert!(
        e.to_string().starts_with("unk.yaml:4: field `agents[1]`: unknown agent `ghost`"),
        "Display is FILE:LINE: field `x`: message, got: {e}"
    );
    assert!(e.message.contains("known agents: dev, docs"), "{e}");
}

#[test]
fn unknown_agent_of_a_step_is_named_with_its_line() {
    let src = "agents:\n  w: {builtin: noop}\nsteps:\n  - name: a\n    agent: w\n  - name: b\n    agent: phantom\n    needs: [a]\n";
    let e = parse_err(src, "unk.yaml");
    assert_eq!(e.field, "steps[1].agent");
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.message.contains("phantom"), "{e}");
}

#[test]
fn need_of_an_unknown_step_is_refused() {
    let src = "agents: {w: {builtin: noop}}\nsteps:\n  - name: a\n    agent: w\n    needs: [nowhere]\n";
    let e = parse_err(src, "n.yaml");
    assert!(e.message.contains("nowhere"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(e.field, "steps[0].needs");
}

#[test]
fn invalid_names_are_refused() {
    let long = "a".repeat(65);
    let ok64 = "b".repeat(64);
    // Inline agent names.
    for bad in ["a.b", long.as_str(), "has space", "a>", "a*"] {
        let src = format!("pattern: sequential\nagents:\n  ok: {{builtin: noop}}\n  \"{bad}\": {{builtin: noop}}\n");
        let e = parse_err(&src, "names.yaml");
        assert!(e.message.contains(&bad[..bad.len().min(60)]), "{bad}: {e}");
        assert_eq!(e.line, Some(4), "{bad}: {e}");
    }
    let src = "pattern: sequential\nagents:\n  \"\": {builtin: noop}\n";
    let e = parse_err(src, "names.yaml");
    assert!(e.message.contains("empty"), "{e}");
    // 64 characters is fine.
    let src = format!("pattern: sequential\nagents:\n  {ok64}: {{builtin: noop}}\n");
    parse(&src, "names.yaml").expect("64-character name");
    // Step names in the dependency form.
    for bad in ["a.b", long.as_str(), ""] {
        let src = format!("agents: {{w: {{builtin: noop}}}}\nsteps:\n  - name: \"{bad}\"\n    agent: w\n");
        let e = parse_err(&src, "names.yaml");
        assert_eq!(e.field, "steps[0].name", "{bad:?}: {e}");
    }
    // Workflow names.
    let e = parse_str("name: my.flow\npattern: sequential\nagents: [a]\n", "n.yaml", &with_agents(&["a"]))
        .expect_err("workflow name");
    assert_eq!(e.field, "name");
    assert_eq!(e.line, Some(1), "{e}");
    // Agent names listed by a seed-shaped file.
    let e = parse_str("pattern: parallel\nagents: [\"x.y\"]\n", "n.yaml", &with_agents(&["a"])).expect_err("listed");
    assert!(e.message.contains("x.y"), "{e}");
    // Coordination points become subject tokens too.
    let e = parse_str(
        "pattern: parallel\nagents: [a]\ncoordination_points: [\"in tegration\"]\n",
        "n.yaml",
        &with_agents(&["a"]),
    )
    .expect_err("coordination point");
    assert_eq!(e.field, "coordination_points");
}

#[test]
fn duplicate_step_names_are_refused() {
    let src = "agents: {w: {builtin: noop}}\nsteps:\n  - name: build\n    agent: w\n  - name: build\n    agent: w\n";
    let e = parse_err(src, "dup.yaml");
    assert!(e.message.contains("build") && e.message.contains("twice"), "{e}");
    assert_eq!(e.field, "steps[1].name");

    let e = parse_str("pattern: sequential\nagents: [a, b, a]\n", "dup.yaml", &with_agents(&["a", "b"]))
        .expect_err("agent listed twice");
    assert!(e.message.contains("twice"), "{e}");
    assert_eq!(e.field, "agents[2]");
}

#[test]
fn duplicate_agent_in_an_inline_map_is_refused() {
    let src = "pattern: sequential\nagents:\n  dev: {builtin: noop}\n  test: {builtin: noop}\n  dev: {builtin: echo}\n";
    let e = parse_err(src, "dup.yaml");
    assert!(e.message.contains("`dev`") && e.message.contains("twice"), "message should name the duplicate: {e}");
    assert_eq!(e.line, Some(5), "points at the second definition: {e}");

    let json = r#"{"pattern": "sequential", "agents": {"dev": {"builtin": "noop"}, "dev": {"builtin": "echo"}}}"#;
    let e = parse_err(json, "dup.json");
    assert!(e.message.contains("dev"), "message should name the duplicate: {e}");
}

#[test]
fn duplicate_top_level_key_is_refused_at_its_second_line() {
    let src = "pattern: sequential\nagents: {a: {builtin: noop}}\npattern: parallel\n";
    let e = parse_err(src, "dup.yaml");
    assert!(e.message.contains("`pattern`"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn duplicate_agent_in_an_agents_file_is_refused() {
    let e = parse_agents_str("dev: {builtin: noop}\ndev: {builtin: echo}\n", "agents.yaml").expect_err("duplicate");
    assert!(e.message.contains("`dev`") && e.message.contains("twice"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse_agents_str("agents:\n  dev: {builtin: noop}\n  dev: {builtin: echo}\n", "agents.yaml")
        .expect_err("duplicate, wrapped");
    assert!(e.message.contains("`dev`") && e.message.contains("twice"), "{e}");
}

#[test]
fn agents_file_with_agents_key_and_more_is_not_silently_truncated() {
    // Before: the wrapped shape matched and `dev` was dropped without a word.
    let src = "agents:\n  x: {builtin: noop}\ndev: {builtin: noop}\n";
    assert!(parse_agents_str(src, "agents.yaml").is_err());
}

fn assert_names_cycle(e: &Error, cycle: &[&str]) {
    let n = cycle.len();
    let rotations: Vec<String> = (0..n)
        .map(|r| {
            let mut v: Vec<&str> = (0..=n).map(|k| cycle[(r + k) % n]).collect();
            v.truncate(n + 1);
            v.join(" -> ")
        })
        .collect();
    assert!(rotations.iter().any(|r| e.message.contains(r.as_str())), "expected one of {rotations:?} in: {e}");
}

#[test]
fn cycle_is_refused_and_named() {
    let src = "\
agents: {w: {builtin: noop}}
steps:
  - name: a
    agent: w
    needs: [c]
  - name: b
    agent: w
    needs: [a]
  - name: c
    agent: w
    needs: [b]
";
    let e = parse_err(src, "cycle.yaml");
    assert_eq!(e.file, "cycle.yaml");
    assert_names_cycle(&e, &["a", "b", "c"]);
    // Lines 5, 8 and 11 are the `needs:` of a, b and c.
    assert!(matches!(e.line, Some(5 | 8 | 11)), "a cycle points at one of its needs: {e}");
    assert!(e.to_string().starts_with("cycle.yaml:"), "{e}");
}

#[test]
fn cycle_behind_an_acyclic_prefix_is_named_without_the_prefix() {
    let src = "\
agents: {w: {builtin: noop}}
steps:
  - {name: root, agent: w}
  - {name: x, agent: w, needs: [root, z]}
  - {name: y, agent: w, needs: [x]}
  - {name: z, agent: w, needs: [y]}
  - {name: tail, agent: w, needs: [z]}
";
    let e = parse_err(src, "cycle.yaml");
    assert_names_cycle(&e, &["x", "y", "z"]);
    assert!(!e.message.contains("root"), "{e}");
    assert!(!e.message.contains("tail"), "{e}");
}

#[test]
fn cycle_line_is_found_by_whole_names() {
    // `cache` contains `c` and `a`: a substring search would point at line 3, outside the cycle.
    let src = "\
agents: {w: {builtin: noop}}
steps:
  - {name: cache, agent: w}
  - {name: a, agent: w, needs: [cache, c]}
  - {name: b, agent: w, needs: [a]}
  - {name: c, agent: w, needs: [b]}
";
    let e = parse_err(src, "cycle.yaml");
    assert_names_cycle(&e, &["a", "b", "c"]);
    assert!(matches!(e.line, Some(4..=6)), "{e}");
}

#[test]
fn unknown_agent_line_is_found_by_whole_names() {
    // `a` occurs inside `pattern: sequential` and `agents`; the error belongs on line 4.
    let src = "pattern: sequential\nagents:\n  - bee\n  - a\n";
    let e = parse_str(src, "w.yaml", &with_agents(&["bee"])).expect_err("unknown a");
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn self_need_is_refused() {
    let src = "agents: {w: {builtin: noop}}\nsteps:\n  - name: solo\n    agent: w\n    needs: [solo]\n";
    let e = parse_err(src, "self.yaml");
    assert!(e.message.contains("solo") && e.message.contains("itself"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");
}

#[test]
fn file_over_one_mib_is_refused() {
    let mut src = String::from("pattern: sequential\nagents: [a]\n");
    while src.len() <= MAX_FILE_BYTES {
        src.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let e = parse_str(&src, "big.yaml", &with_agents(&["a"])).expect_err("too big");
    assert!(e.message.contains(&MAX_FILE_BYTES.to_string()), "{e}");
    assert_eq!(e.file, "big.yaml");
    let e = parse_agents_str(&src, "big-agents.yaml").expect_err("too big");
    assert!(e.message.contains("limit"), "{e}");
}

fn many_steps(n: usize) -> String {
    let mut src = String::from("agents: {w: {builtin: noop}}\nsteps:\n");
    for i in 0..n {
        if i == 0 {
            src.push_str("  - {name: s0, agent: w}\n");
        } else {
            src.push_str(&format!("  - {{name: s{i}, agent: w, needs: [s{}]}}\n", i - 1));
        }
    }
    src
}

#[test]
fn more_than_max_steps_is_refused_and_max_is_accepted() {
    let wf = parse(&many_steps(MAX_STEPS), "many.yaml").expect("exactly the limit");
    assert_eq!(wf.steps.len(), MAX_STEPS);
    // A 5000-deep chain must not overflow the stack in the cycle check.
    assert_eq!(wf.plan().expect("plan").leaves(), vec![MAX_STEPS - 1]);
    let e = parse(&many_steps(MAX_STEPS + 1), "many.yaml").expect_err("over the limit");
    assert!(e.message.contains(&(MAX_STEPS + 1).to_string()) && e.message.contains("5000"), "{e}");

    let names: Vec<String> = (0..=MAX_STEPS).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let src = format!("pattern: parallel\nagents: [{}]\n", names.join(", "));
    let e = parse_str(&src, "wide.yaml", &with_agents(&refs)).expect_err("wide over the limit");
    assert!(e.message.contains("5000"), "{e}");
}

#[test]
fn agent_with_run_and_builtin_is_refused() {
    let src = "pattern: sequential\nagents:\n  ok: {builtin: noop}\n  both:\n    run: [\"echo\", \"hi\"]\n    builtin: echo\n";
    let e = parse_err(src, "both.yaml");
    assert_eq!(e.field, "agents.both");
    assert!(e.message.contains("both") && e.message.contains("more than one"), "{e}");
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn agent_without_a_kind_or_with_an_empty_command_is_refused() {
    let e = parse("pattern: sequential\nagents:\n  idle: {retries: 1}\n", "k.yaml").expect_err("no kind");
    assert!(e.message.contains("idle"), "{e}");
    let e = parse("pattern: sequential\nagents:\n  empty: {run: []}\n", "k.yaml").expect_err("empty run");
    assert!(e.message.contains("empty"), "{e}");
    let e = parse("pattern: sequential\nagents:\n  q: {run: \"sh -c 'echo hi'\"}\n", "k.yaml").expect_err("quotes");
    assert!(e.message.contains("quotes"), "{e}");
}

#[test]
fn worker_agents_are_accepted_and_a_second_kind_is_refused() {
    let wf = parse("pattern: sequential\nagents:\n  remote:\n    worker: true\n", "w.yaml").expect("valid");
    assert_eq!(wf.agents["remote"].kind(), Ok(ltmc_core::spec::AgentKind::Worker));
    let src = "pattern: sequential\nagents:\n  remote:\n    worker: true\n    run: [python3, a.py]\n";
    let e = parse_err(src, "worker.yaml");
    assert!(e.message.contains("more than one of `run`, `builtin` and `worker`"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.field, "agents.remote");
}

#[test]
fn non_positive_timeouts_are_refused() {
    let e = parse("pattern: sequential\nagents:\n  a:\n    builtin: noop\n    timeout: 0\n", "t.yaml").expect_err("0");
    assert_eq!(e.field, "agents.a.timeout");
    assert_eq!(e.line, Some(5), "{e}");
    let e = parse("pattern: sequential\ntimeout: -1\nagents:\n  a: {builtin: noop}\n", "t.yaml").expect_err("-1");
    assert_eq!(e.field, "timeout");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn steps_with_a_named_pattern_are_refused() {
    let src = "pattern: sequential\nagents: {w: {builtin: noop}}\nsteps:\n  - {name: a, agent: w}\n";
    let e = parse_err(src, "mix.yaml");
    assert_eq!(e.field, "steps");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn empty_workflow_is_refused() {
    let e = parse("pattern: sequential\nagents: []\n", "empty.yaml").expect_err("no steps");
    assert!(e.message.contains("no steps"), "{e}");
}

/// Nine levels of nine aliases: 9^9 nodes if expanded.
fn billion_laughs(key: &str) -> String {
    let mut src = String::from("pattern: sequential\nagents: {a: {builtin: noop}}\n");
    src.push_str(&format!(
        "{key}:\n  l0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
    ));
    for i in 1..=9 {
        let p = i - 1;
        src.push_str(&format!("  l{i}: &l{i} [*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p}]\n"));
    }
    src
}

fn parse_with_deadline(src: String, deadline: Duration) -> Result<Workflow, Error> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(parse(&src, "bomb.yaml"));
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r,
        Err(_) => panic!("parsing an alias bomb did not return within {deadline:?}"),
    }
}

#[test]
fn alias_bomb_in_a_value_field_is_refused_quickly() {
    // `input:` takes any JSON value, so the bomb would be expanded there if anywhere.
    let result = parse_with_deadline(billion_laughs("input"), Duration::from_secs(30));
    let e = result.expect_err("an alias bomb must be refused");
    assert_eq!(e.file, "bomb.yaml");
}

#[test]
fn alias_bomb_under_an_unknown_key_is_refused_quickly() {
    let result = parse_with_deadline(billion_laughs("lol"), Duration::from_secs(30));
    let e = result.expect_err("unknown key");
    assert!(e.message.contains("lol"), "{e}");
}

#[test]
fn small_aliases_are_fine() {
    let src = "pattern: sequential\nagents:\n  a: &base {builtin: noop, retries: 1}\n  b: *base\n";
    let wf = parse(src, "alias.yaml").expect("ordinary aliases");
    assert_eq!(step_names(&wf), ["a", "b"]);
    assert_eq!(wf.agents["b"].retries, Some(1));
}

#[test]
fn error_display_format() {
    let e = Error { file: "f.yaml".into(), line: Some(7), field: "steps[2].needs".into(), message: "bad".into() };
    assert_eq!(e.to_string(), "f.yaml:7: field `steps[2].needs`: bad");
    let e = Error { file: "f.yaml".into(), line: None, field: String::new(), message: "bad".into() };
    assert_eq!(e.to_string(), "f.yaml: bad");
}

#[test]
fn pinned_hash_is_stable_and_changes_with_the_definition() {
    let opts = with_agents(&["a", "b"]);
    let one = parse_str("pattern: sequential\nagents: [a, b]\n", "w.yaml", &opts).expect("one");
    let again = parse_str("{\"pattern\": \"sequential\", \"agents\": [\"a\", \"b\"]}", "w.json", &opts).expect("again");
    let other = parse_str("pattern: sequential\nagents: [b, a]\n", "w.yaml", &opts).expect("other");
    assert_eq!(one.pinned().1, again.pinned().1);
    assert_ne!(one.pinned().1, other.pinned().1);
    assert!(one.pinned().1.starts_with("sha256:"));
    // The pinned definition reads back as the same workflow (this is what RunStarted carries).
    let back: Workflow = serde_json::from_value(one.pinned().0).expect("round trip");
    assert_eq!(back, one);
}

#[test]
fn a_file_that_is_not_a_map_is_refused() {
    for (src, name) in [("[]", "w.json"), ("- a\n- b\n", "w.yaml"), ("", "w.yaml"), ("42\n", "w.yaml")] {
        let err = ltmc_core::spec::parse_str(src, name, &Default::default()).expect_err("must be refused");
        assert!(err.to_string().contains("a workflow is a map"), "{src:?}: {err}");
    }
}

#[test]
fn a_seed_role_map_runs_with_the_agents_file_definitions() {
    use ltmc_core::spec::{AgentDef, Builtin, ParseOptions};
    let mut opts = ParseOptions::default();
    opts.agents.insert("dev".into(), AgentDef { builtin: Some(Builtin::Echo), ..Default::default() });
    opts.agents.insert("test".into(), AgentDef { builtin: Some(Builtin::Noop), ..Default::default() });
    let src =
        "pattern: sequential\nagents:\n  dev: {role: implement code, duration: 2hours}\n  test: {role: run tests}\n";
    let wf = ltmc_core::spec::parse_str(src, "seed.yaml", &opts).expect("runs with the agents file");
    assert_eq!(wf.agents["dev"].builtin, Some(Builtin::Echo));
    assert_eq!(wf.agents["dev"].role.as_deref(), Some("implement code"));
    assert_eq!(wf.agents["dev"].duration.as_deref(), Some("2hours"));
    assert_eq!(wf.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["dev", "test"]);
    // Without an agents file the same map says nothing about how to run.
    let err = ltmc_core::spec::parse_str(src, "seed.yaml", &ParseOptions::default()).expect_err("no way to run");
    assert!(err.to_string().contains("neither how to run"), "{err}");
}

#[test]
fn unused_inline_agents_are_checked_too() {
    let src = "agents:\n  a: {builtin: noop}\n  spare: {worker: true, run: [x]}\nsteps:\n  - {name: one, agent: a}\n";
    let err = ltmc_core::spec::parse_str(src, "w.yaml", &Default::default()).expect_err("spare is invalid");
    assert!(err.to_string().contains("spare") && err.to_string().contains("worker"), "{err}");
    assert_eq!(err.line, Some(3), "{err}");
}

#[test]
fn success_criteria_and_requires_are_fact_names() {
    let ok = "pattern: sequential\nsuccess_criteria: [all_tests_pass, review_approved]\nagents:\n  a: {builtin: noop, requires: [code_review_passed]}\n";
    let wf = ltmc_core::spec::parse_str(ok, "w.yaml", &Default::default()).expect("valid");
    assert_eq!(wf.success_criteria, ["all_tests_pass", "review_approved"]);
    let bad = "pattern: sequential\nsuccess_criteria: [all tests pass]\nagents:\n  a: {builtin: noop}\n";
    let err = ltmc_core::spec::parse_str(bad, "w.yaml", &Default::default()).expect_err("not a name");
    assert!(err.to_string().contains("success_criteria") && err.line == Some(2), "{err}");
    let bad = "pattern: sequential\nagents:\n  a: {builtin: noop, requires: [\"x.y\"]}\n";
    let err = ltmc_core::spec::parse_str(bad, "w.yaml", &Default::default()).expect_err("not a name");
    assert!(err.to_string().contains("requires"), "{err}");
}

#[test]
fn sequential_with_parallel_testing_runs_testing_beside_the_later_stages() {
    let src = "pattern: sequential_with_parallel_testing\nagents:\n  requirements: {builtin: noop}\n  development: {builtin: noop}\n  qa: {builtin: noop, role: run the tests}\n  review: {builtin: noop}\n  documentation: {builtin: noop}\n  test_data: {builtin: noop, testing: false}\n";
    let wf = ltmc_core::spec::parse_str(src, "w.yaml", &Default::default()).expect("valid");
    let needs: Vec<(&str, Vec<&str>)> =
        wf.steps.iter().map(|s| (s.name.as_str(), s.needs.iter().map(String::as_str).collect())).collect();
    assert_eq!(
        needs,
        [
            ("requirements", vec![]),
            ("development", vec!["requirements"]),
            ("qa", vec!["development"]),
            ("review", vec!["development"]),
            ("documentation", vec!["review"]),
            ("test_data", vec!["documentation"]),
        ]
    );
}

#[test]
fn coordination_points_name_existing_steps() {
    let ok = "pattern: parallel\ncoordination_points:\n  integration: [frontend, backend]\nagents:\n  frontend: {builtin: noop}\n  backend: {builtin: noop}\n";
    let wf = ltmc_core::spec::parse_str(ok, "w.yaml", &Default::default()).expect("valid");
    assert_eq!(wf.coordination_points[0].after, ["frontend", "backend"]);
    let bad = "pattern: parallel\ncoordination_points:\n  integration: [frontend, mobile]\nagents:\n  frontend: {builtin: noop}\n";
    let err = ltmc_core::spec::parse_str(bad, "w.yaml", &Default::default()).expect_err("mobile is no step");
    assert!(err.to_string().contains("`mobile`") && err.line == Some(3), "{err}");
}

#[test]
fn an_inline_entry_without_a_way_to_run_refines_the_agents_file() {
    use ltmc_core::spec::{AgentDef, Builtin, ParseOptions};
    let mut opts = ParseOptions::default();
    opts.agents.insert("attest".into(), AgentDef { builtin: Some(Builtin::Noop), ..Default::default() });
    opts.agents.insert("build".into(), AgentDef { builtin: Some(Builtin::Noop), ..Default::default() });
    let src = "pattern: sequential_with_parallel_testing\nagents:\n  build: {role: compile}\n  attest: {role: sign the build, testing: false, timeout: 9}\n";
    let wf = ltmc_core::spec::parse_str(src, "w.yaml", &opts).expect("valid");
    assert_eq!(wf.agents["attest"].testing, Some(false));
    assert_eq!(wf.agents["attest"].timeout, Some(9.0));
    assert_eq!(wf.agents["attest"].builtin, Some(Builtin::Noop));
    assert_eq!(wf.steps[1].needs, ["build"], "attest is a stage, not a testing agent");
}

#[test]
fn map_form_points_keep_file_order() {
    let src = "pattern: parallel\ncoordination_points:\n  zeta: [a]\n  alpha: [a]\nagents:\n  a: {builtin: noop}\n";
    let wf = ltmc_core::spec::parse_str(src, "w.yaml", &Default::default()).expect("valid");
    let names: Vec<&str> = wf.coordination_points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"]);
}

// ------------------------------------------------------------------------------------ event_driven

#[test]
fn event_driven_listeners_come_from_on_and_from_a_trigger_map() {
    let src = "pattern: event_driven\ntriggers: [code_change, test_failure]\nagents:\n  dev: {builtin: noop, on: [test_failure]}\n  qa: {builtin: noop, on: [code_change, test_failure]}\n";
    let wf = parse(src, "e.yaml").expect("valid");
    assert_eq!(wf.pattern, Pattern::EventDriven);
    assert!(wf.steps.is_empty(), "activations are added as events arrive");
    assert_eq!(wf.triggers["test_failure"], ["dev", "qa"]);
    assert_eq!(wf.triggers["code_change"], ["qa"]);
    let map = "pattern: event_driven\ntriggers:\n  code_change: [qa]\n  review_complete: []\nmax_activations: 5\nidle_timeout: 2.5\n";
    let wf = parse_str(map, "m.yaml", &with_agents(&["qa"])).expect("valid");
    assert_eq!(wf.triggers["code_change"], ["qa"]);
    assert!(wf.triggers["review_complete"].is_empty(), "a trigger may start nobody (it is still recorded)");
    assert_eq!((wf.max_activations, wf.idle_timeout), (Some(5), Some(2.5)));
    // The seed's bare dict: every agents-file agent listening for one of the triggers; an
    // agents-file agent listening for another workflow's events is left out.
    let mut opts = with_agents(&["plain"]);
    opts.agents.insert("dev".into(), AgentDef { on: vec!["test_failure".into()], ..noop() });
    opts.agents.insert("other".into(), AgentDef { on: vec!["deploy".into()], ..noop() });
    let seed = r#"{"pattern": "event_driven", "triggers": ["code_change", "test_failure", "review_complete"], "dynamic_agent_allocation": true}"#;
    let wf = parse_str(seed, "seed.json", &opts).expect("valid");
    assert_eq!(wf.agents.keys().collect::<Vec<_>>(), ["dev"]);
    assert!(wf.dynamic_agent_allocation);
}

#[test]
fn event_driven_refusals_name_the_field_and_line() {
    let cases: [(&str, &str, &str, Option<usize>); 7] = [
        ("pattern: event_driven\nagents:\n  a: {builtin: noop, on: [x]}\n", "triggers", "needs `triggers:`", Some(1)),
        (
            "pattern: event_driven\ntriggers: [code_change]\nagents:\n  a: {builtin: noop, on: [code_changed]}\n",
            "agents.a.on",
            "listens for `code_changed`, which is not a trigger; the triggers are code_change",
            Some(4),
        ),
        (
            "pattern: event_driven\ntriggers:\n  code_change: [ghost]\n",
            "triggers.code_change",
            "starts `ghost`, which is not a defined agent",
            Some(3),
        ),
        ("pattern: event_driven\ntriggers: [code change]\n", "triggers", "trigger", Some(2)),
        ("pattern: event_driven\ntriggers: [code_change]\n", "triggers", "no agent listens for any trigger", Some(2)),
        (
            "pattern: event_driven\ntriggers: {a: [x]}\nmax_activations: 0\nagents:\n  x: {builtin: noop}\n",
            "max_activations",
            "from 1 to 10000",
            Some(3),
        ),
        (
            "pattern: sequential\ntriggers: [code_change]\nagents:\n  x: {builtin: noop}\n",
            "triggers",
            "belongs to `pattern: event_driven`",
            Some(2),
        ),
    ];
    for (src, field, message, line) in cases {
        let e = parse_err(src, "e.yaml");
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message), "{e}");
        assert_eq!(e.line, line, "{e}");
        assert!(e.to_string().starts_with("e.yaml"), "{e}");
    }
    let e = parse_err("pattern: event_driven\ntriggers:\n  a: [x]\n  a: [y]\n", "e.yaml");
    assert!(e.message.contains("defined twice") || e.message.contains("duplicate"), "{e}");
}
