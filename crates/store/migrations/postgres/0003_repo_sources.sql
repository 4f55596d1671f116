-- Facts about remotes (their default branch) were kept by URL, credentials and all; they are now
-- kept by a keyed digest of the source. The old rows are a cache: forget them, they are learned
-- again.
DELETE FROM repo_remotes;
