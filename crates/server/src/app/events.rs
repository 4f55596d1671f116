//! Live progress of instances: every step start and end, output as it arrives (already redacted),
//! and a final `done`. Each running instance keeps its history in memory so a client that connects
//! late first gets everything so far, then follows; finished instances are replayed from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

/// History kept per step for late subscribers; live subscribers see everything.
const HISTORY_OUTPUT_PER_STEP: usize = 64 * 1024;
/// How long a finished run stays in memory for clients that are about to connect (a claim
/// waiting for its boot, a client that just started one); later ones replay it from the store.
/// Short, because a burst of boots would otherwise hold every history at once.
pub const LINGER: Duration = Duration::from_secs(5);

pub use warmpool_types::events::{DoneEvent, Event, OutputEvent, StepEvent};

/// What a subscriber gets: the history so far and the channel of what follows.
pub type Subscription = (Vec<Arc<Sequenced>>, broadcast::Receiver<Arc<Sequenced>>);

/// An event with its position in its instance's stream.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    pub event: Event,
}

/// How many events a slow subscriber may fall behind before it misses some.
const CHANNEL_CAPACITY: usize = 1024;

/// A broadcast channel that exists only while someone listens: a channel preallocates all its
/// slots (~40 KiB at this capacity), and with thousands of instances booting and nobody watching,
/// eager channels were most of the server's memory.
#[derive(Default)]
struct LazyChannel(Option<broadcast::Sender<Arc<Sequenced>>>);

impl LazyChannel {
    fn send(&mut self, ev: &Arc<Sequenced>) {
        if let Some(tx) = &self.0 {
            if tx.send(ev.clone()).is_err() {
                // Every receiver is gone: free the slots until the next subscriber.
                self.0 = None;
            }
        }
    }

    fn subscribe(&mut self) -> broadcast::Receiver<Arc<Sequenced>> {
        self.0
            .get_or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }
}

#[derive(Default)]
struct RunState {
    history: Vec<Arc<Sequenced>>,
    next_seq: u64,
    step_output: usize,
    tx: LazyChannel,
}

/// The live stream of one running instance.
pub struct LiveRun {
    state: Mutex<RunState>,
    project: Arc<Mutex<LazyChannel>>,
}

impl LiveRun {
    pub fn publish(&self, event: Event) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let keep = match &event {
            Event::Step(_) => {
                st.step_output = 0;
                true
            }
            Event::Output(o) => {
                st.step_output += o.data.len();
                st.step_output <= HISTORY_OUTPUT_PER_STEP
            }
            Event::Done(_) => true,
        };
        let ev = Arc::new(Sequenced {
            seq: st.next_seq,
            event,
        });
        st.next_seq += 1;
        if keep {
            st.history.push(ev.clone());
        }
        // Sent under the lock so a subscriber's snapshot and its live events never overlap or gap.
        st.tx.send(&ev);
        self.project
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(&ev);
    }
}

#[derive(Default)]
pub struct EventHub {
    runs: Mutex<HashMap<String, Arc<LiveRun>>>,
    projects: Mutex<HashMap<String, Arc<Mutex<LazyChannel>>>>,
}

impl EventHub {
    fn project_channel(&self, project_id: &str) -> Arc<Mutex<LazyChannel>> {
        self.projects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(project_id.to_string())
            .or_default()
            .clone()
    }

    /// Starts the stream of a new run.
    pub fn begin(&self, project_id: &str, instance_id: &str) -> Arc<LiveRun> {
        let run = Arc::new(LiveRun {
            state: Mutex::new(RunState::default()),
            project: self.project_channel(project_id),
        });
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance_id.to_string(), run.clone());
        run
    }

    /// Ends a run's stream; it stays replayable from memory for a little while.
    pub fn finish(self: &Arc<Self>, instance_id: &str) {
        let hub = self.clone();
        let id = instance_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            hub.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// Everything so far and the live continuation, if the instance runs in this process.
    pub fn subscribe(&self, instance_id: &str) -> Option<Subscription> {
        let run = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance_id)
            .cloned()?;
        let mut st = run.state.lock().unwrap_or_else(|p| p.into_inner());
        let rx = st.tx.subscribe();
        Some((st.history.clone(), rx))
    }

    /// Live events of every instance of a project, from now on.
    pub fn subscribe_project(&self, project_id: &str) -> broadcast::Receiver<Arc<Sequenced>> {
        self.project_channel(project_id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe()
    }
}

// ---------------------------------------------------------------------------------------------
// Streams for clients
// ---------------------------------------------------------------------------------------------

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;
use warmpool_store::InstanceRow;
use warmpool_types::state::{InstanceStatus, StepName, StepResult, StepStatus};

