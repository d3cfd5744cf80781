//! Which call of a room is open in its log (a `call.started` without its `call.ended`), and who is
//! in it: kept with the room (and in its snapshots) so that an owner loading the room can close a
//! call that its previous owner could not (a crash, a move, a restart ends the call's media there
//! without a trace in the log).

use std::collections::BTreeMap;

use proto::event::{CallParticipantV1, CallV1};
use proto::{EventPayload, UserId};
use serde::{Deserialize, Serialize};

/// The open call of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct OpenCall {
    pub id: String,
    /// Participant id → user.
    pub participants: BTreeMap<String, UserId>,
    /// Who started it (the actor of a closing `call.ended` when nobody is left).
    pub started_by: UserId,
}

/// Follows one committed event.
pub(super) fn apply(open: &mut Option<OpenCall>, payload: &EventPayload) {
    match payload {
        EventPayload::CallStarted(c) => {
            *open = Some(OpenCall {
                id: c.call.clone(),
                participants: BTreeMap::new(),
                started_by: c.user.clone(),
            })
        }
        EventPayload::CallParticipantJoined(p) => {
            if let Some(o) = open.as_mut().filter(|o| o.id == p.call) {
                o.participants.insert(p.participant.clone(), p.user.clone());
            }
        }
        EventPayload::CallParticipantLeft(p) => {
            if let Some(o) = open.as_mut().filter(|o| o.id == p.call) {
                o.participants.remove(&p.participant);
            }
        }
        EventPayload::CallEnded(c) if open.as_ref().is_some_and(|o| o.id == c.call) => *open = None,
        _ => {}
    }
}

/// The events that close `open`: everyone still listed leaves (`interrupted`), then the call ends.
pub(super) fn closing(open: &OpenCall) -> Vec<(UserId, EventPayload)> {
    let mut out: Vec<(UserId, EventPayload)> = open
        .participants
        .iter()
        .map(|(participant, user)| {
            let payload = EventPayload::CallParticipantLeft(CallParticipantV1 {
                call: open.id.clone(),
                user: user.clone(),
                participant: participant.clone(),
                reason: Some("interrupted".into()),
            });
            (user.clone(), payload)
        })
        .collect();
    let last = open
        .participants
        .values()
        .last()
        .cloned()
        .unwrap_or_else(|| open.started_by.clone());
    out.push((
        last.clone(),
        EventPayload::CallEnded(CallV1 {
            call: open.id.clone(),
            user: last,
        }),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> UserId {
        UserId::parse(u).expect("valid user")
    }

    #[test]
    fn follows_a_call_and_closes_what_is_left_open() {
        let mut open = None;
        let call = "c1".to_owned();
        apply(
            &mut open,
            &EventPayload::CallStarted(CallV1 {
                call: call.clone(),
                user: user("ada"),
            }),
        );
        for (p, u) in [("p1", "ada"), ("p2", "bob")] {
            let payload = EventPayload::CallParticipantJoined(CallParticipantV1 {
                call: call.clone(),
                user: user(u),
                participant: p.into(),
                reason: None,
            });
            apply(&mut open, &payload);
        }
        let left = EventPayload::CallParticipantLeft(CallParticipantV1 {
            call: call.clone(),
            user: user("ada"),
            participant: "p1".into(),
            reason: Some("left".into()),
        });
        apply(&mut open, &left);
        let o = open.clone().expect("still open");
        let types: Vec<&str> = closing(&o)
            .iter()
            .map(|(_, p)| p.event_type().name())
            .collect();
        assert_eq!(types, ["call.participant.left", "call.ended"]);
        apply(
            &mut open,
            &EventPayload::CallEnded(CallV1 {
                call,
                user: user("bob"),
            }),
        );
        assert!(open.is_none());
    }
}
