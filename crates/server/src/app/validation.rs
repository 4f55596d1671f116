//! Checks of user input that more than one use case shares. Every check reports the field path and
//! a message a person can act on; a request gets all of its problems at once.

use std::collections::HashSet;

use warmpool_types::api::{RepoInput, SetupCommand};
use warmpool_types::validate;

use crate::error::Problems;

pub const MAX_COMMANDS: usize = 100;
pub const MAX_COMMAND_BYTES: usize = 100_000;
pub const MAX_COMMAND_NAME_CHARS: usize = 200;
pub const MAX_REPOS: usize = 50;
pub const MAX_PROJECT_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

pub fn check_commands(p: &mut Problems, field: &str, cmds: &[SetupCommand]) {
    if cmds.len() > MAX_COMMANDS {
        p.add(field, format!("at most {MAX_COMMANDS} commands"));
    }
    let mut names = HashSet::new();
    for (i, c) in cmds.iter().enumerate() {
        let name = format!("{field}[{i}].name");
        match validate::display_text(&c.name, MAX_COMMAND_NAME_CHARS) {
            Err(m) => p.add(name, m),
            // A name says which command a log line, an error or a background log file is about.
            Ok(()) if !names.insert(c.name.trim()) => p.add(
                name,
                format!(
                    "`{}` names two commands of this list: command names must be unique",
                    c.name.trim()
                ),
            ),
            Ok(()) => {}
        }
        let f = format!("{field}[{i}].command");
        if c.command.trim().is_empty() {
            p.add(f, "must not be empty");
        } else if c.command.len() > MAX_COMMAND_BYTES {
            p.add(f, format!("must be at most {MAX_COMMAND_BYTES} bytes"));
        } else if c.command.contains('\0') {
            p.add(f, "must not contain NUL bytes");
        }
    }
}

pub fn check_branch(p: &mut Problems, field: &str, branch: &str) {
    p.check(field, validate::branch_name(branch));
}

/// Checks a repo list; returns whether two repos would be cloned to the same directory (a conflict,
/// not a validation error).
pub fn check_repos(p: &mut Problems, field: &str, repos: &[RepoInput]) -> Option<String> {
    if repos.len() > MAX_REPOS {
        p.add(field, format!("at most {MAX_REPOS} repositories"));
    }
    let mut dirs = HashSet::new();
    let mut clash = None;
    for (i, r) in repos.iter().enumerate() {
        match validate::repo_full_name(&r.repo_full_name) {
            Ok(".env") => p.add(
                format!("{field}[{i}].repoFullName"),
                "a repository named `.env` would be cloned over /home/.env",
            ),
            Ok(name) => {
                if !dirs.insert(name.to_string()) && clash.is_none() {
                    clash = Some(format!(
                        "two repositories would both be cloned to /home/{name}: repository names must be unique within a project"
                    ));
                }
            }
            Err(m) => p.add(format!("{field}[{i}].repoFullName"), m),
        }
        p.check(format!("{field}[{i}].url"), validate::repo_url(&r.url));
        if let Some(b) = &r.branch {
            check_branch(p, &format!("{field}[{i}].branch"), b);
        }
    }
    clash
}

/// A short upper-case code from a project name: the initials of its words, or the start of a
/// single word ("Acme API" → "AA", "billing" → "BILL").
pub fn task_code(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let code: String = match words.as_slice() {
        [] => String::new(),
        [one] => one.chars().take(4).collect(),
        many => many
            .iter()
            .filter_map(|w| w.chars().next())
            .take(4)
            .collect(),
    };
    let code = code.to_ascii_uppercase();
    if code.is_empty() {
        "PROJ".into()
    } else {
        code
    }
}

/// A whole number in `lo..=hi` from a JSON number.
pub fn whole_in_range(p: &mut Problems, field: &str, v: f64, lo: u32, hi: u32) -> u32 {
    if v.fract() != 0.0 || !v.is_finite() {
        p.add(field, "must be a whole number");
        return lo;
    }
    if v < lo as f64 || v > hi as f64 {
        p.add(field, format!("must be between {lo} and {hi}"));
        return lo;
    }
    v as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_codes() {
        assert_eq!(task_code("Acme API"), "AA");
        assert_eq!(task_code("billing"), "BILL");
        assert_eq!(task_code("my cool web app thing"), "MCWA");
        assert_eq!(task_code("ü é"), "PROJ");
    }
}
