//! Reading workflow and agents files (YAML or JSON) into a validated [`Workflow`].

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::source::{Ctx, contains_word, declares, deserialize, refuse_non_map};
use super::{
    AgentDef, CoordinationPoint, Error, MAX_BACKOFF_SECS, MAX_RETRIES, MAX_STEPS, MAX_TIMEOUT_SECS, Pattern, StepDef,
    Workflow,
};
use crate::names;

/// Context for parsing a workflow file.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// Agent definitions from an agents file. An inline `agents:` definition that says how to
    /// run replaces the file's; one with only `role`, `duration` or `description` adds them to it.
    pub agents: BTreeMap<String, AgentDef>,
    /// Name to use when the file has no `name:` (usually the file stem).
    pub default_name: Option<String>,
}

/// A workflow file as written (YAML or JSON). Unknown keys are refused.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LTMC workflow file")]
pub(crate) struct WorkflowFile {
    /// Workflow name, `[A-Za-z0-9_-]{1,64}` (default: the file name).
    name: Option<String>,
    /// Free text.
    description: Option<String>,
    /// `sequential`, `parallel`, `dependency` (implied by `steps:`) or `sequential_with_parallel_testing`.
    pattern: Option<String>,
    /// Agent names (defined in an agents file) or a map of name -> definition, in run order.
    agents: Option<AgentsField>,
    /// The dependency form: steps with `needs`.
    steps: Option<Vec<StepFile>>,
    /// Check each step's agent `requires` facts before handing over to it; unmet ones fail the run.
    handoff_validation: Option<bool>,
    /// Seed option, recorded with the run.
    rollback_on_failure: Option<bool>,
    /// Named barriers: a list of names (each reached when an agent reports that fact) or a map of
    /// name -> steps (reached when they have completed); recorded as CoordinationPointReached.
    coordination_points: Option<PointsField>,
    /// Facts the run must hold at the end (reported by agents in their results' `facts`).
    success_criteria: Option<Vec<String>>,
    /// Seed option: `true` (= `all`) or an aggregation name.
    result_aggregation: Option<Aggregation>,
    /// `all`, `any`, `first`, `majority` or `consensus_required`.
    aggregation: Option<String>,
    /// Run timeout in seconds.
    timeout: Option<f64>,
    /// Input given to the first steps.
    input: Option<Value>,
}

/// A YAML/JSON list of strings, read by the hand-written list-or-map fields below.
fn names_of<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Vec<String>, A::Error> {
    let mut names = Vec::new();
    while let Some(n) = seq.next_element::<String>()? {
        names.push(n);
    }
    Ok(names)
}

/// `agents:` as a list of names or a map of definitions. Not `#[serde(untagged)]`: an untagged
/// enum replaces every inner error (an unknown key, a duplicate, a wrong type) by "did not match
/// any variant" without a line, so the shape is chosen from the YAML/JSON node kind instead.
#[derive(Debug)]
enum AgentsField {
    Names(Vec<String>),
    Defs(OrderedAgents),
}

impl<'de> Deserialize<'de> for AgentsField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = AgentsField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of agent names or a map of agent name -> definition")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<AgentsField, A::Error> {
                names_of(seq).map(AgentsField::Names)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<AgentsField, A::Error> {
                OrderedAgents::from_map(map).map(AgentsField::Defs)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl JsonSchema for AgentsField {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Agents".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names = generator.subschema_for::<Vec<String>>();
        let defs = generator.subschema_for::<OrderedAgents>();
        schemars::json_schema!({ "anyOf": [names, defs] })
    }
}

/// An `agents:` map in file order (the order of a sequential workflow), refusing duplicates.
#[derive(Debug)]
struct OrderedAgents(Vec<(String, AgentDef)>);

impl JsonSchema for OrderedAgents {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AgentMap".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, AgentDef>>::json_schema(generator)
    }
}

impl<'de> Deserialize<'de> for OrderedAgents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedAgents;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of agent name -> definition")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<OrderedAgents, A::Error> {
                OrderedAgents::from_map(map)
            }
        }
        d.deserialize_map(Visit)
    }
}

