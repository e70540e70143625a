//! The session decider: lifecycle, membership, memory writes with compare-and-set, refusals.

use ltmc_core::session::{Command, Rejection, SessionEvent, SessionState, SessionStatus, Write, decide, evolve};
use serde_json::{Value, json};

/// Decides `cmd` and folds its events (positions continue from the version).
fn apply(s: SessionState, cmd: Command) -> Result<SessionState, Rejection> {
    let events = decide(&s, cmd)?;
    Ok(events.iter().fold(s, |s, e| {
        let pos = s.version + 1;
        evolve(s, e, pos)
    }))
}

fn open(name: &str) -> SessionState {
    apply(SessionState::named(name), Command::Create { description: Some("feature work".into()) }).expect("created")
}

fn put(key: &str, value: Value, if_version: Option<u64>) -> Command {
    Command::Write { writer: "cli".into(), writes: vec![Write { key: key.into(), value: Some(value), if_version }] }
}

fn join(agent: &str) -> Command {
    Command::Join { agent: agent.into(), role: None }
}

#[test]
fn a_session_is_created_once() {
    let s = open("dev_001");
    assert_eq!((s.status, s.version), (SessionStatus::Open, 1));
    let again = decide(&s, Command::Create { description: None });
    assert_eq!(again, Err(Rejection::AlreadyExists("dev_001".into())));
    let bad = decide(&SessionState::named("a.b"), Command::Create { description: None });
    assert!(matches!(bad, Err(Rejection::BadName(_))), "{bad:?}");
}

#[test]
fn nothing_happens_to_a_session_that_does_not_exist() {
    let s = SessionState::named("ghost");
    for cmd in [join("a"), put("k", json!(1), None), Command::Close { reason: None }] {
        let err = decide(&s, cmd).expect_err("refused");
        assert_eq!(err, Rejection::NotFound("ghost".into()));
        assert!(err.to_string().contains("ltmc session create ghost"), "{err}");
    }
}

#[test]
fn members_join_heartbeat_and_leave() {
    let mut s = open("s");
    s = apply(s, join("dev")).expect("joined");
    assert_eq!(decide(&s, join("dev")), Ok(vec![]), "joining again changes nothing");
    s = apply(s, Command::Heartbeat { agent: "dev".into() }).expect("heartbeat");
    assert_eq!(s.members["dev"].heartbeats, 1);
    let stranger = decide(&s, Command::Heartbeat { agent: "qa".into() });
    assert!(matches!(stranger, Err(Rejection::NotMember { .. })), "{stranger:?}");
    s = apply(s, Command::Leave { agent: "dev".into() }).expect("left");
    assert_eq!(s.active_members().count(), 0);
    assert!(matches!(decide(&s, Command::Leave { agent: "dev".into() }), Err(Rejection::NotMember { .. })));
    s = apply(s, Command::Join { agent: "dev".into(), role: Some("developer".into()) }).expect("rejoined");
    assert_eq!(s.active_members().collect::<Vec<_>>(), ["dev"]);
    assert!(matches!(decide(&s, join("bad name")), Err(Rejection::BadName(_))));
}

#[test]
fn closing_makes_every_member_leave_and_refuses_later_writes() {
    let mut s = open("s");
    s = apply(s, join("a")).expect("a");
    s = apply(s, join("b")).expect("b");
    s = apply(s, Command::Leave { agent: "b".into() }).expect("b left");
    let events = decide(&s, Command::Close { reason: Some("done".into()) }).expect("closes");
    let types: Vec<&str> = events.iter().map(SessionEvent::event_type).collect();
    assert_eq!(types, ["AgentLeft", "SessionClosed"], "only the active member leaves");
    s = events.iter().fold(s, |s, e| evolve(s, e, 99));
    assert_eq!(s.status, SessionStatus::Closed);
    for cmd in [join("c"), put("k", json!(1), None), Command::Close { reason: None }] {
        assert_eq!(decide(&s, cmd), Err(Rejection::Closed("s".into())));
    }
}

