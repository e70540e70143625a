//! `sessions` (one row per session) and `session_agents` (one row per agent that joined a
//! session: active or not, role, when it joined, was last seen and left).

use ltmc_core::RecordedEvent;

use super::{Change, Projection, Set, Val, session_of, text};

pub(crate) struct Sessions;

impl Projection for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["sessions", "session_agents"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(session) = session_of(&e.stream_id) else { return };
        let sid = || ("session_id", Val::Text(session.to_owned()));
        let at = Val::Time(e.recorded_at);
        let member = || vec![sid(), ("agent", text(e, "agent"))];
        let mut session_set =
            vec![("last_position", Set::To(Val::Int(e.global_position))), ("updated_at", Set::To(at.clone()))];
        match e.event_type.as_str() {
            "SessionCreated" => {
                out.push(Change::Upsert {
                    table: "sessions",
                    key: &["session_id"],
                    cols: vec![
                        sid(),
                        ("status", Val::Text("open".into())),
                        ("description", text(e, "description")),
                        ("created_at", at.clone()),
                        ("closed_at", Val::Null),
                        ("close_reason", Val::Null),
                        ("last_position", Val::Int(e.global_position)),
                        ("updated_at", at),
                    ],
                });
                return;
            }
            "AgentJoined" if text(e, "agent") != Val::Null => out.push(Change::Upsert {
                table: "session_agents",
                key: &["session_id", "agent"],
                // `heartbeats` is left out: it keeps counting across a leave and a new join.
                cols: vec![
                    sid(),
                    ("agent", text(e, "agent")),
                    ("role", text(e, "role")),
                    ("active", Val::Bool(true)),
                    ("joined_at", at.clone()),
                    ("last_seen_at", at.clone()),
                    ("left_at", Val::Null),
                ],
            }),
            "AgentHeartbeat" if text(e, "agent") != Val::Null => out.push(Change::Update {
                table: "session_agents",
                key: member(),
                set: vec![("last_seen_at", Set::To(at.clone())), ("heartbeats", Set::Add(1))],
            }),
            "AgentLeft" if text(e, "agent") != Val::Null => out.push(Change::Update {
                table: "session_agents",
                key: member(),
                set: vec![
                    ("active", Set::To(Val::Bool(false))),
                    ("left_at", Set::To(at.clone())),
                    ("last_seen_at", Set::To(at.clone())),
                ],
            }),
            "SessionClosed" => {
                session_set.push(("status", Set::To(Val::Text("closed".into()))));
                session_set.push(("closed_at", Set::To(at.clone())));
                session_set.push(("close_reason", Set::To(text(e, "reason"))));
            }
            _ => {}
        }
        out.push(Change::Update { table: "sessions", key: vec![sid()], set: session_set });
    }
}
