-- Prepared VMs frozen into immutable artifacts, one per pool configuration; pool VMs are clones.
CREATE TABLE goldens (
    id           TEXT    PRIMARY KEY,        -- the id of the instance that built it (its step log)
    project_id   TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    config_hash  TEXT    NOT NULL,
    backend      TEXT    NOT NULL,
    commits_json TEXT    NOT NULL,
    status       TEXT    NOT NULL,           -- ready | deleted
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
CREATE INDEX goldens_by_config ON goldens (project_id, config_hash, status);

-- The golden an instance was cloned from, if any.
ALTER TABLE instances ADD COLUMN golden_id TEXT;
