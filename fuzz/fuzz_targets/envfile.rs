//! The `/home/.env` writer: any values (no NUL: the API refuses it) come back exactly when the
//! file is read the way a POSIX shell reads single-quoted words.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use warmpool::provision::envfile::render;

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<String>,
}

/// Reads `export NAME='...'` lines as a shell would: inside '...' everything is literal; `\'`
/// outside quotes is a literal quote.
fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.starts_with('#') {
            rest = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
            continue;
        }
        let line = rest.strip_prefix("export ").expect("export");
        let (name, after) = line.split_once('=').expect("=");
        let mut chars = after.char_indices().peekable();
        let mut value = String::new();
        let mut end = after.len();
        let mut quoted = false;
        while let Some((i, c)) = chars.next() {
            match (quoted, c) {
                (false, '\'') => quoted = true,
                (true, '\'') => quoted = false,
                (false, '\\') => {
                    let (_, n) = chars.next().expect("escaped char");
                    value.push(n);
                }
                (false, '\n') => {
                    end = i + 1;
                    break;
                }
                (true, c) => value.push(c),
                (false, c) => panic!("unquoted {c:?}"),
            }
        }
        out.push((name.to_string(), value));
        rest = &after[end.min(after.len())..];
    }
    out
}

fuzz_target!(|input: Input| {
    let vars: Vec<(String, String)> = input
        .values
        .into_iter()
        .take(16)
        .enumerate()
        .map(|(i, v)| (format!("V{i}"), v.replace('\0', "")))
        .collect();
    let text = render(vars.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    assert_eq!(parse(&text), vars);
});
