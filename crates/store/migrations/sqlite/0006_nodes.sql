-- Nodes: servers sharing one database, each hosting VMs on its own backend. A node holds a lease
-- it renews; one whose lease ran out is dead, and its VMs are replaced elsewhere.
CREATE TABLE nodes (
    name        TEXT    PRIMARY KEY,
    node_id     TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    capacity    INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    renewed_at  INTEGER NOT NULL
);
-- Which node hosts an instance's VM, and keeps a golden (NULL: from before nodes).
ALTER TABLE instances ADD COLUMN node TEXT;
ALTER TABLE goldens ADD COLUMN node TEXT;
CREATE INDEX instances_by_node ON instances (node, status);
-- Values every server sharing the database must agree on (checks of the secrets key and of the
-- admin token: digests, never the secrets themselves).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
