//! Properties of every parser and validator in this crate that sees user text: none panics on any
//! input, each accepts what it says it accepts, and what is taken apart can be put back together.

use std::collections::BTreeMap;

use proptest::prelude::*;
use warmpool_types::agent::{
    file_mode, file_path, hex_bytes, AgentExecRequest, BackgroundQuery, FileQuery, IdentityRequest,
    MAX_IDENTITY_TIME_MS, MAX_NAME_BYTES, MAX_PATH_BYTES,
};
use warmpool_types::output::CappedOutput;
use warmpool_types::state::{InstanceKind, InstanceStatus};
use warmpool_types::{api, ids, repo_url, time, validate};

/// Enough cases to find the easy mistakes in a plain `cargo test`, few enough to take a moment;
/// the fuzz targets search much longer. Failures are turned into unit tests, not kept in files.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that breaks parsers: anything at all, the characters of URLs, paths and names, and
/// control and multi-byte characters among separators.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_./:@%+#?*~^\\[\\]\\\\{}=-]{0,24}",
        "[/.a@:%é€\u{0}\n\t -]{0,12}",
    ]
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Every byte as `%XX`: what percent-decoding must undo exactly.
fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02x}")).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn branch_names(b in prop_oneof![text(), "[a-z./@{-]{1,12}"], c in "[a-z][a-z0-9-]{0,8}") {
        if validate::branch_name(&b).is_ok() {
            prop_assert!(!b.is_empty() && b.len() <= 255 && !b.starts_with('-'));
            prop_assert!(!b.contains("..") && !b.contains("@{") && !b.contains("//"), "{:?}", b);
            prop_assert!(!b.chars().any(|c| c.is_ascii_control() || c == ' '));
            // A valid name stays valid under another valid name: `git` builds refs so.
            let nested = format!("{c}/{b}");
            if nested.len() <= 255 && validate::branch_name(&c).is_ok() {
                prop_assert!(validate::branch_name(&nested).is_ok(), "{nested:?}");
            }
        }
    }

    #[test]
    fn env_names_are_shell_identifiers(n in prop_oneof![text(), "[A-Za-z_][A-Za-z0-9_]{0,200}"]) {
        let identifier = (1..=191).contains(&n.len())
            && n.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
        prop_assert_eq!(validate::env_name(&n).is_ok(), identifier, "{:?}", n);
        if validate::project_env_name(&n).is_ok() {
            prop_assert!(identifier && validate::reserved_env_name(&n).is_none());
        }
    }

    #[test]
    fn repo_names_make_one_directory(full in prop_oneof![text(), "[A-Za-z0-9._-]{1,6}/[A-Za-z0-9._-]{1,6}"]) {
        if let Ok(name) = validate::repo_full_name(&full) {
            prop_assert!(full.ends_with(&format!("/{name}")), "{:?}", full);
            // The repo is cloned to /home/<name>: that must be exactly one directory there.
            let dir = format!("/home/{name}");
            prop_assert!(file_path(&dir).is_ok(), "{dir:?}");
            prop_assert!(!name.eq_ignore_ascii_case(".git"));
        }
    }

    #[test]
    fn display_text_has_no_control_characters(s in text(), max in 0usize..30) {
        if validate::display_text(&s, max).is_ok() {
            prop_assert!(!s.trim().is_empty() && s.chars().count() <= max);
            prop_assert!(!s.chars().any(|c| c.is_control() && c != '\t'));
        }
    }

    #[test]
    fn repo_urls_come_apart_and_back_together(
        u in prop_oneof![
            text(),
            "(https?|HTTPS|ssh|git|file|git\\+ssh|ssh\\+git|ftp|ext)(://|::)[a-z0-9:@%./?#*-]{0,24}",
            "[a-z:@%]{0,8}@[a-z.]{1,8}:[a-z/@:]{0,8}",
        ]
    ) {
        if validate::repo_url(&u).is_err() {
            return Ok(());
        }
        prop_assert!(!u.starts_with('-') && !u.chars().any(char::is_control));
        let Ok(r) = repo_url::parse(&u) else { return Ok(()) };
        // What parse hands out is the URL less its credentials, with the scheme in lower case.
        let canonical = match u.split_once("://") {
            Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            None => u.clone(),
        };
        if let Some(info) = &r.userinfo {
            prop_assert_eq!(repo_url::join(&r.url, info), canonical.clone());
        }
        if let (Some(_), Some(secret)) = (&r.username, &r.secret) {
            prop_assert_eq!(r.with_secret(secret), canonical.clone());
        }
        if !u.contains('@') {
            prop_assert_eq!(&r.url, &u);
        }
        // Only an ssh account stays in the URL kept; any other user info goes with the secret.
        if let Some((scheme, rest)) = r.url.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
                prop_assert!(!authority.contains('@'), "{:?} from {:?}", r.url, u);
            }
        }
        let _ = (r.display(), r.credentials(), r.secret_is_hidden(), format!("{r:?}"));
        if let Some(host) = &r.host {
            let _ = repo_url::is_local_host(host);
        }
    }

    #[test]
    fn percent_decoding_undoes_encoding(s in any::<String>(), t in prop_oneof![text(), "[%+0-9a-fA-F-]{0,8}"]) {
        prop_assert_eq!(repo_url::percent_decode(&percent_encode(&s)), s.clone());
        // Without a `%` followed by two hex digits there is nothing to decode.
        let has_escape = t.as_bytes().windows(3).any(|w| {
            w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()
        });
        if !has_escape {
            prop_assert_eq!(repo_url::percent_decode(&t), t.clone());
        }
    }

    #[test]
    fn local_hosts(h in text(), a in any::<[u8; 4]>(), port in any::<u16>()) {
        let _ = repo_url::is_local_host(&h);
        let v4 = std::net::Ipv4Addr::from(a);
        let local = a[0] == 127 || a[0] == 0 || (a[0] == 169 && a[1] == 254);
        prop_assert_eq!(repo_url::is_local_host(&format!("{v4}:{port}")), local);
        prop_assert_eq!(repo_url::is_local_host(&format!("[::ffff:{v4}]")), local);
    }

    #[test]
    fn ids_states_and_times(s in text(), ms in -62_135_596_800_000i64..=253_402_300_799_999) {
        for check in [ids::is_project_id, ids::is_instance_id, ids::is_vm_id, ids::is_token_id] {
            let _ = check(&s);
        }
        if let Ok(st) = s.parse::<InstanceStatus>() {
            prop_assert_eq!(st.as_str(), s.as_str());
        }
        if let Ok(k) = s.parse::<InstanceKind>() {
            prop_assert_eq!(k.as_str(), s.as_str());
        }
        let _ = time::parse_ts(&s);
        prop_assert_eq!(time::parse_ts(&time::fmt_ms(ms)), Some(ms));
    }

    #[test]
    fn any_time_formats(ms in any::<i64>()) {
        let _ = time::fmt_ms(ms);
    }

    #[test]
    fn capped_output_keeps_a_head_and_a_tail(
        pieces in proptest::collection::vec("[a-z\né€😀]{0,20}", 0..20),
        head in 0usize..40,
        tail in 0usize..40,
    ) {
        let mut c = CappedOutput::new(head, tail);
        let all: String = pieces.concat();
        for p in &pieces {
            c.push(p);
        }
        prop_assert_eq!(c.total_len(), all.len() as u64);
        let (text, truncated) = c.render();
        if !truncated {
            prop_assert_eq!(text, all);
            return Ok(());
        }
        let start = text.find("[... ").expect("a marker");
        let (before, marker) = text.split_at(start);
        let (marker, after) = marker.split_once('\n').expect("a marker line");
        let omitted: usize = marker
            .trim_start_matches("[... ")
            .trim_end_matches(" bytes omitted ...]")
            .parse()
            .expect("a count");
        prop_assert!(all.ends_with(after));
        // The head is kept as it was, a newline added when it did not end a line.
        let head_as_kept = |h: &str| all.starts_with(h) && h.len() + omitted + after.len() == all.len();
        prop_assert!(
            head_as_kept(before) || before.strip_suffix('\n').is_some_and(head_as_kept),
            "{:?} from {:?}", text, all
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's requests
// ---------------------------------------------------------------------------------------------

fn env_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![text(), "[A-Za-z_][A-Za-z0-9_]{0,6}"],
        text(),
        0..3,
    )
}