use super::{summary, App, Caller};
use crate::error::AppResult;

/// The events a finished (or elsewhere-running) instance's stored steps amount to, from `from`.
fn replay_steps(
    inst: &InstanceRow,
    steps: &[warmpool_store::StepRow],
    seq: &mut u64,
) -> Vec<Arc<Sequenced>> {
    let mut out = Vec::new();
    let mut push = |event: Event| {
        out.push(Arc::new(Sequenced { seq: *seq, event }));
        *seq += 1;
    };
    for s in steps {
        let Ok(name) = s.name.parse::<StepName>() else {
            tracing::warn!(instance = %inst.id, step = %s.name, "a stored step of an unknown kind is left out of the events");
            continue;
        };
        push(Event::Step(StepEvent {
            instance_id: inst.id.clone(),
            name,
            status: StepStatus::Running,
            metadata: Default::default(),
            duration_ms: None,
            error: None,
        }));
        if let Some(o) = s.output.as_ref().filter(|o| !o.is_empty()) {
            push(Event::Output(OutputEvent {
                instance_id: inst.id.clone(),
                step: name,
                data: o.clone(),
            }));
        }
        push(Event::Step(StepEvent {
            instance_id: inst.id.clone(),
            name,
            status: StepResult::from_success(s.success).into(),
            metadata: s.metadata.clone().unwrap_or_default(),
            duration_ms: Some(s.duration_ms),
            error: s.error.clone(),
        }));
    }
    out
}

impl App {
    /// An instance's events: everything so far, then the rest as it happens, ending with `done`.
    pub async fn instance_events(
        self: &Arc<Self>,
        caller: &Caller,
        project_id: &str,
        id: &str,
    ) -> AppResult<BoxStream<'static, Arc<Sequenced>>> {
        let inst = self.instance_for(caller, project_id, id).await?;
        if let Some((history, rx)) = self.events.subscribe(&inst.id) {
            let last = history.last().map(|e| e.seq);
            let finished = history.iter().any(|e| matches!(e.event, Event::Done(_)));
            let live = BroadcastStream::new(rx)
                .filter_map(|r| async move { r.ok() })
                // The snapshot and the channel were taken together; skip anything seen twice.
                .filter(move |e| std::future::ready(last.is_none_or(|l| e.seq > l)));
            let all = stream::iter(history).chain(if finished {
                live.take(0).boxed()
            } else {
                live.boxed()
            });
            return Ok(take_through_done(all.boxed()));
        }
        // Not running here: replay from the store, following it while it still provisions
        // (it may be running on another server).
        let app = self.clone();
        let stream = stream::unfold(
            (inst, 0usize, 0u64, false),
            move |(inst, shown, mut seq, ended)| {
                let app = app.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let mut inst = inst;
                    loop {
                        let steps = app.store.list_steps(&inst.id).await.ok()?;
                        if steps.len() > shown {
                            let events = replay_steps(&inst, &steps[shown..], &mut seq);
                            return Some((stream::iter(events), (inst, steps.len(), seq, false)));
                        }
                        if inst.status != InstanceStatus::Provisioning {
                            let done = Arc::new(Sequenced {
                                seq,
                                event: Event::Done(DoneEvent {
                                    instance_id: inst.id.clone(),
                                    status: inst.status,
                                    summary: summary(&inst, &steps),
                                }),
                            });
                            return Some((stream::iter(vec![done]), (inst, shown, seq + 1, true)));
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        inst = app.store.get_instance(&inst.id).await.ok()??;
                    }
                }
            },
        )
        .flatten();
        Ok(stream.boxed())
    }

    /// Live events of every instance of a project, from now on.
    pub async fn project_events(
        &self,
        caller: &Caller,
        project_id: &str,
    ) -> AppResult<BoxStream<'static, Arc<Sequenced>>> {
        self.project_for(caller, project_id).await?;
        let rx = self.events.subscribe_project(project_id);
        Ok(BroadcastStream::new(rx)
            .filter_map(|r| async move { r.ok() })
            .boxed())
    }
}

/// Ends a stream right after its `done` event.
fn take_through_done(s: BoxStream<'static, Arc<Sequenced>>) -> BoxStream<'static, Arc<Sequenced>> {
    stream::unfold((s, false), |(mut s, done)| async move {
        if done {
            return None;
        }
        let e = s.next().await?;
        let is_done = matches!(e.event, Event::Done(_));
        Some((e, (s, is_done)))
    })
    .boxed()
}
