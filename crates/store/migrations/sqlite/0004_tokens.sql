-- Project tokens: only their SHA-256 is kept.
CREATE TABLE tokens (
    id            TEXT    PRIMARY KEY,
    project_id    TEXT    NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    hash          TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
CREATE INDEX tokens_by_project ON tokens (project_id, created_at);
