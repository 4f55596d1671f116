//! `.capy/settings.json` parsing: any bytes give hooks or a one-line error, never a panic; hooks are
//! exactly the strings of `hooks.setup`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warmpool::provision::settings::setup_hooks;

fuzz_target!(|data: &[u8]| {
    match setup_hooks(data) {
        Ok(Some(hooks)) => {
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted input is JSON");
            let listed: Vec<String> = v["hooks"]["setup"]
                .as_array()
                .expect("hooks.setup is an array")
                .iter()
                .map(|h| h.as_str().expect("only strings").to_string())
                .collect();
            assert_eq!(hooks, listed);
        }
        Ok(None) => {}
        Err(e) => assert!(!e.contains('\n'), "errors are one line: {e:?}"),
    }
});
