//! Repository URLs: any text is refused or taken apart without a panic, and what is taken apart
//! goes back together — the user info joined to the URL kept, or the secret put back, gives the
//! URL given (its scheme in lower case); only an ssh account stays in the URL kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warmpool_types::{repo_url, validate};

fuzz_target!(|u: &str| {
    let _ = repo_url::percent_decode(u);
    let _ = repo_url::is_local_host(u);
    if validate::repo_url(u).is_err() {
        return;
    }
    let Ok(r) = repo_url::parse(u) else {
        return;
    };
    let canonical = match u.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => u.to_string(),
    };
    if let Some(info) = &r.userinfo {
        assert_eq!(repo_url::join(&r.url, info), canonical);
    }
    if let (Some(_), Some(secret)) = (&r.username, &r.secret) {
        assert_eq!(r.with_secret(secret), canonical);
    }
    if !u.contains('@') {
        assert_eq!(r.url, u);
    }
    if let Some((scheme, rest)) = r.url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
            assert!(
                !authority.contains('@'),
                "{:?} kept user info from {u:?}",
                r.url
            );
        }
    }
    let _ = (
        r.display(),
        r.credentials(),
        r.secret_is_hidden(),
        format!("{r:?}"),
    );
    if let Some(host) = &r.host {
        let _ = repo_url::is_local_host(host);
    }
});
