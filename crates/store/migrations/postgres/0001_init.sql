-- The whole schema, equivalent to migrations/sqlite/0001..0005 (no PostgreSQL database was deployed
-- before them, so they are folded into one). Times are epoch milliseconds (BIGINT). JSON columns
-- are TEXT: they are read and written whole, never queried inside. Keys and names are
-- COLLATE "C" so that they compare and sort byte by byte, as in SQLite, whatever the database's
-- locale.

-- Projects with their repos and devbox settings.
CREATE TABLE projects (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT COLLATE "C" NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    description  TEXT,
    task_code    TEXT    NOT NULL,
    repos_json   TEXT    NOT NULL,
    devbox_json  TEXT    NOT NULL,
    generation   BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);

-- What we last learned about a remote (its default branch), by URL.
CREATE TABLE repo_remotes (
    url            TEXT COLLATE "C" PRIMARY KEY,
    default_branch TEXT,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE env_vars (
    project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    value       TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);

CREATE TABLE warm_pools (
    project_id           TEXT COLLATE "C" PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    enabled              BOOLEAN NOT NULL,
    target_size          BIGINT  NOT NULL,
    max_age_minutes      BIGINT  NOT NULL,
    branch               TEXT,
    setup_commands_json  TEXT,
    generation           BIGINT  NOT NULL,
    created_at           BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL
);

CREATE TABLE instances (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    vm_id           TEXT COLLATE "C" NOT NULL UNIQUE,
    project_id      TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    total_steps     BIGINT  NOT NULL,
    failed_step     TEXT,
    failure_reason  TEXT,
    backend         TEXT    NOT NULL,
    agent_url       TEXT,
    agent_token     TEXT,
    config_hash     TEXT,
    task_id         TEXT,
    created_at      BIGINT  NOT NULL,
    provisioned_at  BIGINT,
    finished_at     BIGINT,
    claimed_at      BIGINT,
    destroyed_at    BIGINT,
    -- When the reconciler found a ready instance stale (config changed, branch moved, too old).
    stale_at        BIGINT,
    -- The commit each repo was cloned at: {"owner/name": {"branch": ..., "commit": ...}}.
    commits_json    TEXT,
    -- The golden it was cloned from, if any.
    golden_id       TEXT,
    -- The id of the transaction that last wrote the row (see instances_stamp_rev).
    rev             BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX instances_by_project ON instances (project_id, status, seq);
CREATE INDEX instances_by_status ON instances (status);
CREATE INDEX instances_by_rev ON instances (rev);
-- Exactly the order claim_ready takes ready pool instances in, so a claim reads one index entry.
CREATE INDEX instances_claimable ON instances
    (project_id, (stale_at IS NOT NULL), provisioned_at DESC NULLS LAST)
    WHERE kind = 'pool' AND status = 'ready';

-- The reconciler reads only the instances changed since its last pass. A counter (as SQLite uses)
-- would not do here: values are taken in one order and committed in another, so a reader could
-- pass over a row whose transaction commits after it read a higher value. Instead each row keeps
-- the id of the transaction that wrote it, and a reader asks for every row at or above the oldest
-- transaction still running at its snapshot (its xmin): whatever that snapshot did not see was
-- written by such a transaction or a later one. The trigger does it so no statement can forget.
CREATE FUNCTION instances_stamp_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.rev := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$;
CREATE TRIGGER instances_rev BEFORE INSERT OR UPDATE ON instances
    FOR EACH ROW EXECUTE FUNCTION instances_stamp_rev();

CREATE TABLE steps (
    instance_id    TEXT COLLATE "C" NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    name           TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    output         TEXT,
    error          TEXT,
    duration_ms    BIGINT NOT NULL,
    finished_at    BIGINT NOT NULL,
    metadata_json  TEXT,
    PRIMARY KEY (instance_id, seq)
);

-- Per-pool failure bookkeeping: backoff and the degraded stop.
CREATE TABLE pool_state (
    project_id            TEXT COLLATE "C" PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    consecutive_failures  BIGINT NOT NULL,
    identical_failures    BIGINT NOT NULL,
    last_failed_step      TEXT,
    last_failed_config    TEXT,
    last_error            TEXT,
    degraded_since        BIGINT,
    next_attempt_at       BIGINT,
    updated_at            BIGINT NOT NULL
);

-- Prepared VMs frozen into immutable artifacts, one per pool configuration; pool VMs are clones.
CREATE TABLE goldens (
    id           TEXT COLLATE "C" PRIMARY KEY,  -- the id of the instance that built it
    project_id   TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    config_hash  TEXT   NOT NULL,
    backend      TEXT   NOT NULL,
    commits_json TEXT   NOT NULL,
    status       TEXT   NOT NULL,               -- ready | deleted
    created_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
CREATE INDEX goldens_by_config ON goldens (project_id, config_hash, status);

-- Project tokens: only their SHA-256 is kept.
CREATE TABLE tokens (
    id            TEXT COLLATE "C" PRIMARY KEY,
    project_id    TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    hash          TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX tokens_by_project ON tokens (project_id, created_at);
