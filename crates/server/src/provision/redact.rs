//! Redaction of environment-variable values: every value of 6 or more characters — and each line of
//! 6 or more characters of a multi-line value — is replaced by `[REDACTED:NAME]` in outputs, errors
//! and events before they are stored or sent. Shorter values are left alone: they would hit too many
//! innocent words.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Values shorter than this (in characters) are not redacted.
pub const MIN_SECRET_CHARS: usize = 6;

pub struct Redactor {
    matcher: Option<AhoCorasick>,
    replacements: Vec<String>,
    longest: usize,
}

impl Redactor {
    pub fn none() -> Self {
        Self {
            matcher: None,
            replacements: Vec::new(),
            longest: 0,
        }
    }

    pub fn new<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::with_literals(vars, &[])
    }

    /// Like [`Redactor::new`], and each `(text, replacement)` of `literals` — of any length — is
    /// replaced as well (the server's own paths, say).
    pub fn with_literals<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        literals: &[(String, String)],
    ) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut replacements = Vec::new();
        for (text, replacement) in literals.iter().filter(|(t, _)| !t.is_empty()) {
            patterns.push(text.clone());
            replacements.push(replacement.clone());
        }
        for (name, value) in vars {
            let mut add = |p: &str| {
                if p.chars().count() >= MIN_SECRET_CHARS {
                    patterns.push(p.to_string());
                    replacements.push(format!("[REDACTED:{name}]"));
                }
            };
            add(value);
            if value.contains('\n') {
                for line in value.split('\n') {
                    add(line.strip_suffix('\r').unwrap_or(line));
                }
            }
        }
        if patterns.is_empty() {
            return Self::none();
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        // Leftmost-longest: a value that contains another value's text is replaced whole.
        // A contiguous NFA, not the DFA the builder picks for a few patterns: one is built for
        // every boot and matches only step output, and the DFA's construction was a visible
        // share of the server's CPU when boots followed one another quickly.
        let matcher = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Self {
            matcher,
            replacements,
            longest,
        }
    }

    /// Length in bytes of the longest text that could be redacted: a streaming caller keeps at
    /// least this much minus one unflushed so a secret split across reads is still caught.
    pub fn longest(&self) -> usize {
        self.longest
    }

    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.matcher {
            Some(m) if m.is_match(text) => Cow::Owned(m.replace_all(text, &self.replacements)),
            _ => Cow::Borrowed(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_values_and_lines_of_multiline_values() {
        let r = Redactor::new([
            ("TOKEN", "s3cr3t-value"),
            ("SHORT", "abc"),
            ("KEY", "-----BEGIN-----\nline-two-xyz\nab\n-----END-----"),
        ]);
        assert_eq!(
            r.redact("token=s3cr3t-value short=abc"),
            "token=[REDACTED:TOKEN] short=abc"
        );
        assert_eq!(
            r.redact("-----BEGIN-----\nline-two-xyz\nab\n-----END-----\n"),
            "[REDACTED:KEY]\n"
        );
        assert_eq!(r.redact("x line-two-xyz y"), "x [REDACTED:KEY] y");
        assert_eq!(r.redact("ab"), "ab");
    }

    #[test]
    fn literals_of_any_length() {
        let r = Redactor::with_literals(
            [("TOKEN", "s3cr3t-value")],
            &[("/srv/wp/".into(), "<data-dir>/".into())],
        );
        assert_eq!(
            r.redact("cannot create /srv/wp/vms/x: s3cr3t-value"),
            "cannot create <data-dir>/vms/x: [REDACTED:TOKEN]"
        );
    }

    #[test]
    fn longest_match_wins() {
        let r = Redactor::new([("A", "secret"), ("B", "secret-and-more")]);
        assert_eq!(
            r.redact("secret-and-more secret"),
            "[REDACTED:B] [REDACTED:A]"
        );
    }
}
