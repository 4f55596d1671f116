//! warmpool: a control plane that keeps, per project, a pool of VMs that are booted, have the
//! project's repos cloned, its environment written and its setup commands run. This crate is the
//! server (api → app → provision → store/backend) and the command-line client.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod error;
pub mod git;
pub mod local_vms;
pub mod metrics;
pub mod provision;
pub mod reconcile;
pub mod sealed;
pub mod serve;
pub mod tasks;
