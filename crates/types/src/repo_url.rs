//! Repository URLs taken apart: where the source is (a path on the server's disk or a network
//! host), and which part of it is a secret — credentials written into the URL, which are kept
//! apart from it, sealed, and shown as `***`.

/// What is shown in place of a secret, and what a client sends back to mean "the one kept".
pub const HIDDEN: &str = "***";

/// A repository URL, taken apart.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// The URL without its secret: what VMs get as `origin`, and what git is pointed at (the
    /// secret is handed to git apart from it).
    pub url: String,
    /// The secret part of the URL's user info as written (percent-encoding included): the
    /// password, or the whole user info when it is only a token (`https://TOKEN@host/...`).
    pub secret: Option<String>,
    /// The source on the server's own disk (an absolute path or a `file://` URL), if it is one.
    pub local_path: Option<String>,
    /// The network host (and port, as written) the source is fetched from.
    pub host: Option<String>,
    /// `https`, `ssh`, `git`, ... (`ssh` for `user@host:path`, `file` for paths).
    pub scheme: String,
    /// The user name kept in `url` (ssh accounts), or the one the secret goes with.
    pub username: Option<String>,
    /// The whole user info as written, when it holds a secret: what is sealed and kept.
    pub userinfo: Option<String>,
}

impl std::fmt::Debug for RepoUrl {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoUrl")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| HIDDEN))
            .finish()
    }
}

impl RepoUrl {
    /// The URL as shown to people: the secret as `***`.
    pub fn display(&self) -> String {
        display(&self.url, self.secret.is_some(), self.username.as_deref())
    }

    /// Whether the secret was written as `***`: "keep the credentials already stored".
    pub fn secret_is_hidden(&self) -> bool {
        self.secret.as_deref() == Some(HIDDEN)
    }

    /// The credentials git must present, percent-decoded: (user name, password). A token given
    /// alone is the user name with an empty password, as git would send it.
    pub fn credentials(&self) -> Option<(String, String)> {
        let secret = self.secret.as_deref()?;
        Some(match &self.username {
            Some(user) => (percent_decode(user), percent_decode(secret)),
            None => (percent_decode(secret), String::new()),
        })
    }

    /// The URL with its secret put back in (for a `git credential-store` file, never for git's
    /// command line or a remote's configuration).
    pub fn with_secret(&self, secret: &str) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let rest = match &self.username {
            // ssh keeps its user in the URL: `user@host` → `user:secret@host`.
            Some(user) if rest.starts_with(&format!("{user}@")) => {
                rest[user.len() + 1..].to_string()
            }
            _ => rest.to_string(),
        };
        match &self.username {
            Some(user) => format!("{scheme}://{user}:{secret}@{rest}"),
            None => format!("{scheme}://{secret}:@{rest}"),
        }
    }
}

