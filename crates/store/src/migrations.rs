//! The schema's migrations, both engines side by side, and the rule for numbering new ones.
//!
//! Each engine records the versions it has applied in its `schema_migrations` table, so a version
//! once released keeps its number for good: renumbering would make an existing database apply a
//! migration twice, or skip one. Up to SQLite's 8 the numbers differ: PostgreSQL support came
//! after SQLite's fifth migration, and its first folds SQLite's first five into one.
//!
//! | SQLite           | PostgreSQL       | what it does                                         |
//! |------------------|------------------|------------------------------------------------------|
//! | 1 `init`         | 1 `init`         | projects, remotes, env vars, pools, instances, steps |
//! | 2 `pool`         | in 1             | stale and commits of instances, pool state           |
//! | 3 `goldens`      | in 1             | goldens; the golden an instance was cloned from      |
//! | 4 `tokens`       | in 1             | project tokens                                       |
//! | 5 `instance_rev` | in 1             | the instance revision (a counter; transaction ids)   |
//! | 6 `nodes`        | 2 `nodes`        | nodes, the node of instances and goldens, settings   |
//! | 7 `repo_sources` | 3 `repo_sources` | forgets default branches kept by URL                 |
//! | 8 `resources`    | 4 `resources`    | what each VM of a project may use                    |
//! | 9 `end_reason`   | 9 `end_reason`   | why an instance was ended (a failed one stays failed) |
//! | 10 `leases`      | 10 `leases`      | claim leases: projects' defaults, instances' expiry  |
//! | 11 `autoscale`   | 11 `autoscale`   | pools' autoscale bounds and decided target           |
//!
//! From 9 on, a migration has one number on both engines: add `NNNN_name.sql` to both
//! `migrations/sqlite` and `migrations/postgres` under the same number, and to both lists below
//! (PostgreSQL's then goes 1, 2, 3, 4, 9, ...). A test holds the lists to that.

/// One migration: its version and its file's SQL.
macro_rules! migration {
    ($engine:literal, $version:literal, $file:literal) => {
        (
            $version,
            include_str!(concat!("../migrations/", $engine, "/", $file)),
        )
    };
}

/// `(version, SQL)` in the order they apply.
pub const SQLITE: &[(i64, &str)] = &[
    migration!("sqlite", 1, "0001_init.sql"),
    migration!("sqlite", 2, "0002_pool.sql"),
    migration!("sqlite", 3, "0003_goldens.sql"),
    migration!("sqlite", 4, "0004_tokens.sql"),
    migration!("sqlite", 5, "0005_instance_rev.sql"),
    migration!("sqlite", 6, "0006_nodes.sql"),
    migration!("sqlite", 7, "0007_repo_sources.sql"),
    migration!("sqlite", 8, "0008_resources.sql"),
    migration!("sqlite", 9, "0009_end_reason.sql"),
    migration!("sqlite", 10, "0010_leases.sql"),
    migration!("sqlite", 11, "0011_autoscale.sql"),
];

/// `(version, SQL)` in the order they apply.
pub const POSTGRES: &[(i64, &str)] = &[
    migration!("postgres", 1, "0001_init.sql"),
    migration!("postgres", 2, "0002_nodes.sql"),
    migration!("postgres", 3, "0003_repo_sources.sql"),
    migration!("postgres", 4, "0004_resources.sql"),
    migration!("postgres", 9, "0009_end_reason.sql"),
    migration!("postgres", 10, "0010_leases.sql"),
    migration!("postgres", 11, "0011_autoscale.sql"),
];

/// The last SQLite version numbered apart from PostgreSQL's.
#[cfg(test)]
const LAST_APART: i64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine's versions: those released apart, and the shared ones after them.
    fn versions(list: &[(i64, &str)]) -> (Vec<i64>, Vec<i64>) {
        let all = list.iter().map(|m| m.0);
        assert!(all.clone().zip(all.clone().skip(1)).all(|(a, b)| a < b));
        all.partition(|&v| v <= LAST_APART)
    }

    #[test]
    fn released_versions_keep_their_numbers_and_new_ones_are_shared() {
        let (sqlite_apart, sqlite_shared) = versions(SQLITE);
        let (postgres_apart, postgres_shared) = versions(POSTGRES);
        assert_eq!(sqlite_apart, Vec::from_iter(1..=8));
        assert_eq!(postgres_apart, Vec::from_iter(1..=4));
        assert_eq!(
            sqlite_shared, postgres_shared,
            "a new migration needs both engines"
        );
    }
}