impl OrderedAgents {
    fn from_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<OrderedAgents, A::Error> {
        let mut out: Vec<(String, AgentDef)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.iter().any(|(n, _)| n == &k) {
                return Err(serde::de::Error::custom(format!("agent `{k}` is defined twice")));
            }
            let v = map.next_value::<AgentDef>()?;
            out.push((k, v));
        }
        Ok(OrderedAgents(out))
    }
}

/// `coordination_points:` as the seed's list of names (each reached when the fact of that name
/// holds) or a map of name -> the steps after which it is reached.
#[derive(Debug)]
enum PointsField {
    Names(Vec<String>),
    After(Vec<(String, Vec<String>)>),
}

impl<'de> Deserialize<'de> for PointsField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = PointsField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of point names or a map of point name -> list of steps")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<PointsField, A::Error> {
                names_of(seq).map(PointsField::Names)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PointsField, A::Error> {
                // File order: points reached by the same completion are recorded in it.
                let mut out: Vec<(String, Vec<String>)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Vec<String>>()? {
                    if out.iter().any(|(n, _)| n == &k) {
                        return Err(serde::de::Error::custom(format!("coordination point `{k}` is defined twice")));
                    }
                    out.push((k, v));
                }
                Ok(PointsField::After(out))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl JsonSchema for PointsField {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CoordinationPoints".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names = generator.subschema_for::<Vec<String>>();
        let after = generator.subschema_for::<BTreeMap<String, Vec<String>>>();
        schemars::json_schema!({ "anyOf": [names, after] })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Aggregation {
    Flag(bool),
    Named(String),
}

/// One step of the dependency form.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StepFile {
    /// Step name, unique in the workflow.
    name: String,
    /// Agent that performs it (default: the step name).
    agent: Option<String>,
    /// Steps that must complete first.
    #[serde(default)]
    needs: Vec<String>,
    /// Fixed input (default: the outputs of its needs, or the run input).
    input: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum AgentsFile {
    Wrapped { agents: OrderedAgents },
    Bare(OrderedAgents),
}

/// The wrapped agents-file shape, strictly: used only to explain why a file did not parse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct WrappedAgentsFile {
    agents: OrderedAgents,
}

const AGGREGATIONS: [&str; 5] = ["all", "any", "first", "majority", "consensus_required"];

/// Overlays the fields `inline` gives onto `base` (the kind fields are absent from `inline`).
fn refine(base: &mut AgentDef, inline: &AgentDef) {
    let AgentDef {
        run: _,
        builtin: _,
        worker: _,
        params,
        timeout,
        retries,
        backoff,
        requires,
        compensate,
        env,
        cwd,
        testing,
        role,
        duration,
        description,
    } = inline.clone();
    base.params = params.or(base.params.take());
    base.timeout = timeout.or(base.timeout);
    base.retries = retries.or(base.retries);
    base.backoff = backoff.or(base.backoff);
    if !requires.is_empty() {
        base.requires = requires;
    }
    base.compensate = compensate.or(base.compensate.take());
    base.env.extend(env);
    base.cwd = cwd.or(base.cwd.take());
    base.testing = testing.or(base.testing);
    base.role = role.or(base.role.take());
    base.duration = duration.or(base.duration.take());
    base.description = description.or(base.description.take());
}

/// Removes repeated names, keeping the first of each.
fn dedupe(names: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// Parses an agents file: a map of agent name → definition, optionally under `agents:`.
pub fn parse_agents_str(source: &str, file: &str) -> Result<BTreeMap<String, AgentDef>, Error> {
    let parsed: AgentsFile = deserialize(source, file).map_err(|e| explain_agents_file(source, file, e))?;
    let (AgentsFile::Wrapped { agents: OrderedAgents(list) } | AgentsFile::Bare(OrderedAgents(list))) = parsed;
    let agents: BTreeMap<String, AgentDef> = list.into_iter().collect();
    let cx = Ctx { file, source };
    for (name, def) in &agents {
        names::validate("agent", name).map_err(|e| cx.err(format!("agents.{name}"), &[name], e.to_string()))?;
        def.kind().map_err(|m| cx.err(format!("agents.{name}"), &[name], format!("agent `{name}` {m}")))?;
    }
    Ok(agents)
}

/// The untagged [`AgentsFile`] hides the real error; parse again as the shape the file seems to
/// have (only an `agents:` key: wrapped; otherwise bare) to report the key, line and reason.
fn explain_agents_file(source: &str, file: &str, original: Error) -> Error {
    let keys = deserialize::<BTreeMap<String, serde::de::IgnoredAny>>(source, file);
    let wrapped = matches!(&keys, Ok(k) if k.len() == 1 && k.contains_key("agents"));
    let precise = if wrapped {
        deserialize::<WrappedAgentsFile>(source, file).err()
    } else {
        deserialize::<OrderedAgents>(source, file).err()
    };
    precise.unwrap_or(original)
}

/// Parses and validates a workflow file. `file` is only used in error messages and to decide
/// between JSON (`.json`, or text starting with `{`) and YAML.
pub fn parse_str(source: &str, file: &str, opts: &ParseOptions) -> Result<Workflow, Error> {
    refuse_non_map(source, file)?;
    let raw: WorkflowFile = deserialize(source, file)?;
    let cx = Ctx { file, source };
    let _ = &raw.description;

    let name = raw.name.clone().or_else(|| opts.default_name.clone()).unwrap_or_else(|| "workflow".to_owned());
    names::validate("workflow", &name).map_err(|e| cx.err("name", &["name"], e.to_string()))?;

    // Agents: inline definitions win over the agents file; a list names agents defined elsewhere.
    let mut defs = opts.agents.clone();
    let mut listed: Vec<String> = Vec::new();
    match &raw.agents {
        Some(AgentsField::Names(list)) => listed = list.clone(),
        Some(AgentsField::Defs(OrderedAgents(map))) => {
            for (k, v) in map {
                listed.push(k.clone());
                let says_how = v.run.is_some() || v.builtin.is_some() || v.worker.is_some();
                match defs.get_mut(k) {
                    // The seed's `{role, duration}` maps describe agents an agents file runs:
                    // keep the file's definition and add the description.
                    // An inline entry that does not say how to run refines the agents file's
                    // definition: every field it gives wins (the seed's `{role, duration}` maps).
                    Some(from_file) if !says_how => refine(from_file, v),
                    _ => {
                        defs.insert(k.clone(), v.clone());
                    }
                }
                // Every inline definition is checked, used by a step or not.
                names::validate("agent", k).map_err(|e| cx.err(format!("agents.{k}"), &[k], e.to_string()))?;
                if let Some(def) = defs.get(k) {
                    def.kind().map_err(|m| cx.err(format!("agents.{k}"), &[k], format!("agent `{k}` {m}")))?;
                }
            }
        }
        None => {}
    }

    let pattern = match raw.pattern.as_deref() {
        None if raw.steps.is_some() => Pattern::Dependency,
        None => {
            return Err(cx.err(
                "pattern",
                &[],
                "no `pattern:` and no `steps:`; say `pattern: sequential` or `pattern: parallel`, or list `steps:` with `needs:`",
            ));
        }
        Some("sequential") => Pattern::Sequential,
        Some("parallel") => Pattern::Parallel,
        Some("dependency" | "dag") => Pattern::Dependency,
        Some("sequential_with_parallel_testing") => Pattern::SequentialWithParallelTesting,
        Some(other) => {
            return Err(cx.err(
                "pattern",
                &["pattern", other],
                format!(
                    "pattern `{other}` is not supported by this version; use sequential, parallel, dependency or sequential_with_parallel_testing"
                ),
            ));
        }
    };

    let steps: Vec<StepDef> = match (pattern, &raw.steps) {
        (Pattern::Dependency, Some(steps)) => steps
            .iter()
            .map(|s| StepDef {
                name: s.name.clone(),
                agent: s.agent.clone().unwrap_or_else(|| s.name.clone()),
                needs: s.needs.clone(),
                input: s.input.clone(),
            })
            .collect(),
        (Pattern::Dependency, None) => {
            return Err(cx.err("steps", &["pattern"], "the dependency pattern needs a `steps:` list"));
        }
        (_, Some(_)) => {
            return Err(cx.err(
                "steps",
                &["steps"],
                "`steps:` belongs to the dependency form; with `pattern: sequential`, `parallel` or `sequential_with_parallel_testing` list `agents:` instead",
            ));
        }
        (Pattern::Sequential, None) => {
            let mut out: Vec<StepDef> = Vec::with_capacity(listed.len());
            for (i, a) in listed.iter().enumerate() {
                let needs = if i == 0 { vec![] } else { vec![listed[i - 1].clone()] };
                out.push(StepDef { name: a.clone(), agent: a.clone(), needs, input: None });
            }
            out
        }
        (Pattern::SequentialWithParallelTesting, None) => {
            // Testing agents need the last non-testing step before them and nothing needs them:
            // they run beside the later stages. The others form the sequence.
            let is_testing = |a: &str| {
                let def = defs.get(a);
                def.and_then(|d| d.testing).unwrap_or_else(|| {
                    a.to_lowercase().contains("test")
                        || def.and_then(|d| d.role.as_deref()).is_some_and(|r| r.to_lowercase().contains("test"))
                })
            };
            let mut out: Vec<StepDef> = Vec::with_capacity(listed.len());
            let mut last_stage: Option<String> = None;
            for a in &listed {
                let needs: Vec<String> = last_stage.iter().cloned().collect();
                if !is_testing(a) {
                    last_stage = Some(a.clone());
                }
                out.push(StepDef { name: a.clone(), agent: a.clone(), needs, input: None });
            }
            out
        }
        (Pattern::Parallel, None) => {
            listed.iter().map(|a| StepDef { name: a.clone(), agent: a.clone(), needs: vec![], input: None }).collect()
        }
    };

    if steps.is_empty() {
        return Err(cx.err("agents", &["agents"], "the workflow has no steps; list at least one agent"));
    }
    if steps.len() > MAX_STEPS {
        return Err(cx.err("steps", &[], format!("the workflow has {} steps; the limit is {MAX_STEPS}", steps.len())));
    }

    let mut seen = BTreeSet::new();
    let mut used = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        let field = if pattern == Pattern::Dependency { format!("steps[{i}].name") } else { format!("agents[{i}]") };
        names::validate("step", &s.name).map_err(|e| cx.err(&field, &[&s.name], e.to_string()))?;
        if !seen.insert(s.name.as_str()) {
            return Err(cx.err(
                field,
                &[&s.name],
                format!(
                    "`{}` appears twice; step names must be unique (use the `steps:` form to run an agent twice)",
                    s.name
                ),
            ));
        }
        let afield = if pattern == Pattern::Dependency { format!("steps[{i}].agent") } else { field.clone() };
        names::validate("agent", &s.agent).map_err(|e| cx.err(&afield, &[&s.agent], e.to_string()))?;
        let Some(def) = defs.get(&s.agent) else {
            let known: Vec<&str> = defs.keys().map(String::as_str).collect();
            return Err(cx.err(
                afield,
                &[&s.agent],
                format!(
                    "unknown agent `{}`; define it under `agents:` or in an agents file (--agents FILE){}",
                    s.agent,
                    if known.is_empty() { String::new() } else { format!("; known agents: {}", known.join(", ")) }
                ),
            ));
        };
        def.kind()
            .map_err(|m| cx.err(format!("agents.{}", s.agent), &[&s.agent], format!("agent `{}` {m}", s.agent)))?;
        if let Some(t) = def.timeout
            && !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS)
        {
            return Err(cx.err(
                format!("agents.{}.timeout", s.agent),
                &["timeout"],
                "timeout must be a positive number of seconds, at most 31536000 (a year)",
            ));
        }
        if let Some(t) = def.backoff
            && !(t.is_finite() && (0.0..=MAX_BACKOFF_SECS).contains(&t))
        {
            return Err(cx.err(
                format!("agents.{}.backoff", s.agent),
                &["backoff"],
                "backoff must be a number of seconds from 0 to 60",
            ));
        }
        if let Some(n) = def.retries
            && n > MAX_RETRIES
        {
            return Err(cx.err(format!("agents.{}.retries", s.agent), &["retries"], "retries must be at most 100"));
        }
        used.insert(s.agent.clone(), def.clone());
    }
    for (i, s) in steps.iter().enumerate() {
        for n in &s.needs {
            if !seen.contains(n.as_str()) {
                return Err(cx.err(
                    format!("steps[{i}].needs"),
                    &["needs", n],
                    format!("step `{}` needs `{n}`, which is not a step of this workflow", s.name),
                ));
            }
            if n == &s.name {
                return Err(cx.err(format!("steps[{i}].needs"), &["needs", n], format!("step `{n}` needs itself")));
            }
        }
    }

    let aggregation = match (&raw.result_aggregation, &raw.aggregation) {
        (_, Some(a)) | (Some(Aggregation::Named(a)), None) => Some(a.clone()),
        (Some(Aggregation::Flag(true)), None) => Some("all".to_owned()),
        _ => None,
    };
    if let Some(a) = &aggregation
        && !AGGREGATIONS.contains(&a.as_str())
    {
        return Err(cx.err(
            "aggregation",
            &[a],
            format!("aggregation `{a}` is unknown; use one of {}", AGGREGATIONS.join(", ")),
        ));
    }
    let mut success_criteria = raw.success_criteria.clone().unwrap_or_default();
    dedupe(&mut success_criteria);
    for def in used.values_mut() {
        dedupe(&mut def.requires);
    }
    for c in &success_criteria {
        names::validate("fact", c).map_err(|e| cx.err("success_criteria", &[c], e.to_string()))?;
    }
    for (name, def) in &used {
        for f in &def.requires {
            names::validate("fact", f).map_err(|e| cx.err(format!("agents.{name}.requires"), &[f], e.to_string()))?;
        }
    }
    let coordination_points: Vec<CoordinationPoint> = match &raw.coordination_points {
        None => vec![],
        Some(PointsField::Names(names)) => {
            let mut names = names.clone();
            dedupe(&mut names);
            names.into_iter().map(|name| CoordinationPoint { name, after: vec![] }).collect()
        }
        Some(PointsField::After(map)) => {
            map.iter().map(|(name, after)| CoordinationPoint { name: name.clone(), after: after.clone() }).collect()
        }
    };
    for p in &coordination_points {
        names::validate("coordination point", &p.name)
            .map_err(|e| cx.err("coordination_points", &[&p.name], e.to_string()))?;
        if let Some(missing) = p.after.iter().find(|s| !seen.contains(s.as_str())) {
            return Err(cx.err(
                format!("coordination_points.{}", p.name),
                &[missing],
                format!("coordination point `{}` waits for `{missing}`, which is not a step of this workflow", p.name),
            ));
        }
    }
    if let Some(t) = raw.timeout
        && !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS)
    {
        return Err(cx.err(
            "timeout",
            &["timeout"],
            "timeout must be a positive number of seconds, at most 31536000 (a year)",
        ));
    }

    let wf = Workflow {
        name,
        pattern,
        agents: used,
        steps,
        handoff_validation: raw.handoff_validation.unwrap_or(false),
        rollback_on_failure: raw.rollback_on_failure.unwrap_or(false),
        coordination_points,
        success_criteria,
        aggregation,
        timeout: raw.timeout,
        input: raw.input.clone().unwrap_or(Value::Null),
    };
    // Cycles are found by compiling the plan; report them against this file, at the `needs`
    // of the cycle's second step (it needs the first), else at that step's name.
    wf.plan().map_err(|mut e| {
        e.file = file.to_owned();
        if e.line.is_none()
            && let Some(cycle) = e.message.split('`').nth(1)
        {
            let names: Vec<&str> = cycle.split(" -> ").collect();
            if let [first, second, ..] = names.as_slice() {
                let at = source.lines().position(|l| declares(l, "name", second)).map(|i| i + 1);
                e.line = at
                    .and_then(|start| {
                        source
                            .lines()
                            .enumerate()
                            .skip(start - 1)
                            .take_while(|(i, l)| *i + 1 == start || !l.trim_start().starts_with('-'))
                            .find(|(_, l)| contains_word(l, "needs") && contains_word(l, first))
                            .map(|(i, _)| i + 1)
                    })
                    .or(at);
            }
        }
        e
    })?;
    Ok(wf)
}