fn exec_request() -> impl Strategy<Value = AgentExecRequest> {
    (
        proptest::option::of(text()),
        proptest::option::of(proptest::collection::vec(text(), 0..3)),
        proptest::option::of(prop_oneof![text(), "/[a-z/.]{0,8}"]),
        env_map(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(prop_oneof![text(), "/[a-z/.]{0,8}"]),
        any::<bool>(),
    )
        .prop_map(
            |(command, argv, cwd, env, timeout_ms, background_log, stream)| AgentExecRequest {
                command,
                argv,
                cwd,
                env,
                timeout_ms,
                background_log,
                stream,
            },
        )
}

fn no_nul(s: &str) -> bool {
    !s.contains('\0')
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn exec_requests(req in exec_request()) {
        if req.check().is_err() {
            return Ok(());
        }
        match (&req.command, &req.argv) {
            (Some(c), None) => prop_assert!(no_nul(c)),
            (None, Some(argv)) => prop_assert!(!argv.is_empty() && argv.iter().all(|a| no_nul(a))),
            _ => prop_assert!(false, "both or neither of command and argv"),
        }
        for p in req.cwd.iter().chain(&req.background_log) {
            prop_assert!(p.starts_with('/') && no_nul(p));
        }
        for (k, v) in &req.env {
            prop_assert!(validate::env_name(k).is_ok() && no_nul(v));
        }
    }

    #[test]
    fn identity_requests(
        token in prop_oneof![text(), "[!-~]{16,40}"],
        hostname in prop_oneof![text(), "[a-z0-9-]{1,63}"],
        machine_id in prop_oneof![text(), any::<[u8; 16]>().prop_map(|b| hex(&b, false))],
        time_ms in proptest::option::of(prop_oneof![any::<i64>(), 0..=MAX_IDENTITY_TIME_MS]),
        entropy in proptest::option::of(prop_oneof![text(), any::<Vec<u8>>().prop_map(|b| hex(&b, true))]),
    ) {
        let req = IdentityRequest { token, hostname, machine_id, time_ms, entropy };
        let Ok(entropy) = req.check() else { return Ok(()) };
        prop_assert!(req.token.len() >= 16 && req.token.bytes().all(|b| b.is_ascii_graphic()));
        prop_assert!((1..=63).contains(&req.hostname.len()));
        prop_assert_eq!(hex_bytes(&req.machine_id).map(|b| b.len()), Some(16));
        prop_assert!(req.time_ms.is_none_or(|t| (0..=MAX_IDENTITY_TIME_MS).contains(&t)));
        prop_assert_eq!(entropy, req.entropy.as_deref().and_then(hex_bytes));
    }

    #[test]
    fn a_valid_identity_is_accepted(
        token in "[!-~]{16,40}",
        hostname in "[a-z0-9-]{1,63}",
        machine_id in any::<[u8; 16]>(),
        time_ms in 0..=MAX_IDENTITY_TIME_MS,
        entropy in any::<Vec<u8>>(),
        upper in any::<bool>(),
    ) {
        let req = IdentityRequest {
            token,
            hostname,
            machine_id: hex(&machine_id, upper),
            time_ms: Some(time_ms),
            entropy: Some(hex(&entropy, !upper)),
        };
        prop_assert_eq!(req.check(), Ok(Some(entropy)));
    }

    #[test]
    fn hex_reads_back(bytes in any::<Vec<u8>>(), upper in any::<bool>(), s in text()) {
        prop_assert_eq!(hex_bytes(&hex(&bytes, upper)), Some(bytes));
        if hex_bytes(&s).is_some() {
            prop_assert!(s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn file_paths_are_what_is_opened(p in prop_oneof![text(), "(/[a-z.é]{0,3}){1,4}/?", "/[a-z]{250,260}"]) {
        if let Ok(path) = file_path(&p) {
            prop_assert!(p.len() <= MAX_PATH_BYTES && no_nul(&p));
            let written: Vec<&str> = p[1..].split('/').collect();
            // The filesystem sees exactly the components that were checked: none is dropped or
            // merged, so `..`, `.` and the root itself never get through.
            let seen: Vec<std::path::Component> = path.components().collect();
            prop_assert_eq!(seen.len(), written.len() + 1);
            prop_assert_eq!(seen[0], std::path::Component::RootDir);
            for (c, w) in seen[1..].iter().zip(&written) {
                prop_assert_eq!(*c, std::path::Component::Normal(w.as_ref()));
                prop_assert!(w.len() <= MAX_NAME_BYTES);
            }
        }
    }

    #[test]
    fn file_modes(m in prop_oneof![text(), "[0-9+-]{0,6}"], v in 0u32..=0o7777) {
        if let Ok(mode) = file_mode(Some(&m)) {
            prop_assert!(mode <= 0o7777);
            prop_assert_eq!(u32::from_str_radix(&m, 8), Ok(mode));
        }
        // What the control plane sends (`{mode:o}`) is always taken.
        prop_assert_eq!(file_mode(Some(&format!("{v:o}"))), Ok(v));
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies: any JSON into any request type
// ---------------------------------------------------------------------------------------------

/// Field names of the request types, so that generated objects often get past
/// `deny_unknown_fields` and reach the fields' own types.
const KEYS: &[&str] = &[
    "enabled",
    "targetSize",
    "maxAgeMinutes",
    "branch",
    "setupCommands",
    "name",
    "command",
    "background",
    "replenish",
    "description",
    "repos",
    "repoFullName",
    "url",
    "variables",
    "value",
    "cpus",
    "memoryMb",
    "pidsMax",
    "diskMb",
    "cwd",
    "env",
    "timeoutSeconds",
    "taskId",
    "waitSeconds",
    "argv",
    "timeoutMs",
    "backgroundLog",
    "stream",
    "token",
    "hostname",
    "machineId",
    "timeMs",
    "entropy",
    "path",
    "mode",
    "settleMs",
    "bogus",
];

fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just(1.5f64), Just(-0.0), Just(3.0), Just(1e300)].prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![4 => proptest::sample::select(KEYS).prop_map(str::to_string), 1 => text()],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Deserialises `v` as `T`; what is accepted must serialise and come back the same.
fn round_trips<T>(v: &serde_json::Value) -> Result<(), TestCaseError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
        let again = serde_json::to_value(&t).expect("serialises");
        let back: T = serde_json::from_value(again.clone())
            .map_err(|e| TestCaseError::fail(format!("{again} does not read back: {e}")))?;
        prop_assert_eq!(serde_json::to_value(&back).expect("serialises"), again);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_into_any_request(v in json()) {
        round_trips::<api::UpdateWarmPoolBody>(&v)?;
        round_trips::<api::TestWarmPoolBootBody>(&v)?;
        round_trips::<api::ClearWarmPoolBody>(&v)?;
        round_trips::<api::SetupCommand>(&v)?;
        round_trips::<api::CreateProjectBody>(&v)?;
        round_trips::<api::UpdateProjectBody>(&v)?;
        round_trips::<api::RepoInput>(&v)?;
        round_trips::<api::PutEnvVarsBody>(&v)?;
        round_trips::<api::UpdateDevboxBody>(&v)?;
        round_trips::<api::UpdateResourcesBody>(&v)?;
        round_trips::<api::ExecBody>(&v)?;
        round_trips::<api::ClaimBody>(&v)?;
        round_trips::<api::CreateTokenBody>(&v)?;
        round_trips::<AgentExecRequest>(&v)?;
        round_trips::<IdentityRequest>(&v)?;
        round_trips::<FileQuery>(&v)?;
        round_trips::<BackgroundQuery>(&v)?;
        // And as text, which is how they arrive.
        let _ = serde_json::from_str::<api::UpdateWarmPoolBody>(&v.to_string());
    }

    #[test]
    fn any_bytes_into_any_request(b in any::<Vec<u8>>()) {
        let _ = serde_json::from_slice::<api::UpdateWarmPoolBody>(&b);
        let _ = serde_json::from_slice::<api::CreateProjectBody>(&b);
        let _ = serde_json::from_slice::<api::ExecBody>(&b);
        let _ = serde_json::from_slice::<AgentExecRequest>(&b);
        let _ = serde_json::from_slice::<IdentityRequest>(&b);
    }
}
