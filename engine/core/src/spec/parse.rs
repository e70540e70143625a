//! Reading workflow and agents files (YAML or JSON) into a validated [`Workflow`].

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::source::{Ctx, check_source, contains_word, declares, deserialize, refuse_non_map};
use super::{
    AgentDef, CoordinationPoint, Error, HandoffPolicy, MAX_ACTIVATIONS, MAX_BACKOFF_SECS, MAX_RETRIES, MAX_STEPS,
    MAX_TIMEOUT_SECS, Pattern, StepDef, Workflow,
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
    /// With handoff_validation: `fail` (default) the run on an unmet prerequisite, or `wait`
    /// until other steps report the facts.
    handoff_policy: Option<HandoffPolicy>,
    /// Seed option, recorded with the run.
    rollback_on_failure: Option<bool>,
    /// Named barriers: a list of names (each reached when an agent reports that fact) or a map of
    /// name -> steps (reached when they have completed); recorded as CoordinationPointReached.
    coordination_points: Option<NamesOrMap<Points>>,
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
    /// `event_driven`: the event types that start agents: a list (agents say which they listen
    /// for with `on:`) or a map of event type -> agents.
    triggers: Option<NamesOrMap<Triggers>>,
    /// `event_driven`: a new agent instance per event (`true`) or one at a time per agent.
    dynamic_agent_allocation: Option<bool>,
    /// `event_driven`: most agent activations in one run (default 100, at most 10000).
    max_activations: Option<u32>,
    /// `event_driven`: seconds with no agent running and no new event before the run completes
    /// (default: the `idle_timeout` setting, 60).
    idle_timeout: Option<f64>,
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

/// What a list-or-map field holds, for its messages and schema.
trait ListOrMapKind {
    const EXPECTING: &'static str;
    const WHAT: &'static str;
    const SCHEMA: &'static str;
}

/// `coordination_points:` as the seed's list of names (each reached when the fact of that name
/// holds) or a map of name -> the steps after which it is reached.
#[derive(Debug)]
struct Points;
impl ListOrMapKind for Points {
    const EXPECTING: &'static str = "a list of point names or a map of point name -> list of steps";
    const WHAT: &'static str = "coordination point";
    const SCHEMA: &'static str = "CoordinationPoints";
}

/// `triggers:` as a list of event types (agents listen with `on:`) or a map of event type ->
/// the agents it starts.
#[derive(Debug)]
struct Triggers;
impl ListOrMapKind for Triggers {
    const EXPECTING: &'static str = "a list of event types or a map of event type -> list of agents";
    const WHAT: &'static str = "trigger";
    const SCHEMA: &'static str = "Triggers";
}

/// A list of names, or a map of name -> list of names in file order (duplicates refused).
#[derive(Debug)]
enum NamesOrMap<K> {
    Names(Vec<String>),
    Map(Vec<(String, Vec<String>)>, std::marker::PhantomData<K>),
}

impl<'de, K: ListOrMapKind> Deserialize<'de> for NamesOrMap<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K>(std::marker::PhantomData<K>);
        impl<'de, K: ListOrMapKind> serde::de::Visitor<'de> for Visit<K> {
            type Value = NamesOrMap<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(K::EXPECTING)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<NamesOrMap<K>, A::Error> {
                names_of(seq).map(NamesOrMap::Names)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NamesOrMap<K>, A::Error> {
                let mut out: Vec<(String, Vec<String>)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Vec<String>>()? {
                    if out.iter().any(|(n, _)| n == &k) {
                        return Err(serde::de::Error::custom(format!("{} `{k}` is defined twice", K::WHAT)));
                    }
                    out.push((k, v));
                }
                Ok(NamesOrMap::Map(out, std::marker::PhantomData))
            }
        }
        d.deserialize_any(Visit::<K>(std::marker::PhantomData))
    }
}

