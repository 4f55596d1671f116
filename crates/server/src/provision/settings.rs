//! `.capy/settings.json` of a repository: its `hooks.setup` commands, run by `init_repo`.

use serde_json::Value;

/// The `hooks.setup` commands of a settings file: `None` when it has none, an error (one line,
/// for a person) when the file is not what it should be.
pub fn setup_hooks(bytes: &[u8]) -> Result<Option<Vec<String>>, String> {
    let settings: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON ({e})"))?;
    if !settings.is_object() {
        return Err("the settings are not a JSON object".into());
    }
    match settings.get("hooks").and_then(|h| h.get("setup")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .map(Some)
            .ok_or_else(|| "hooks.setup must be an array of strings".to_string()),
        Some(_) => Err("hooks.setup must be an array of strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hooks() {
        assert_eq!(
            setup_hooks(br#"{"hooks": {"setup": ["a", "b c"]}}"#),
            Ok(Some(vec!["a".into(), "b c".into()]))
        );
        assert_eq!(setup_hooks(br#"{"other": 1}"#), Ok(None));
        assert_eq!(setup_hooks(br#"{"hooks": {"setup": null}}"#), Ok(None));
        assert!(setup_hooks(br#"{"hooks": {"setup": [1]}}"#).is_err());
        assert!(setup_hooks(br#"{"hooks": {"setup": "x"}}"#).is_err());
        assert!(setup_hooks(b"[1]").is_err());
        assert!(setup_hooks(b"{not json")
            .unwrap_err()
            .starts_with("invalid JSON"));
    }
}