#[test]
fn memory_versions_count_writes_and_compare_and_set_checks_them() {
    let mut s = open("s");
    s = apply(s, put("requirements", json!({"auth": "oauth"}), Some(0))).expect("first write");
    assert_eq!(s.key_version("requirements"), 1);
    let stale = decide(&s, put("requirements", json!("x"), Some(0)));
    assert_eq!(stale, Err(Rejection::VersionMismatch { key: "requirements".into(), expected: 0, actual: 1 }));
    s = apply(s, put("requirements", json!({"auth": "saml"}), Some(1))).expect("cas write");
    s = apply(s, put("requirements", json!(null), None)).expect("blind write; JSON null is a value");
    assert_eq!(s.key_version("requirements"), 3);
    assert_eq!(s.memory["requirements"].value, Some(Value::Null));
    let del = Command::Write {
        writer: "agent:dev".into(),
        writes: vec![Write { key: "requirements".into(), value: None, if_version: Some(3) }],
    };
    s = apply(s, del.clone()).expect("deleted");
    assert_eq!((s.key_version("requirements"), s.values().count()), (4, 0), "a delete keeps counting");
    assert_eq!(s.memory["requirements"].writer, "agent:dev");
    let again =
        decide(&s, Command::Write { writer: "cli".into(), writes: vec![Write { if_version: None, ..w(&del) }] });
    assert!(matches!(again, Err(Rejection::NoSuchKey { .. })), "{again:?}");
}

fn w(cmd: &Command) -> Write {
    match cmd {
        Command::Write { writes, .. } => writes[0].clone(),
        _ => unreachable!("a write"),
    }
}

#[test]
fn a_write_of_many_keys_is_all_or_nothing() {
    let s = apply(open("s"), put("a", json!(1), None)).expect("a");
    let many = |b_version| Command::Write {
        writer: "cli".into(),
        writes: vec![
            Write { key: "a".into(), value: Some(json!(2)), if_version: Some(1) },
            Write { key: "b".into(), value: Some(json!(2)), if_version: Some(b_version) },
        ],
    };
    assert!(matches!(decide(&s, many(5)), Err(Rejection::VersionMismatch { .. })), "one stale key refuses all");
    assert_eq!(decide(&s, many(0)).expect("both").len(), 2);
    let twice = Command::Write {
        writer: "cli".into(),
        writes: vec![
            Write { key: "a".into(), value: Some(json!(1)), if_version: None },
            Write { key: "a".into(), value: Some(json!(2)), if_version: None },
        ],
    };
    assert!(decide(&s, twice).expect_err("refused").to_string().contains("twice"));
}

#[test]
fn bad_keys_and_writers_are_refused_with_the_reason() {
    let s = open("s");
    for (key, says) in [("", "empty"), ("a b", "' '"), ("ä", "'ä'"), (&"k".repeat(129), "limit is 128")] {
        let err = decide(&s, put(key, json!(1), None)).expect_err("refused").to_string();
        assert!(err.contains(says), "{key:?}: {err}");
    }
    assert!(decide(&s, put("team/standards:v1.2", json!(1), None)).is_ok());
    let no_writer = Command::Write { writer: " ".into(), writes: vec![w(&put("k", json!(1), None))] };
    assert!(decide(&s, no_writer).expect_err("refused").to_string().contains("writer is empty"));
    let nothing = Command::Write { writer: "cli".into(), writes: vec![] };
    assert!(decide(&s, nothing).expect_err("refused").to_string().contains("nothing to write"));
    let control = Command::Join { agent: "a".into(), role: Some("x\u{1b}[31m".into()) };
    assert!(decide(&s, control).expect_err("refused").to_string().contains("control character"));
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let s = open("s");
    for e in decide(&s, put("k", json!({"deep": [1, 2]}), None)).expect("write") {
        assert_eq!(SessionEvent::from_parts(e.event_type(), &e.data()), Ok(e));
    }
    assert!(SessionEvent::from_parts("MemoryWritten", &json!({"key": 1})).is_err());
}
