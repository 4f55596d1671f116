-- Pools that size themselves: a pool's autoscale bounds (set by its owner; `generation` makes
-- each change conditional) and the effective target its reconcilers last decided, with why and
-- from what (written by whichever node decides first; `changed_at` makes that conditional).
CREATE TABLE pool_autoscale (
    project_id   TEXT     PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    enabled      BOOLEAN NOT NULL,
    min_size     BIGINT NOT NULL,
    max_size     BIGINT NOT NULL,
    generation   BIGINT NOT NULL,
    target       BIGINT,
    changed_at   BIGINT,
    reason       TEXT,
    peak         BIGINT,
    boot_ms      BIGINT,
    updated_at   BIGINT NOT NULL
);
