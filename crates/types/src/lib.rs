//! Shared vocabulary of warmpool: API shapes, ids, states, step names, and pure helpers
//! (output capping, name validation) used by the server, the store, the backends and the agent.
//! Nothing in this crate does I/O.

pub mod agent;
pub mod api;
pub mod events;
pub mod ids;
pub mod output;
pub mod repo_url;
pub mod state;
pub mod time;
pub mod validate;
