-- Several server nodes on one database (equivalent to migrations/sqlite/0006_nodes.sql). Each node
-- holds a lease on its row and renews it; a node whose lease passed is dead, and another node
-- fails its VMs. Instances and goldens record the node whose backend hosts them: a VM lives on one
-- machine, so only that node can reach it, and clones come from a golden on their own node.
CREATE TABLE nodes (
    name         TEXT COLLATE "C" PRIMARY KEY,
    -- The node's data dir's own random id: a restart on the same data dir takes the row over at
    -- once; another process claiming the name waits for the lease to pass.
    node_id      TEXT   NOT NULL,
    url          TEXT   NOT NULL,
    capacity     BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    renewed_at   BIGINT NOT NULL
);

-- NULL: rows from before nodes, the only node's. Adding a nullable column without a default
-- rewrites nothing (and fires no trigger: no row changes, so no revision moves).
ALTER TABLE instances ADD COLUMN node TEXT COLLATE "C";
ALTER TABLE goldens ADD COLUMN node TEXT COLLATE "C";
-- A node's live instances: counted against its capacity at every placement, and failed at once
-- when it is lost.
CREATE INDEX instances_by_node ON instances (node, status);

-- Values every server sharing the database must agree on (checks of the secrets key and of the
-- admin token: digests, never the secrets themselves).
CREATE TABLE settings (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
