//! The agent's requests as it decodes them — exec and identity bodies as JSON, the files and
//! background queries as axum reads a query string — then checks them: any bytes are refused or
//! accepted without a panic, and what is accepted is what the agent can carry out.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use warmpool_types::agent::{
    file_mode, file_path, AgentExecRequest, BackgroundQuery, FileQuery, IdentityRequest,
    MAX_IDENTITY_TIME_MS,
};
use warmpool_types::validate;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<AgentExecRequest>(data) {
        if req.check().is_ok() {
            let all = req.command.iter().chain(req.argv.iter().flatten());
            assert!(all.chain(&req.cwd).all(|s| !s.contains('\0')));
            assert!(req.command.is_some() != req.argv.as_ref().is_some_and(|a| !a.is_empty()));
            assert!(req
                .cwd
                .iter()
                .chain(&req.background_log)
                .all(|p| p.starts_with('/')));
            assert!(req
                .env
                .iter()
                .all(|(k, v)| validate::env_name(k).is_ok() && !v.contains('\0')));
        }
    }
    if let Ok(req) = serde_json::from_slice::<IdentityRequest>(data) {
        if let Ok(entropy) = req.check() {
            assert!(req.token.len() >= 16 && req.token.bytes().all(|b| b.is_ascii_graphic()));
            assert!(req
                .time_ms
                .is_none_or(|t| (0..=MAX_IDENTITY_TIME_MS).contains(&t)));
            assert_eq!(entropy.is_some(), req.entropy.is_some());
        }
    }
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/v1/files?{query}").parse::<Uri>() else {
        return;
    };
    if let Ok(Query(q)) = Query::<FileQuery>::try_from_uri(&uri) {
        let _ = file_path(&q.path);
        let _ = file_mode(q.mode.as_deref());
    }
    let _ = Query::<BackgroundQuery>::try_from_uri(&uri);
});
