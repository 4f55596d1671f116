-- Claim leases: how long a claimed VM lives unless renewed. A project's default and longest
-- lease (NULL: the server's defaults); each instance's lease (asked with its claim: one booted
-- for a claim starts it when ready) and its expiry.
ALTER TABLE projects ADD COLUMN leases_json TEXT;
ALTER TABLE instances ADD COLUMN lease_ms BIGINT;
ALTER TABLE instances ADD COLUMN expires_at BIGINT;
CREATE INDEX instances_expiring ON instances (status, expires_at);
