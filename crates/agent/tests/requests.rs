//! The agent's request handling, driven through its own router in-process: whatever the method,
//! path, headers, query or body, no panic, and a malformed request is answered 4xx (never 5xx)
//! with nothing run, written or changed. The agent runs as root and would set this machine's
//! clock and hostname or write anywhere, so a request it would carry out is sent only where that
//! is harmless — files inside a temporary directory, commands that print — and otherwise not at
//! all: [`carried_out`] decides with the agent's own decoding and checks.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;
use warmpool_types::agent::{
    file_path, AgentExecRequest, AgentExecResult, FileQuery, IdentityRequest,
};

const TOKEN: &str = "agent-test-token-0123456789";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

async fn send(req: Request<Body>) -> Answer {
    let resp = warmpool_agent::router(TOKEN.into())
        .oneshot(req)
        .await
        .expect("the router never fails");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("a body");
    Answer {
        status,
        body: body.to_vec(),
    }
}

fn request(method: Method, uri: &str, auth: Option<&str>, body: Vec<u8>) -> Option<Request<Body>> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, HeaderValue::from_str(a).ok()?);
    }
    b.header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .ok()
}

fn authorised(method: Method, uri: &str, body: Vec<u8>) -> Option<Request<Body>> {
    request(method, uri, Some(&format!("Bearer {TOKEN}")), body)
}

/// Whether the agent would carry `req` out rather than refuse it — run a command, set the
/// identity, or touch a file outside `scratch` — decided with the agent's own decoding and checks.
fn carried_out(method: &Method, uri: &Uri, body: &[u8], scratch: &Path) -> bool {
    match (method.as_str(), uri.path()) {
        ("POST", "/v1/exec") => {
            serde_json::from_slice::<AgentExecRequest>(body).is_ok_and(|r| r.check().is_ok())
        }
        ("POST", "/v1/identity") => {
            serde_json::from_slice::<IdentityRequest>(body).is_ok_and(|r| r.check().is_ok())
        }
        ("GET" | "PUT", "/v1/files") => Query::<FileQuery>::try_from_uri(uri).is_ok_and(|q| {
            file_path(&q.path).is_ok_and(|p| !p.starts_with(scratch) || p == scratch)
        }),
        _ => false,
    }
}

/// Sends `req` unless the agent would carry it out somewhere that is not harmless; `None` then.
async fn send_if_harmless(req: Request<Body>, scratch: &Path) -> Option<Answer> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.ok()?;
    if carried_out(&parts.method, &parts.uri, &bytes, scratch) {
        return None;
    }
    Some(send(Request::from_parts(parts, Body::from(bytes))).await)
}

/// Text that breaks parsers: anything, JSON's and URLs' own characters, NUL and multi-byte ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_/.=%&?:\"\\\\{}\\[\\], -]{0,16}",
        "[/a.é\u{0}\n -]{0,8}",
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a method")),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "/v1/health",
            "/v1/exec",
            "/v1/identity",
            "/v1/files",
            "/v1/background",
            "/",
            "/v1",
            "/v1/",
            "/v1/exec/",
            "//v1/exec",
        ])
        .prop_map(str::to_string),
        1 => "/[a-z0-9/%.?=&-]{0,16}",
    ]
}