impl<K: ListOrMapKind> JsonSchema for NamesOrMap<K> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        K::SCHEMA.into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names = generator.subschema_for::<Vec<String>>();
        let map = generator.subschema_for::<BTreeMap<String, Vec<String>>>();
        schemars::json_schema!({ "anyOf": [names, map] })
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
        on,
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
    if !on.is_empty() {
        base.on = on;
    }
    base.compensate = compensate.or(base.compensate.take());
    base.env.extend(env);
    base.cwd = cwd.or(base.cwd.take());
    base.testing = testing.or(base.testing);
    base.role = role.or(base.role.take());
    base.duration = duration.or(base.duration.take());
    base.description = description.or(base.description.take());
}

/// The checks every agent a workflow uses must pass: a way to run and sane limits.
fn check_agent(cx: &Ctx<'_>, name: &str, def: &AgentDef) -> Result<(), Error> {
    def.kind().map_err(|m| cx.err(format!("agents.{name}"), &[name], format!("agent `{name}` {m}")))?;
    if let Some(t) = def.timeout
        && !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS)
    {
        return Err(cx.err(
            format!("agents.{name}.timeout"),
            &["timeout"],
            "timeout must be a positive number of seconds, at most 31536000 (a year)",
        ));
    }
    if let Some(t) = def.backoff
        && !(t.is_finite() && (0.0..=MAX_BACKOFF_SECS).contains(&t))
    {
        return Err(cx.err(
            format!("agents.{name}.backoff"),
            &["backoff"],
            "backoff must be a number of seconds from 0 to 60",
        ));
    }
    if let Some(n) = def.retries
        && n > MAX_RETRIES
    {
        return Err(cx.err(format!("agents.{name}.retries"), &["retries"], "retries must be at most 100"));
    }
    Ok(())
}

/// `event_driven`: each trigger and the agents it starts, from the `triggers:` map and the
/// agents' `on:` lists. The agents considered are the ones the workflow lists, or, when it lists
/// none (the seed's dict), every agent of the agents file; a listed agent listening for an event
/// that is not a trigger is refused, an agents-file agent listening for another workflow's
/// events is left out.
fn listeners(
    cx: &Ctx<'_>,
    raw: &WorkflowFile,
    listed: &[String],
    defs: &BTreeMap<String, AgentDef>,
    used: &mut BTreeMap<String, AgentDef>,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let Some(field) = &raw.triggers else {
        return Err(cx.err(
            "triggers",
            &["pattern"],
            "the event_driven pattern needs `triggers:`, the event types that start agents (for example [code_change, test_failure])",
        ));
    };
    let mut triggers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let entries: Vec<(String, Vec<String>)> = match field {
        NamesOrMap::Names(names) => names.iter().map(|n| (n.clone(), vec![])).collect(),
        NamesOrMap::Map(map, _) => map.clone(),
    };
    for (t, agents) in entries {
        names::validate("trigger", &t).map_err(|e| cx.err("triggers", &[&t], e.to_string()))?;
        let list = triggers.entry(t.clone()).or_default();
        for a in agents {
            if !defs.contains_key(&a) {
                return Err(cx.err(
                    format!("triggers.{t}"),
                    &[&a],
                    format!("trigger `{t}` starts `{a}`, which is not a defined agent; define it under `agents:` or in an agents file"),
                ));
            }
            if !list.contains(&a) {
                list.push(a);
            }
        }
    }
    if triggers.is_empty() {
        return Err(cx.err("triggers", &["triggers"], "`triggers:` is empty; name the event types that start agents"));
    }
    let explicit = !listed.is_empty();
    let candidates: Vec<&String> = if explicit { listed.iter().collect() } else { defs.keys().collect() };
    for a in candidates {
        let Some(def) = defs.get(a) else { continue };
        for t in &def.on {
            match triggers.get_mut(t) {
                Some(list) if !list.contains(a) => list.push(a.clone()),
                Some(_) => {}
                None if explicit => {
                    let known: Vec<&str> = triggers.keys().map(String::as_str).collect();
                    return Err(cx.err(
                        format!("agents.{a}.on"),
                        &[t],
                        format!(
                            "agent `{a}` listens for `{t}`, which is not a trigger; the triggers are {}",
                            known.join(", ")
                        ),
                    ));
                }
                None => {}
            }
        }
    }
    for (t, agents) in &triggers {
        for a in agents {
            let def = &defs[a];
            names::validate("agent", a).map_err(|e| cx.err(format!("triggers.{t}"), &[a], e.to_string()))?;
            check_agent(cx, a, def)?;
            used.insert(a.clone(), def.clone());
        }
    }
    if used.is_empty() {
        return Err(cx.err(
            "triggers",
            &["triggers"],
            "no agent listens for any trigger; give agents `on: [code_change]`, or map triggers to agents (`triggers: {code_change: [developer]}`)",
        ));
    }
    Ok(triggers)
}

