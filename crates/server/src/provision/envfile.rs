//! `/home/.env`: one `export NAME='value'` line per variable, single-quoted so that any value —
//! quotes, newlines, `$`, backslashes, unicode — comes back byte for byte when the file is sourced.

/// Quotes `s` for bash: inside single quotes nothing is special except `'` itself, written `'\''`.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The file's content for these (already validated) names and values, in the given order.
pub fn render<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out =
        String::from("# Written by warmpool (set_env_vars). Sourced before every command.\n");
    for (name, value) in vars {
        out.push_str("export ");
        out.push_str(name);
        out.push('=');
        out.push_str(&shell_quote(value));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_bash() {
        let values = [
            "plain",
            "it's",
            "a\"b",
            "$HOME `id` $(id)",
            "back\\slash\\",
            "new\nline\n",
            "ünïcødé ✓ 😀",
            "",
            "'",
            "''\\''",
            "tab\there",
        ];
        let vars: Vec<(String, String)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("V{i}"), v.to_string()))
            .collect();
        let file = render(vars.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, file).unwrap();
        for (name, value) in &vars {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(". \"$1\"; printf %s \"${name}\""))
                .arg("bash")
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *value, "{name}");
        }
    }
}
