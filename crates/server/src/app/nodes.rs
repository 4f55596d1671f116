//! This server as one node of several on one database: its lease, the loss of other nodes (their
//! VMs are failed and replaced here), and where a VM hosted by another node is reached.

use std::sync::Arc;
use std::time::Duration;

use warmpool_store::{GoldenRow, InstanceRow, NodeRow};

use super::App;
use crate::error::AppResult;

/// Who this server is among the nodes sharing its database.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The data dir's own id (see [`NodeRow::node_id`]).
    pub node_id: String,
    /// Where the other nodes reach this one's API.
    pub url: String,
    /// The most VMs this node hosts.
    pub capacity: u32,
    /// How long a lease lasts without renewal; it is renewed every third of it.
    pub lease: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "local".into(),
            node_id: "local".into(),
            url: String::new(),
            capacity: u32::MAX,
            lease: Duration::from_secs(10),
        }
    }
}

/// Why a lost node's VMs were failed, as their `failureReason` says.
fn lost_reason(node: &str) -> String {
    format!("node {node} was lost (its lease expired); the VM is replaced on another node")
}

impl App {
    /// Whether the instance's VM is hosted here (rows from before nodes belong to the node that
    /// has them: there was only one).
    pub fn is_mine(&self, inst: &InstanceRow) -> bool {
        inst.node.as_deref().is_none_or(|n| n == self.cfg.node.name)
    }

    pub fn is_my_golden(&self, g: &GoldenRow) -> bool {
        g.node.as_deref().is_none_or(|n| n == self.cfg.node.name)
    }

    fn node_row(&self) -> NodeRow {
        let now = self.now();
        let n = &self.cfg.node;
        NodeRow {
            name: n.name.clone(),
            node_id: n.node_id.clone(),
            url: n.url.clone(),
            capacity: n.capacity,
            lease_until: now + n.lease.as_millis() as i64,
            started_at: now,
            renewed_at: now,
        }
    }

    /// Takes this node's row in the store: false while another live node holds the name.
    pub async fn register_node(&self) -> AppResult<bool> {
        let now = self.now();
        let me = &self.cfg.node;
        let previous = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.name == me.name && n.node_id == me.node_id);
        *self
            .previous_run_alive
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = previous.map(|n| n.renewed_at);
        let taken = self.store.register_node(&self.node_row(), now).await?;
        if taken {
            self.store_up_since(Some(now));
        }
        Ok(taken)
    }

    fn store_up_since(&self, since: Option<i64>) {
        let mut up = self.store_up.lock().unwrap_or_else(|p| p.into_inner());
        *up = since.map(|s| up.unwrap_or(s));
    }

    /// Renews the lease until the row is no longer this node's (another node took the name after
    /// the lease ran out — this node's VMs were failed and replaced meanwhile); then returns.
    /// While the store is unreachable it keeps trying.
    pub async fn keep_lease(self: Arc<Self>) {
        let every = self.cfg.node.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let n = &self.cfg.node;
            let started = self.now();
            let until = started + n.lease.as_millis() as i64;
            match self
                .store
                .renew_node(&n.name, &n.node_id, until, started)
                .await
            {
                Ok(true) => self.store_up_since(Some(started)),
                Ok(false) => {
                    tracing::error!(node = %n.name, "this node's lease was taken over by another node");
                    return;
                }
                Err(e) => {
                    self.store_up_since(None);
                    tracing::warn!(node = %n.name, "cannot renew this node's lease: {e}");
                }
            }
        }
    }

    /// Fails the live instances of every other node whose lease has expired, so that their pools
    /// are refilled by the nodes still alive. The number failed.
    pub async fn fail_lost_nodes(&self) -> AppResult<usize> {
        let now = self.now();
        // Only once the store has answered this node for a whole lease: after an outage every
        // lease has run out, and the other nodes get that long (three renewals) to renew theirs
        // before they are judged.
        let up = *self.store_up.lock().unwrap_or_else(|p| p.into_inner());
        if up.is_none_or(|since| now - since < self.cfg.node.lease.as_millis() as i64) {
            return Ok(0);
        }
        let mut failed = 0;
        for n in self.store.list_nodes().await? {
            if n.name == self.cfg.node.name || n.lease_until >= now {
                continue;
            }
            // Its boots first, each with the step it was in; then everything else it hosted.
            let reason = lost_reason(&n.name);
            for inst in self
                .store
                .instances_in(&[warmpool_types::state::InstanceStatus::Provisioning])
                .await?
                .into_iter()
                .filter(|i| i.node.as_deref() == Some(n.name.as_str()))
            {
                if self
                    .fail_interrupted(&inst, Some(n.renewed_at), &reason)
                    .await?
                {
                    failed += 1;
                }
            }
            let ids = self
                .store
                .fail_instances_of_lost_node(&n.name, now, &reason)
                .await?;
            if !ids.is_empty() {
                tracing::warn!(node = %n.name, instances = ids.len(), "node lost: its instances are failed and replaced");
                failed += ids.len();
            }
        }
        Ok(failed)
    }

    /// The API address of the node hosting `inst`, when that is another node and it is alive
    /// (a lost node's instances are failed, and what the store holds of them is served here).
    pub async fn remote_node_url(&self, inst: &InstanceRow) -> AppResult<Option<String>> {
        if self.is_mine(inst) {
            return Ok(None);
        }
        let name = inst.node.as_deref().unwrap_or_default();
        let now = self.now();
        Ok(self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.name == name && n.lease_until >= now && !n.url.is_empty())
            .map(|n| n.url))
    }
}
