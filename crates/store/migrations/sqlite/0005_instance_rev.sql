-- Every change to an instance row stamps it with the next value of one counter, so the reconciler
-- can read only what changed since its last pass instead of every live instance. Triggers do the
-- stamping so that no statement can forget it.
ALTER TABLE instances ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE TABLE instance_rev (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO instance_rev (id, n) VALUES (1, 0);
CREATE INDEX instances_by_rev ON instances (rev);

CREATE TRIGGER instances_rev_on_insert AFTER INSERT ON instances
BEGIN
    UPDATE instance_rev SET n = n + 1 WHERE id = 1;
    UPDATE instances SET rev = (SELECT n FROM instance_rev WHERE id = 1) WHERE seq = NEW.seq;
END;

CREATE TRIGGER instances_rev_on_update AFTER UPDATE ON instances WHEN NEW.rev = OLD.rev
BEGIN
    UPDATE instance_rev SET n = n + 1 WHERE id = 1;
    UPDATE instances SET rev = (SELECT n FROM instance_rev WHERE id = 1) WHERE seq = NEW.seq;
END;
