//! How a boot reports what it does: the pipeline tells a [`RunRecorder`] each step's start, its
//! output as it comes and its record when it ends. The app records over the store and the live
//! event stream; unit tests record in memory.

use async_trait::async_trait;
use serde_json::{Map, Value};
use warmpool_types::state::{StepName, StepResult};

/// A step that has ended, as the pipeline saw it (output redacted and capped).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedStep {
    /// Its position in the boot's pipeline.
    pub seq: u32,
    pub name: StepName,
    pub result: StepResult,
    pub output: String,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub metadata: Map<String, Value>,
}

#[async_trait]
pub trait RunRecorder: Send + Sync {
    /// A step has started.
    fn step_started(&self, name: StepName);
    /// Output of the running step, already redacted.
    fn output(&self, step: StepName, text: &str);
    /// A step has ended. The boot fails when its record cannot be kept: a log with holes would
    /// mislead whoever debugs the setup.
    async fn step_finished(&self, step: &FinishedStep) -> Result<(), String>;
    /// The boot's VM exists and its agent answers to `token` at `agent_url`: kept so that a
    /// restarted server can reach it.
    async fn vm_created(&self, agent_url: &str, token: &str) -> Result<(), String>;
}

#[cfg(test)]
pub mod memory {
    //! A recorder that keeps everything in memory, for the steps' unit tests.

    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct MemoryRecorder {
        pub started: Mutex<Vec<StepName>>,
        pub output: Mutex<String>,
        pub finished: Mutex<Vec<FinishedStep>>,
        pub vm: Mutex<Option<(String, String)>>,
        /// Refuse to keep step records (as a store that is down would).
        pub fail_records: bool,
    }

    impl MemoryRecorder {
        pub fn finished(&self) -> Vec<FinishedStep> {
            self.finished.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl RunRecorder for MemoryRecorder {
        fn step_started(&self, name: StepName) {
            self.started.lock().unwrap().push(name);
        }
        fn output(&self, _step: StepName, text: &str) {
            self.output.lock().unwrap().push_str(text);
        }
        async fn step_finished(&self, step: &FinishedStep) -> Result<(), String> {
            if self.fail_records {
                return Err("the store is down".into());
            }
            self.finished.lock().unwrap().push(step.clone());
            Ok(())
        }
        async fn vm_created(&self, agent_url: &str, token: &str) -> Result<(), String> {
            *self.vm.lock().unwrap() = Some((agent_url.into(), token.into()));
            Ok(())
        }
    }
}