/// Removes repeated names, keeping the first of each.
fn dedupe(names: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// Parses an agents file: a map of agent name → definition, optionally under `agents:`.
pub fn parse_agents_str(source: &str, file: &str) -> Result<BTreeMap<String, AgentDef>, Error> {
    check_source(source, file, &|_| true)?;
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

/// Whether a workflow file takes `key` at its top level (the fields of [`WorkflowFile`], read
/// once from its schema).
fn is_workflow_key(key: &str) -> bool {
    static KEYS: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let schema = super::file_schema();
        let properties = schema.get("properties").and_then(Value::as_object);
        properties.map(|p| p.keys().cloned().collect()).unwrap_or_default()
    })
    .contains(key)
}

/// Parses and validates a workflow file. `file` is only used in error messages and to decide
/// between JSON (`.json`, or text starting with `{`) and YAML.
pub fn parse_str(source: &str, file: &str, opts: &ParseOptions) -> Result<Workflow, Error> {
    check_source(source, file, &is_workflow_key)?;
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
        Some("event_driven") => Pattern::EventDriven,
        Some(other) => {
            return Err(cx.err(
                "pattern",
                &["pattern", other],
                format!(
                    "pattern `{other}` is unknown; use sequential, parallel, dependency, sequential_with_parallel_testing or event_driven"
                ),
            ));
        }
    };
    let event_driven = pattern == Pattern::EventDriven;

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
                "`steps:` belongs to the dependency form; with `pattern: sequential`, `parallel` or `sequential_with_parallel_testing` list `agents:` instead (event_driven agents start from `triggers:`)",
            ));
        }
        (Pattern::EventDriven, None) => vec![],
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

    if steps.is_empty() && !event_driven {
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
        check_agent(&cx, &s.agent, def)?;
        used.insert(s.agent.clone(), def.clone());
    }
    let triggers = if event_driven {
        listeners(&cx, &raw, &listed, &defs, &mut used)?
    } else {
        if let Some(key) = [
            raw.triggers.as_ref().map(|_| "triggers"),
            raw.dynamic_agent_allocation.map(|_| "dynamic_agent_allocation"),
            raw.max_activations.map(|_| "max_activations"),
            raw.idle_timeout.map(|_| "idle_timeout"),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            return Err(cx.err(key, &[key], format!("`{key}` belongs to `pattern: event_driven`")));
        }
        BTreeMap::new()
    };
    if let Some(n) = raw.max_activations
        && !(1..=MAX_ACTIVATIONS).contains(&n)
    {
        return Err(cx.err("max_activations", &["max_activations"], "max_activations must be from 1 to 10000"));
    }
    if let Some(t) = raw.idle_timeout
        && !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS)
    {
        return Err(cx.err(
            "idle_timeout",
            &["idle_timeout"],
            "idle_timeout must be a positive number of seconds, at most 31536000 (a year)",
        ));
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
        Some(NamesOrMap::Names(names)) => {
            let mut names = names.clone();
            dedupe(&mut names);
            names.into_iter().map(|name| CoordinationPoint { name, after: vec![] }).collect()
        }
        Some(NamesOrMap::Map(map, _)) => {
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
        handoff_policy: raw.handoff_policy.unwrap_or_default(),
        rollback_on_failure: raw.rollback_on_failure.unwrap_or(false),
        coordination_points,
        success_criteria,
        aggregation,
        timeout: raw.timeout,
        input: raw.input.clone().unwrap_or(Value::Null),
        triggers,
        dynamic_agent_allocation: raw.dynamic_agent_allocation.unwrap_or(false),
        max_activations: raw.max_activations,
        idle_timeout: raw.idle_timeout,
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