/// JSON shaped like the agent's requests, its fields given anything from the right value to
/// the wrong type.
fn request_json() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
        proptest::collection::vec(text(), 0..3).prop_map(Value::from),
        proptest::collection::btree_map(text(), text(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect())),
    ];
    let key = proptest::sample::select(vec![
        "command",
        "argv",
        "cwd",
        "env",
        "timeoutMs",
        "backgroundLog",
        "stream",
        "token",
        "hostname",
        "machineId",
        "timeMs",
        "entropy",
        "bogus",
    ]);
    proptest::collection::btree_map(key, value, 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// An exec request of the right shape, every field anything its type allows.
fn exec_json() -> impl Strategy<Value = Value> {
    let path = || proptest::option::of(prop_oneof![text(), "/[a-z/.]{0,8}"]);
    (
        proptest::option::of(text()),
        proptest::option::of(proptest::collection::vec(text(), 0..3)),
        path(),
        proptest::collection::btree_map(
            prop_oneof![text(), "[A-Za-z_][A-Za-z0-9_]{0,6}"],
            text(),
            0..3,
        ),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(command, argv, cwd, env, timeout_ms, stream)| {
            serde_json::to_value(AgentExecRequest {
                command,
                argv,
                cwd,
                env,
                timeout_ms,
                stream,
                background_log: None,
            })
            .expect("JSON")
        })
}

/// An identity request of the right shape, each field often valid, so that the others are what
/// is checked.
fn identity_json() -> impl Strategy<Value = Value> {
    (
        prop_oneof![text(), "[!-~]{16,24}"],
        prop_oneof![text(), "[a-z0-9-]{1,8}"],
        prop_oneof![text(), "[0-9a-fA-F]{32}"],
        proptest::option::of(any::<i64>()),
        proptest::option::of(prop_oneof![text(), "([0-9a-f]{2}){0,8}"]),
    )
        .prop_map(|(token, hostname, machine_id, time_ms, entropy)| {
            serde_json::to_value(IdentityRequest {
                token,
                hostname,
                machine_id,
                time_ms,
                entropy,
            })
            .expect("JSON")
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        text().prop_map(String::into_bytes),
        request_json().prop_map(|v| v.to_string().into_bytes()),
        exec_json().prop_map(|v| v.to_string().into_bytes()),
        identity_json().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// Every byte but the unreserved ones as `%XX`, so that any text gets through as a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// Without the VM's token nothing is answered but 401 (or 404/405 where nothing is).
    #[test]
    fn no_token_no_answer(
        method in method(),
        path in path(),
        auth in proptest::option::of(prop_oneof![
            text(),
            text().prop_map(|t| format!("Bearer {t}")),
            Just(format!("Bearer {TOKEN} ")),
            Just(format!("bearer {TOKEN}")),
            Just(TOKEN.to_string()),
        ]),
        body in body(),
    ) {
        let Some(req) = request(method, &path, auth.as_deref(), body) else { return Ok(()) };
        let answer = runtime().block_on(send(req));
        prop_assert!(answer.status.is_client_error(), "{}", answer.status);
    }

    /// With it, any method, path and body: never a server error, and a refusal for anything the
    /// agent would not carry out.
    #[test]
    fn any_request(method in method(), path in path(), body in body()) {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let Some(req) = authorised(method, &path, body) else { return Ok(()) };
        let Some(answer) = runtime().block_on(send_if_harmless(req, scratch.path())) else {
            return Ok(());
        };
        prop_assert!(!answer.status.is_server_error(), "{}", answer.status);
    }

    /// `POST /v1/exec`: whatever the body, a request that does not check out is a 422 and runs
    /// nothing; a background log of one is never made.
    #[test]
    fn exec_bodies(body in body(), fields in exec_json(), log in "[a-z/]{0,8}") {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let logs = scratch.path().join("logs");
        let mut with_log = fields;
        with_log["backgroundLog"] = format!("{}/{log}", logs.display()).into();
        for b in [body, with_log.to_string().into_bytes()] {
            let req = authorised(Method::POST, "/v1/exec", b).expect("a request");
            let Some(answer) = runtime().block_on(send_if_harmless(req, scratch.path())) else {
                continue;
            };
            prop_assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
            let error: Value = serde_json::from_slice(&answer.body).expect("a JSON error");
            prop_assert!(error["error"].is_string());
        }
        prop_assert!(!logs.exists(), "a refused request made its background log's directory");
    }

    /// `POST /v1/identity`: anything that does not check out is refused and changes nothing.
    #[test]
    fn identity_bodies(body in body(), fields in identity_json()) {
        for b in [body, fields.to_string().into_bytes()] {
            let req = authorised(Method::POST, "/v1/identity", b).expect("a request");
            let Some(answer) = runtime().block_on(send_if_harmless(req, Path::new("/nowhere"))) else {
                continue;
            };
            prop_assert!(answer.status.is_client_error(), "{}", answer.status);
        }
    }

    /// `GET /v1/background?settleMs=`: a list, or a refusal of a query that is not a number.
    #[test]
    fn background_queries(query in prop_oneof![text(), "settleMs=[0-9-]{0,22}", any::<u64>().prop_map(|n| format!("settleMs={n}"))]) {
        let Some(req) = authorised(Method::GET, &format!("/v1/background?{}", query), vec![]) else {
            return Ok(());
        };
        let answer = runtime().block_on(send(req));
        prop_assert!(
            answer.status == StatusCode::OK || answer.status == StatusCode::BAD_REQUEST,
            "{}", answer.status
        );
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// `PUT` and `GET /v1/files`, paths inside a temporary directory and anywhere else, any mode:
    /// a malformed one is a 4xx, and what is written reads back with its mode.
    #[test]
    fn files(
        put in any::<bool>(),
        inside in any::<bool>(),
        path in prop_oneof![
            1 => text(),
            4 => "(/[a-zé][a-zé.]{0,3}){1,3}",
            1 => "(/[a-z.]{0,3}){1,3}/?",
            1 => "/[a-z]{250,260}",
        ],
        mode in proptest::option::of(prop_oneof![1 => text(), 4 => "[0-7]{1,5}", 1 => "[+0-9-]{1,4}"]),
        raw in proptest::option::weighted(0.2, text()),
        data in any::<Vec<u8>>(),
    ) {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let target = if inside { format!("{}{path}", scratch.path().display()) } else { path };
        let query = match (&raw, &mode) {
            (Some(raw), _) => raw.clone(),
            (None, Some(m)) => format!("path={}&mode={}", encode(&target), encode(m)),
            (None, None) => format!("path={}", encode(&target)),
        };
        let method = if put { Method::PUT } else { Method::GET };
        let Some(req) = authorised(method, &format!("/v1/files?{query}"), data.clone()) else {
            return Ok(());
        };
        let Some(answer) = runtime().block_on(send_if_harmless(req, scratch.path())) else {
            return Ok(());
        };
        prop_assert!(!answer.status.is_server_error(), "{} {:?}", answer.status, String::from_utf8_lossy(&answer.body));
        if put && raw.is_none() && answer.status == StatusCode::NO_CONTENT {
            let meta = std::fs::metadata(&target).expect("the file written");
            let want = warmpool_types::agent::file_mode(mode.as_deref()).expect("a valid mode");
            prop_assert_eq!(meta.permissions().mode() & 0o7777, want);
            let req = authorised(Method::GET, &format!("/v1/files?path={}", encode(&target)), vec![]).expect("a request");
            let back = runtime().block_on(send(req));
            // Reading needs the read bit only from a user other than root.
            if back.status == StatusCode::OK {
                prop_assert_eq!(back.body, data);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// A valid command runs and its output is exactly what it printed: arguments and environment
    /// values get through whatever they hold (quotes, `$`, newlines, multi-byte characters).
    #[test]
    fn commands_get_their_arguments_and_environment(
        arg in "[^\\x00]{0,24}",
        value in "[^\\x00]{0,24}",
        name in "WP_[A-Za-z0-9_]{0,8}",
        shell in any::<bool>(),
    ) {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let cwd = scratch.path().display().to_string();
        let env = BTreeMap::from([(name.clone(), value.clone())]);
        let (req, want) = if shell {
            (AgentExecRequest {
                command: Some(format!("printf '%s' \"${name}\"")),
                cwd: Some(cwd),
                env,
                timeout_ms: Some(60_000),
                ..Default::default()
            }, value)
        } else {
            (AgentExecRequest {
                argv: Some(vec!["printf".into(), "%s".into(), arg.clone()]),
                cwd: Some(cwd),
                env,
                timeout_ms: Some(60_000),
                ..Default::default()
            }, arg)
        };
        let body = serde_json::to_vec(&req).expect("JSON");
        let answer = runtime().block_on(send(authorised(Method::POST, "/v1/exec", body).expect("a request")));
        prop_assert_eq!(answer.status, StatusCode::OK);
        let res: AgentExecResult = serde_json::from_slice(&answer.body).expect("a result");
        prop_assert_eq!((res.exit_code, res.output), (0, want));
    }
}

// ---------------------------------------------------------------------------------------------
// What the properties found, kept as plain tests
// ---------------------------------------------------------------------------------------------

fn exec(body: Value) -> Answer {
    runtime().block_on(send(
        authorised(Method::POST, "/v1/exec", body.to_string().into_bytes()).expect("a request"),
    ))
}

#[test]
fn a_refused_background_command_leaves_no_log_directory() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let log = scratch.path().join("made/by/a/refused/request.log");
    for bad in [
        json!({"command": "true", "env": {"1BAD": "x"}}),
        json!({"command": "true", "env": {"A": "x\u{0}"}}),
        json!({"command": "tr\u{0}ue"}),
        json!({"argv": []}),
        json!({"argv": ["tr\u{0}ue"]}),
        json!({"command": "true", "cwd": "relative"}),
    ] {
        let mut req = bad.clone();
        req["backgroundLog"] = log.display().to_string().into();
        let answer = exec(req);
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    assert!(!scratch.path().join("made").exists());
    let answer = exec(json!({"command": "true", "backgroundLog": "relative.log"}));
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
}

fn put(path: &str, mode: &str, data: Vec<u8>) -> Answer {
    let uri = format!("/v1/files?path={}&mode={mode}", encode(path));
    runtime().block_on(send(
        authorised(Method::PUT, &uri, data).expect("a request"),
    ))
}

#[test]
fn files_up_to_the_limit_are_written() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    // Larger than axum's default limit on a body (2 MiB), which refused it.
    let big = scratch.path().join("big");
    let data = vec![b'x'; 3 * 1024 * 1024];
    assert_eq!(
        put(&big.display().to_string(), "600", data.clone()).status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(std::fs::read(&big).expect("written"), data);
    // The longest name a directory takes (its temporary file's name made it too long).
    let long = scratch.path().join("n".repeat(255));
    assert_eq!(
        put(&long.display().to_string(), "644", b"x".to_vec()).status,
        StatusCode::NO_CONTENT
    );
}

#[test]
fn file_requests_the_filesystem_refuses_are_the_clients_mistake() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let dir = scratch.path().display().to_string();
    std::fs::write(scratch.path().join("file"), "x").expect("a file");
    std::fs::create_dir(scratch.path().join("dir")).expect("a directory");
    for (path, mode) in [
        (format!("{dir}/file/below"), "644"),
        (format!("{dir}/dir"), "644"),
        (format!("{dir}/x"), "+644"),
        (format!("{dir}/x"), "-0"),
        (format!("{dir}/x"), "17777"),
        (format!("{dir}//x"), "644"),
        (format!("{dir}/x/"), "644"),
        (format!("{dir}/./x"), "644"),
        (format!("{dir}/{}", "n".repeat(256)), "644"),
        ("/".to_string(), "644"),
    ] {
        let answer = put(&path, mode, b"data".to_vec());
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {mode}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    // A failed write leaves no temporary file behind.
    let left: Vec<_> = std::fs::read_dir(scratch.path().join("dir"))
        .expect("the directory")
        .chain(std::fs::read_dir(scratch.path()).expect("the directory"))
        .map(|e| e.expect("an entry").file_name())
        .filter(|n| n.to_string_lossy().contains("warmpool-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let get = |path: String| {
        runtime().block_on(send(
            authorised(
                Method::GET,
                &format!("/v1/files?path={}", encode(&path)),
                vec![],
            )
            .expect("a request"),
        ))
    };
    assert_eq!(
        get(format!("{dir}/file/below")).status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        get(format!("{dir}/dir")).status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(get(format!("{dir}/none")).status, StatusCode::NOT_FOUND);
}

#[test]
fn identities_nobody_could_use_are_refused() {
    let base = json!({
        "token": "t".repeat(16), "hostname": "vm-a", "machineId": "0".repeat(32),
    });
    for (field, value) in [
        ("token", json!("é".repeat(16))),
        ("token", json!(format!("{} x", "t".repeat(16)))),
        ("timeMs", json!(-1)),
        ("timeMs", json!(i64::MAX)),
        ("timeMs", json!(i64::MIN)),
        ("entropy", json!("xyz")),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        // Never sent unless refused: an identity taken would be this machine's.
        let req: IdentityRequest = serde_json::from_value(body.clone()).expect("decodes");
        assert!(req.check().is_err(), "{body}");
        let answer = runtime().block_on(send(
            authorised(Method::POST, "/v1/identity", body.to_string().into_bytes())
                .expect("a request"),
        ));
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {value}"
        );
    }
}
