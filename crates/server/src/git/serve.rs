//! Smart HTTP (protocol v0, upload-pack only) for VMs to clone the server's mirrors, on a listener
//! of its own bound to the host's loopback. Each boot gets a capability token that admits it to
//! its project's mirrors only, for as long as its clone steps run.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tower_http::decompression::RequestDecompressionLayer;

use super::mirror::Mirrors;

pub struct GitServer {
    addr: SocketAddr,
    grants: Mutex<HashMap<String, HashSet<String>>>,
    mirrors: Arc<Mirrors>,
}

/// Admission to some mirrors; revoked when dropped.
pub struct Grant {
    server: Arc<GitServer>,
    token: String,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.server
            .grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

impl Grant {
    /// The URL a VM clones `mirror_id` from, reaching the server at `host` (its view of the host).
    pub fn url(&self, host: &str, mirror_id: &str) -> String {
        format!(
            "http://{host}:{}/{}/{mirror_id}",
            self.server.addr.port(),
            self.token
        )
    }
}

impl GitServer {
    /// Binds `127.0.0.1:0` and serves in the background.
    pub async fn start(mirrors: Arc<Mirrors>) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let me = Arc::new(Self {
            addr: listener.local_addr()?,
            grants: Mutex::new(HashMap::new()),
            mirrors,
        });
        let app = Router::new()
            .route("/{grant}/{mirror}/info/refs", get(info_refs))
            .route("/{grant}/{mirror}/git-upload-pack", post(upload_pack))
            .layer(RequestDecompressionLayer::new())
            .with_state(me.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the git server stopped: {e}");
            }
        });
        Ok(me)
    }

    /// The port VMs reach the mirrors at, on the host's loopback.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn grant(self: &Arc<Self>, mirror_ids: impl IntoIterator<Item = String>) -> Grant {
        let token = warmpool_types::ids::random_secret(32);
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), mirror_ids.into_iter().collect());
        Grant {
            server: self.clone(),
            token,
        }
    }

    fn admitted(&self, grant: &str, mirror: &str) -> bool {
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(grant)
            .is_some_and(|m| m.contains(mirror))
            && self.mirrors.exists(mirror)
    }
}

#[derive(Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn info_refs(
    State(srv): State<Arc<GitServer>>,
    Path((grant, mirror)): Path<(String, String)>,
    Query(q): Query<InfoRefsQuery>,
) -> Response {
    if !srv.admitted(&grant, &mirror) {
        return not_found();
    }
    if q.service.as_deref() != Some("git-upload-pack") {
        return (
            StatusCode::FORBIDDEN,
            "only smart HTTP upload-pack is served\n",
        )
            .into_response();
    }
    let out = tokio::process::Command::new("git")
        .args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
        .arg(srv.mirrors.path(&mirror))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => {
            let mut body = b"001e# service=git-upload-pack\n0000".to_vec();
            body.extend_from_slice(&out.stdout);
            (
                [
                    (
                        header::CONTENT_TYPE,
                        "application/x-git-upload-pack-advertisement",
                    ),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "upload-pack failed\n").into_response(),
    }
}

async fn upload_pack(
    State(srv): State<Arc<GitServer>>,
    Path((grant, mirror)): Path<(String, String)>,
    body: Body,
) -> Response {
    if !srv.admitted(&grant, &mirror) {
        return not_found();
    }
    let child = tokio::process::Command::new("git")
        .args(["upload-pack", "--stateless-rpc"])
        .arg(srv.mirrors.path(&mirror))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upload-pack failed\n").into_response()
        }
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upload-pack failed\n").into_response();
    };
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-git-upload-pack-result"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReaderStream::new(stdout)),
    )
        .into_response()
}