/// `url` (which has no secret) with `***` where its secret goes.
pub fn display(url: &str, has_secret: bool, username: Option<&str>) -> String {
    if !has_secret {
        return url.to_string();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match username {
        Some(user) => {
            let rest = rest.strip_prefix(&format!("{user}@")).unwrap_or(rest);
            format!("{scheme}://{user}:{HIDDEN}@{rest}")
        }
        None => format!("{scheme}://{HIDDEN}@{rest}"),
    }
}

/// Percent-decodes `s` (bytes that do not form an escape stay as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // An escape is `%` and two hex digits, exactly: `u8::from_str_radix` alone would also
        // read a sign (`%+0` as a NUL), which git sends as the three characters it is.
        if b[i] == b'%' && i + 2 < b.len() {
            let (hi, lo) = (b[i + 1], b[i + 2]);
            if let (Some(hi), Some(lo)) = ((hi as char).to_digit(16), (lo as char).to_digit(16)) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes a URL apart. It must already have passed [`crate::validate::repo_url`].
pub fn parse(u: &str) -> Result<RepoUrl, String> {
    if u.starts_with('/') {
        return Ok(RepoUrl {
            url: u.to_string(),
            secret: None,
            local_path: Some(u.to_string()),
            host: None,
            scheme: "file".into(),
            username: None,
            userinfo: None,
        });
    }
    if let Some((scheme, rest)) = u.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if scheme == "file" {
            if userinfo.is_some() {
                return Err("a file:// URL cannot hold a user name or password".into());
            }
            if !hostport.is_empty() && !hostport.eq_ignore_ascii_case("localhost") {
                return Err(format!(
                    "a file:// URL names a path on this server, not on `{hostport}`: write file:///path"
                ));
            }
            if path.contains('%') {
                return Err(
                    "write the path of a file:// URL without %-escapes (or give the absolute path itself)"
                        .into(),
                );
            }
            if !path.starts_with('/') {
                return Err("a file:// URL needs an absolute path: file:///path".into());
            }
            return Ok(RepoUrl {
                url: u.to_string(),
                secret: None,
                local_path: Some(path.to_string()),
                host: None,
                scheme,
                username: None,
                userinfo: None,
            });
        }
        if hostport.is_empty() {
            return Err("has no host".into());
        }
        let ssh = matches!(scheme.as_str(), "ssh" | "git+ssh" | "ssh+git");
        let (username, secret) = match userinfo.map(|i| (i, i.split_once(':'))) {
            None => (None, None),
            Some(("", _)) => return Err("has an empty user name before `@`".into()),
            Some((_, Some((user, pass)))) if !pass.is_empty() => {
                (Some(user.to_string()), Some(pass.to_string()))
            }
            // `user:@host`: a user name and no password.
            Some((_, Some((user, _)))) => (Some(user.to_string()), None),
            // ssh's user is an account name, not a secret; elsewhere a user name given alone
            // is a token.
            Some((info, None)) if ssh => (Some(info.to_string()), None),
            Some((info, None)) => (None, Some(info.to_string())),
        };
        for part in [&username, &secret].into_iter().flatten() {
            if part != HIDDEN && percent_decode(part).chars().any(char::is_control) {
                return Err("the credentials in the URL hold control characters".into());
            }
        }
        // The URL kept: ssh keeps its user (an account, needed to connect); every other scheme
        // loses its user info, which goes with the secret.
        let url = match (&username, ssh) {
            (Some(user), true) => format!("{scheme}://{user}@{hostport}{path}"),
            _ if userinfo.is_none() => u.to_string(),
            _ => format!("{scheme}://{hostport}{path}"),
        };
        return Ok(RepoUrl {
            url,
            username: if ssh || secret.is_some() {
                username
            } else {
                None
            },
            userinfo: secret.as_ref().and(userinfo).map(str::to_string),
            secret,
            local_path: None,
            host: Some(hostport.to_string()),
            scheme,
        });
    }
    // scp-like `[user@]host:path`.
    let (host_part, _) = u.split_once(':').ok_or("is not a URL git accepts")?;
    let (user, host) = match host_part.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, host_part),
    };
    // `user:password@host:path` reads as host `user` and path `password@host:path`.
    let path_head = u[host_part.len() + 1..].split('/').next().unwrap_or("");
    if user.is_some_and(|u| u.contains(':')) || path_head.contains('@') {
        return Err("`user:password@host:path` URLs cannot carry a password: use an ssh key, or an https:// URL with the credentials in it".into());
    }
    Ok(RepoUrl {
        url: u.to_string(),
        secret: None,
        local_path: None,
        host: Some(host.to_string()),
        scheme: "ssh".into(),
        username: user.map(str::to_string),
        userinfo: None,
    })
}

/// Puts a kept user info back into a URL that lost it (the inverse of what [`parse`] takes out).
pub fn join(url: &str, userinfo: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{userinfo}@{rest}")
}

/// Whether `host` (as a URL writes it, maybe with a port or in brackets) names this machine or
/// its link-local neighbourhood: loopback, unspecified, link-local addresses, `localhost`, and
/// the numeric forms (`2130706433`, `0x7f.1`) that resolvers read as addresses.
pub fn is_local_host(host: &str) -> bool {
    let h = host.trim().to_ascii_lowercase();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|c| c.is_ascii_digit()))
            .map(|(host, _)| host.to_string())
            .unwrap_or(h.clone())
    };
    let bare = bare.trim_end_matches('.');
    if bare == "localhost" || bare.ends_with(".localhost") || bare.is_empty() {
        return true;
    }
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => local_v4(v4),
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6.to_ipv4_mapped().is_some_and(local_v4)
            }
        };
    }
    // `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`: what inet_aton reads as addresses.
    bare.split('.').all(|part| {
        !part.is_empty()
            && (part.bytes().all(|c| c.is_ascii_digit())
                || part
                    .strip_prefix("0x")
                    .is_some_and(|x| x.bytes().all(|c| c.is_ascii_hexdigit())))
    })
}

