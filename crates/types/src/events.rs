//! The live progress of a boot, as the server streams it (`GET .../events`, Server-Sent Events):
//! each step's start and end, its output as it arrives (already redacted), and a final `done`.
//! The server sends these types and the CLI reads them, so both agree by construction.

use serde::{Deserialize, Serialize};

use crate::api::InstanceSummary;
use crate::state::{InstanceStatus, StepName, StepStatus};

/// A step started (`running`) or ended (`success`/`error`, with its duration and error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEvent {
    pub instance_id: String,
    pub name: StepName,
    pub status: StepStatus,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Output of the running step, redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputEvent {
    pub instance_id: String,
    pub step: StepName,
    pub data: String,
}

/// The boot ended: the instance's status and summary as the store has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DoneEvent {
    pub instance_id: String,
    pub status: InstanceStatus,
    pub summary: InstanceSummary,
}

/// One event of a boot's stream; its SSE event name is [`Event::kind`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    Step(StepEvent),
    Output(OutputEvent),
    Done(DoneEvent),
}

/// The SSE event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Step,
    Output,
    Done,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Output => "output",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Step, Self::Output, Self::Done]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Step(_) => EventKind::Step,
            Event::Output(_) => EventKind::Output,
            Event::Done(_) => EventKind::Done,
        }
    }

    /// Reads an event from its SSE name and JSON data (the name says which shape it has).
    pub fn decode(kind: &str, data: &str) -> Result<Self, String> {
        let kind = EventKind::parse(kind).ok_or_else(|| format!("unknown event `{kind}`"))?;
        let bad = |e: serde_json::Error| format!("malformed `{}` event: {e}", kind.as_str());
        Ok(match kind {
            EventKind::Step => Event::Step(serde_json::from_str(data).map_err(bad)?),
            EventKind::Output => Event::Output(serde_json::from_str(data).map_err(bad)?),
            EventKind::Done => Event::Done(serde_json::from_str(data).map_err(bad)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_sse_form() {
        let events = [
            Event::Step(StepEvent {
                instance_id: "wpi_1".into(),
                name: StepName::CloneRepo,
                status: StepStatus::Error,
                metadata: serde_json::Map::new(),
                duration_ms: Some(12),
                error: Some("git clone failed".into()),
            }),
            Event::Output(OutputEvent {
                instance_id: "wpi_1".into(),
                step: StepName::ProjectSetup,
                data: "héllo\n".into(),
            }),
            Event::Done(DoneEvent {
                instance_id: "wpi_1".into(),
                status: InstanceStatus::Failed,
                summary: InstanceSummary {
                    success: false,
                    total_duration_ms: 40,
                    failed_step: Some("clone_repo".into()),
                    error: Some("git clone failed".into()),
                    completed_steps: 3,
                    total_steps: 8,
                },
            }),
        ];
        for e in events {
            let data = serde_json::to_string(&e).unwrap();
            assert_eq!(Event::decode(e.kind().as_str(), &data).unwrap(), e);
        }
        let step = serde_json::to_value(Event::Step(StepEvent {
            instance_id: "i".into(),
            name: StepName::CreateVm,
            status: StepStatus::Running,
            metadata: Default::default(),
            duration_ms: None,
            error: None,
        }))
        .unwrap();
        assert_eq!(step["name"], "create_vm");
        assert_eq!(step["status"], "running");
        assert!(Event::decode("nope", "{}").is_err());
        assert!(Event::decode("step", "{").is_err());
    }
}
