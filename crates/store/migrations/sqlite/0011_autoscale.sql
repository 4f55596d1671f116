-- Pools that size themselves: a pool's autoscale bounds (set by its owner; `generation` makes
-- each change conditional) and the effective target its reconcilers last decided, with why and
-- from what (written by whichever node decides first; `changed_at` makes that conditional).
CREATE TABLE pool_autoscale (
    project_id   TEXT     PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    enabled      INTEGER NOT NULL,
    min_size     INTEGER NOT NULL,
    max_size     INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    target       INTEGER,
    changed_at   INTEGER,
    reason       TEXT,
    peak         INTEGER,
    boot_ms      INTEGER,
    updated_at   INTEGER NOT NULL
);
