-- When the reconciler found a ready instance stale (config changed, branch moved, too old).
ALTER TABLE instances ADD COLUMN stale_at INTEGER;
-- The commit each repo was cloned at: {"owner/name": {"branch": ..., "commit": ...}}.
ALTER TABLE instances ADD COLUMN commits_json TEXT;
CREATE INDEX instances_claimable ON instances (project_id, kind, status, stale_at, provisioned_at);

-- Per-pool failure bookkeeping: backoff and the degraded stop.
CREATE TABLE pool_state (
    project_id            TEXT    PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    consecutive_failures  INTEGER NOT NULL,
    identical_failures    INTEGER NOT NULL,
    last_failed_step      TEXT,
    last_failed_config    TEXT,
    last_error            TEXT,
    degraded_since        INTEGER,
    next_attempt_at       INTEGER,
    updated_at            INTEGER NOT NULL
);
