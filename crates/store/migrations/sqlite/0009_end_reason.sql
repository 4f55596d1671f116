-- Why an instance was ended (its VM destroyed, no longer counted in its pool), next to when
-- (`destroyed_at`). A failed boot keeps its status when it is ended.
ALTER TABLE instances ADD COLUMN end_reason TEXT;
