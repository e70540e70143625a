//! Reading workflow and agents files (YAML or JSON) into a validated [`Workflow`].

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    AgentDef, Error, MAX_BACKOFF_SECS, MAX_FILE_BYTES, MAX_RETRIES, MAX_STEPS, MAX_TIMEOUT_SECS, Pattern, StepDef,
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
    /// `sequential`, `parallel` or `dependency` (implied by `steps:`).
    pattern: Option<String>,
    /// Agent names (defined in an agents file) or a map of name -> definition, in run order.
    agents: Option<AgentsField>,
    /// The dependency form: steps with `needs`.
    steps: Option<Vec<StepFile>>,
    /// Check each step's agent `requires` facts before handing over to it; unmet ones fail the run.
    handoff_validation: Option<bool>,
    /// Seed option, recorded with the run.
    rollback_on_failure: Option<bool>,
    /// Seed option: named barriers, recorded with the run.
    coordination_points: Option<Vec<String>>,
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
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AgentsField, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(AgentsField::Names(names))
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

struct Ctx<'a> {
    file: &'a str,
    source: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, needle: &[&str], message: impl Into<String>) -> Error {
        Error {
            file: self.file.to_owned(),
            line: line_of(self.source, needle),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The first line that contains every needle as a whole word (found as written or quoted), if
/// any: the agent `a` is not found inside `pattern: sequential`.
fn line_of(source: &str, needles: &[&str]) -> Option<usize> {
    if needles.is_empty() {
        return None;
    }
    source.lines().position(|l| needles.iter().all(|n| contains_word(l, n))).map(|i| i + 1)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `needle` occurs in `line` with no name character right before or after it.
fn contains_word(line: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    line.match_indices(needle).any(|(i, _)| {
        !line[..i].chars().next_back().is_some_and(is_word_char)
            && !line[i + needle.len()..].chars().next().is_some_and(is_word_char)
    })
}

/// The line has `key: value` (either may be quoted), as a step's `name: build` does.
fn declares(line: &str, key: &str, value: &str) -> bool {
    line.match_indices(key).any(|(i, _)| {
        if line[..i].chars().next_back().is_some_and(is_word_char) {
            return false;
        }
        let rest = line[i + key.len()..].trim_start_matches(['"', '\'']).trim_start();
        let Some(rest) = rest.strip_prefix(':') else { return false };
        let rest = rest.trim_start().trim_start_matches(['"', '\'']);
        rest.strip_prefix(value).is_some_and(|after| !after.chars().next().is_some_and(is_word_char))
    })
}

fn is_json(source: &str, file: &str) -> bool {
    file.ends_with(".json") || source.trim_start().starts_with('{')
}

/// Removes repeated names, keeping the first of each.
fn dedupe(names: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// A workflow file is a map. serde would otherwise accept a list whose items fill the fields
/// in order, which nobody means.
fn refuse_non_map(source: &str, file: &str) -> Result<(), Error> {
    if source.len() > MAX_FILE_BYTES {
        return Ok(()); // reported by `deserialize`
    }
    let top: Option<Value> =
        if is_json(source, file) { serde_json::from_str(source).ok() } else { yaml_serde::from_str(source).ok() };
    let kind = match top {
        Some(Value::Object(_)) | None => return Ok(()), // a parse error is reported with its line later
        Some(Value::Array(_)) => "a list",
        Some(Value::Null) => "empty",
        Some(_) => "a single value",
    };
    Err(Error {
        file: file.to_owned(),
        line: Some(1),
        field: String::new(),
        message: format!("the file is {kind}; a workflow is a map with keys such as `pattern:`, `agents:` or `steps:`"),
    })
}

fn deserialize<T: serde::de::DeserializeOwned>(source: &str, file: &str) -> Result<T, Error> {
    if source.len() > MAX_FILE_BYTES {
        return Err(Error {
            file: file.to_owned(),
            line: None,
            field: String::new(),
            message: format!("file is {} bytes; the limit is {MAX_FILE_BYTES} bytes", source.len()),
        });
    }
    let mut err = if is_json(source, file) {
        match serde_json::from_str(source) {
            Ok(v) => return Ok(v),
            Err(e) => Error {
                file: file.to_owned(),
                line: Some(e.line()),
                field: String::new(),
                message: friendly(&e.to_string()),
            },
        }
    } else {
        match yaml_serde::from_str(source) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let line = e.location().map(|l| l.line());
                // yaml_serde prefixes the path of the faulty node (`agents.dev.retries: ...`).
                let (field, message) = split_path(&friendly(&e.to_string()));
                Error { file: file.to_owned(), line, field, message }
            }
        }
    };
    // A duplicate is reported at the start of its map; point at the second definition instead.
    if (err.message.ends_with("is defined twice") || err.message.starts_with("duplicate field `"))
        && let Some(name) = err.message.split('`').nth(1)
        && let Some(line) = second_definition_line(source, name)
    {
        err.line = Some(line);
    }
    Err(err)
}

/// Splits `path: message` into the path (a field like `steps[0].needs`) and the message.
fn split_path(msg: &str) -> (String, String) {
    if let Some((path, rest)) = msg.split_once(": ")
        && !path.is_empty()
        && path.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
    {
        return (path.to_owned(), rest.to_owned());
    }
    (String::new(), msg.to_owned())
}

/// The line of the second `name:` key in a block mapping, if the file writes them one a line.
fn second_definition_line(source: &str, name: &str) -> Option<usize> {
    let plain = format!("{name}:");
    let quoted = format!("\"{name}\":");
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with(&plain) || l.starts_with(&quoted)
        })
        .nth(1)
        .map(|(i, _)| i + 1)
}

/// Rewrites serde's wording for the untagged enums into something a user can act on.
fn friendly(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg).to_owned();
    if msg.contains("untagged enum Aggregation") {
        return "`result_aggregation` must be true/false or one of all, any, first, majority, consensus_required"
            .into();
    }
    if msg.contains("untagged enum AgentsFile") {
        return "an agents file is a map of agent name -> definition (optionally under `agents:`); \
                each definition takes run, builtin, params, timeout, retries, backoff, requires, compensate, env, cwd, role, duration, description"
            .into();
    }
    if msg.contains("untagged enum Command") {
        return "a command is a list of strings or one string".into();
    }
    msg
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
                    Some(from_file) if !says_how => {
                        from_file.role = v.role.clone().or(from_file.role.take());
                        from_file.duration = v.duration.clone().or(from_file.duration.take());
                        from_file.description = v.description.clone().or(from_file.description.take());
                    }
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
        Some(other) => {
            return Err(cx.err(
                "pattern",
                &["pattern", other],
                format!("pattern `{other}` is not supported by this version; use sequential, parallel or dependency"),
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
                "`steps:` belongs to the dependency form; with `pattern: sequential` or `parallel` list `agents:` instead",
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
    let coordination_points = raw.coordination_points.clone().unwrap_or_default();
    for p in &coordination_points {
        names::validate("coordination point", p).map_err(|e| cx.err("coordination_points", &[p], e.to_string()))?;
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
