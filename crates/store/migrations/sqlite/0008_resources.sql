-- What each VM of a project may use (memory, CPUs, processes, disk); existing projects get the
-- defaults.
ALTER TABLE projects ADD COLUMN resources_json TEXT NOT NULL DEFAULT '{"cpus":2,"memoryMb":2048,"pidsMax":4096,"diskMb":10240}';
