//! Redaction of step output as it streams in: whatever the secrets, the output and the way it is
//! cut into pieces, no secret (of 6 or more characters, or such a line of a multi-line one) is left
//! in what is kept.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use warmpool::provision::redact::{Redactor, MIN_SECRET_CHARS};
use warmpool::provision::steplog::StepLog;

#[derive(Arbitrary, Debug)]
struct Input {
    secrets: Vec<String>,
    pieces: Vec<String>,
}

fuzz_target!(|input: Input| {
    let vars: Vec<(String, String)> = input
        .secrets
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, v)| (format!("V{i}"), v.clone()))
        .collect();
    let redactor = Arc::new(Redactor::new(vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))));
    let mut log = StepLog::new(redactor, None);
    let mut all = String::new();
    for p in input.pieces.iter().take(64) {
        log.push(p);
        all.push_str(p);
    }
    let kept = log.finish();
    if kept.contains("bytes omitted ...]") {
        return; // The cap dropped text; what is left is still redacted but harder to reason about.
    }
    let markers: Vec<String> = vars.iter().map(|(n, _)| format!("[REDACTED:{n}]")).collect();
    for (_, value) in &vars {
        let parts: Vec<&str> = if value.contains('\n') {
            value.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect()
        } else {
            vec![value.as_str()]
        };
        for secret in parts {
            if secret.chars().count() < MIN_SECRET_CHARS
                || secret.contains(['[', ']'])
                || markers.iter().any(|m| m.contains(secret))
            {
                continue;
            }
            assert!(!kept.contains(secret), "secret {secret:?} left in {kept:?} (from {all:?})");
        }
    }
});
