-- Projects with their repos and devbox settings (JSON: they are read and written whole).
CREATE TABLE projects (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    description  TEXT,
    task_code    TEXT    NOT NULL,
    repos_json   TEXT    NOT NULL,
    devbox_json  TEXT    NOT NULL,
    generation   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- What we last learned about a remote (its default branch), by URL.
CREATE TABLE repo_remotes (
    url            TEXT    PRIMARY KEY,
    default_branch TEXT,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE env_vars (
    project_id  TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, name)
);

CREATE TABLE warm_pools (
    project_id           TEXT    PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    enabled              INTEGER NOT NULL,
    target_size          INTEGER NOT NULL,
    max_age_minutes      INTEGER NOT NULL,
    branch               TEXT,
    setup_commands_json  TEXT,
    generation           INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE TABLE instances (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    vm_id           TEXT    NOT NULL UNIQUE,
    project_id      TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    total_steps     INTEGER NOT NULL,
    failed_step     TEXT,
    failure_reason  TEXT,
    backend         TEXT    NOT NULL,
    agent_url       TEXT,
    agent_token     TEXT,
    config_hash     TEXT,
    task_id         TEXT,
    created_at      INTEGER NOT NULL,
    provisioned_at  INTEGER,
    finished_at     INTEGER,
    claimed_at      INTEGER,
    destroyed_at    INTEGER
);
CREATE INDEX instances_by_project ON instances (project_id, status, seq);
CREATE INDEX instances_by_status ON instances (status);

CREATE TABLE steps (
    instance_id    TEXT    NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    name           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    output         TEXT,
    error          TEXT,
    duration_ms    INTEGER NOT NULL,
    finished_at    INTEGER NOT NULL,
    metadata_json  TEXT,
    PRIMARY KEY (instance_id, seq)
);
