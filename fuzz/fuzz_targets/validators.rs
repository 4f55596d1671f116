//! The validators of names users give (branches, repos, environment variables, display text,
//! ids, states, timestamps) and of the agent's file paths and modes: any text is accepted or
//! refused without a panic, and what is accepted has the shape each promises.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use warmpool_types::agent::{file_mode, file_path, hex_bytes, MAX_NAME_BYTES, MAX_PATH_BYTES};
use warmpool_types::state::{InstanceKind, InstanceStatus};
use warmpool_types::{ids, time, validate};

fuzz_target!(|s: &str| {
    if validate::branch_name(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= 255 && !s.starts_with('-'));
        assert!(!s.contains("..") && !s.contains("@{") && !s.contains("//"));
        assert!(!s.chars().any(|c| c.is_ascii_control() || c == ' '));
    }
    if let Ok(name) = validate::repo_full_name(s) {
        // Cloned to /home/<name>: exactly one directory there.
        assert!(file_path(&format!("/home/{name}")).is_ok(), "{s:?}");
    }
    let identifier = (1..=191).contains(&s.len())
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    assert_eq!(validate::env_name(s).is_ok(), identifier, "{s:?}");
    if validate::project_env_name(s).is_ok() {
        assert!(identifier && validate::reserved_env_name(s).is_none());
    }
    if validate::display_text(s, 200).is_ok() {
        assert!(!s.chars().any(|c| c.is_control() && c != '\t'));
    }
    for check in [
        ids::is_project_id,
        ids::is_instance_id,
        ids::is_vm_id,
        ids::is_token_id,
    ] {
        let _ = check(s);
    }
    if let Ok(st) = s.parse::<InstanceStatus>() {
        assert_eq!(st.as_str(), s);
    }
    if let Ok(k) = s.parse::<InstanceKind>() {
        assert_eq!(k.as_str(), s);
    }
    if let Some(ms) = time::parse_ts(s) {
        let _ = time::fmt_ms(ms);
    }
    if let Some(bytes) = hex_bytes(s) {
        assert_eq!(bytes.len() * 2, s.len());
    }
    if let Ok(mode) = file_mode(Some(s)) {
        assert!(mode <= 0o7777);
    }
    if let Ok(path) = file_path(s) {
        // The filesystem sees exactly the components checked: none dropped, none merged.
        let written: Vec<&str> = s[1..].split('/').collect();
        let seen: Vec<Component> = path.components().collect();
        assert!(s.len() <= MAX_PATH_BYTES);
        assert_eq!(seen.len(), written.len() + 1, "{s:?}");
        for (c, w) in seen[1..].iter().zip(&written) {
            assert_eq!(*c, Component::Normal(w.as_ref()));
            assert!(w.len() <= MAX_NAME_BYTES);
        }
    }
});