fn local_v4(ip: std::net::Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || ip.is_link_local() || ip.octets()[0] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_local() {
        let r = parse("/srv/git/a").unwrap();
        assert_eq!(r.local_path.as_deref(), Some("/srv/git/a"));
        let r = parse("file:///srv/git/a").unwrap();
        assert_eq!(r.local_path.as_deref(), Some("/srv/git/a"));
        assert!(parse("file://localhost/srv/a")
            .unwrap()
            .local_path
            .is_some());
        assert!(parse("file://other/srv/a").is_err());
        assert!(parse("file://u@/srv/a").is_err());
        assert!(parse("file:///srv/a%2e%2e").is_err());
        assert!(parse("https://example.com/a").unwrap().local_path.is_none());
    }

    #[test]
    fn secrets_are_taken_out() {
        let r = parse("https://user:p%40ss@example.com:8443/a/b.git").unwrap();
        assert_eq!(r.url, "https://example.com:8443/a/b.git");
        assert_eq!(r.secret.as_deref(), Some("p%40ss"));
        assert_eq!(r.display(), "https://user:***@example.com:8443/a/b.git");
        assert_eq!(r.credentials(), Some(("user".into(), "p@ss".into())));
        assert_eq!(r.host.as_deref(), Some("example.com:8443"));
        assert_eq!(
            r.with_secret("p%40ss"),
            "https://user:p%40ss@example.com:8443/a/b.git"
        );
        assert!(!format!("{r:?}").contains("p%40ss"));
        assert_eq!(r.userinfo.as_deref(), Some("user:p%40ss"));
        assert_eq!(
            join(&r.url, "user:p%40ss"),
            "https://user:p%40ss@example.com:8443/a/b.git"
        );

        let t = parse("https://ghp_token123@github.com/a/b").unwrap();
        assert_eq!(t.url, "https://github.com/a/b");
        assert_eq!(t.display(), "https://***@github.com/a/b");
        assert_eq!(
            t.credentials(),
            Some(("ghp_token123".into(), String::new()))
        );
        assert_eq!(
            t.with_secret("ghp_token123"),
            "https://ghp_token123:@github.com/a/b"
        );

        let s = parse("ssh://git@example.com/a").unwrap();
        assert_eq!(
            (s.url.as_str(), s.secret.is_none()),
            ("ssh://git@example.com/a", true)
        );
        let s = parse("ssh://git:pw123456@example.com/a").unwrap();
        assert_eq!(s.url, "ssh://git@example.com/a");
        assert_eq!(s.display(), "ssh://git:***@example.com/a");
        assert_eq!(
            join(&s.url, "git:pw123456"),
            "ssh://git:pw123456@example.com/a"
        );

        let plain = parse("https://example.com/a").unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.secret.is_none()),
            ("https://example.com/a", true)
        );
        assert!(parse("https://user:***@example.com/a")
            .unwrap()
            .secret_is_hidden());
        assert!(parse("https://u:a%0ab@example.com/a").is_err());
        // Not an escape: a sign is no hex digit.
        assert_eq!(percent_decode("%+0%-1%+a"), "%+0%-1%+a");
        let p = parse("https://u:%2B%+0@example.com/a").unwrap();
        assert_eq!(p.credentials(), Some(("u".into(), "+%+0".into())));

        let scp = parse("git@example.com:a/b.git").unwrap();
        assert_eq!(
            (scp.host.as_deref(), scp.secret.is_none()),
            (Some("example.com"), true)
        );
        assert!(parse("git:pw@example.com:a/b.git").is_err());
    }

    #[test]
    fn local_hosts() {
        for local in [
            "localhost",
            "LOCALHOST:8080",
            "a.localhost",
            "127.0.0.1",
            "127.8.9.1:22",
            "[::1]",
            "[::1]:8080",
            "0.0.0.0",
            "[::]",
            "169.254.169.254",
            "[fe80::1]",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0x7f000001",
            "127.1",
            "0177.0.0.1",
            "0.1.2.3",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for remote in [
            "example.com",
            "github.com:443",
            "10.1.2.3",
            "192.0.2.2",
            "cafe.be",
            "[2001:db8::1]",
            "deadbeef.com",
        ] {
            assert!(!is_local_host(remote), "{remote}");
        }
    }
}
