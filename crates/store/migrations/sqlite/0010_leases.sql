-- Claim leases: how long a claimed VM lives unless renewed. A project's default and longest
-- lease in seconds (columns, not JSON: a warm claim reads the default inside its one
-- statement); each instance's lease (asked with its claim: one booted for a claim starts it
-- when ready) and its expiry.
ALTER TABLE projects ADD COLUMN lease_default_s BIGINT NOT NULL DEFAULT 86400;
ALTER TABLE projects ADD COLUMN lease_max_s BIGINT NOT NULL DEFAULT 604800;
ALTER TABLE instances ADD COLUMN lease_ms BIGINT;
ALTER TABLE instances ADD COLUMN expires_at BIGINT;
CREATE INDEX instances_expiring ON instances (status, expires_at);
