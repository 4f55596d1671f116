//! `warmpool-agent`: the small HTTP server that runs inside every VM ("the VM server" that
//! `ensure_server` waits for). It runs commands as root, reads and writes files, and answers only
//! requests that carry the VM's own token. It keeps no state beyond the processes it runs.

mod exec;
mod identity;
mod init;
mod utf8;

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use warmpool_types::agent::{
    file_mode, file_path, AgentBackground, AgentError, AgentExecRequest, AgentHealth,
    BackgroundQuery, FileQuery, TOKEN_ENV,
};

pub use exec::run_to_completion;

/// Largest file the agent reads or writes in one request.
const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct AgentState {
    /// The VM's token; replaced when a cloned VM is given its own identity.
    token: Arc<std::sync::RwLock<String>>,
}

/// Where to listen: an address, or a socket the parent already bound and handed down (the sandbox
/// backend binds it, so the port is known before the agent even starts and nobody can take it).
pub enum Listen {
    Addr(SocketAddr),
    Fd(i32),
}

pub struct Options {
    pub listen: Listen,
    pub token: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: warmpool-agent [--init] (--listen ADDR | --listen-fd N) [--token-file PATH | --token-cmdline]\n\
         The token comes from --token-file, the kernel command line (warmpool.token=) or the\n\
         {TOKEN_ENV} environment variable."
    );
    std::process::exit(2)
}

/// Parses the command line and environment. The token is removed from the environment so that
/// nothing the agent runs inherits it.
pub fn options_from_env() -> Options {
    let mut listen = None;
    let mut token_file = None;
    let mut from_cmdline = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = Some(Listen::Addr(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                ))
            }
            "--listen-fd" => {
                listen = Some(Listen::Fd(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                ))
            }
            "--token-file" => token_file = Some(args.next().unwrap_or_else(|| usage())),
            "--token-cmdline" => from_cmdline = true,
            "--version" => {
                println!("warmpool-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0)
            }
            _ => usage(),
        }
    }
    let token = match token_file {
        None if from_cmdline => std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("warmpool.token="))
            .unwrap_or_default()
            .to_string(),
        Some(path) => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|e| {
                eprintln!("warmpool-agent: cannot read token file {path}: {e}");
                std::process::exit(2)
            }),
        None => std::env::var(TOKEN_ENV).unwrap_or_default(),
    };
    // SAFETY: called from main before any other thread exists.
    unsafe { std::env::remove_var(TOKEN_ENV) };
    if token.len() < 16 {
        eprintln!("warmpool-agent: no token (or one shorter than 16 characters) was given");
        std::process::exit(2)
    }
    Options {
        listen: listen.unwrap_or_else(|| usage()),
        token,
    }
}

/// Entry point of the `warmpool-agent` binary.
pub fn main() {
    // `--init`: be PID 1 of a VM — start the agent proper and reap every orphan until it exits.
    // Decided before anything else runs: forking is only sound while single-threaded.
    if std::env::args().nth(1).as_deref() == Some("--init") {
        init::run();
    }
    let opts = options_from_env();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARMPOOL_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(opts)) {
        eprintln!("warmpool-agent: {e}");
        std::process::exit(1);
    }
}

pub async fn serve(opts: Options) -> std::io::Result<()> {
    let listener = match opts.listen {
        Listen::Addr(a) => tokio::net::TcpListener::bind(a).await?,
        Listen::Fd(fd) => {
            // SAFETY: the parent handed us this descriptor as a bound, listening TCP socket.
            let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std_listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std_listener)?
        }
    };
    tracing::info!("warmpool-agent listening on {}", listener.local_addr()?);
    axum::serve(listener, router(opts.token)).await
}

pub fn router(token: String) -> Router {
    let state = AgentState {
        token: Arc::new(std::sync::RwLock::new(token)),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/identity", post(identity::set_identity))
        .route("/v1/exec", post(exec_handler))
        // Axum's default limit on a body (2 MiB) is below the files the agent takes: a project's
        // /home/.env alone can be larger.
        .route(
            "/v1/files",
            get(read_file)
                .put(write_file)
                .layer(DefaultBodyLimit::max(MAX_FILE_BYTES)),
        )
        .route("/v1/background", get(background))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(AgentError { error: msg.into() })).into_response()
}

async fn require_token(State(st): State<AgentState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = {
        let token = st.token.read().unwrap_or_else(|p| p.into_inner());
        bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
    };
    if ok {
        let mut req = req;
        req.extensions_mut().insert(st.token.clone());
        next.run(req).await
    } else {
        error(StatusCode::UNAUTHORIZED, "missing or wrong token")
    }
}

async fn health() -> Json<AgentHealth> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Json(AgentHealth {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname,
    })
}

async fn exec_handler(body: Bytes) -> Response {
    let req: AgentExecRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("bad request: {e}"),
            )
        }
    };
    // Before anything runs or any file is made: a bad request has no side effect.
    if let Err(m) = req.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, m);
    }
    if req.background_log.is_some() {
        return match exec::start_background(&req).await {
            Ok(res) => Json(res).into_response(),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        };
    }
    if req.stream {
        let rx = exec::run_streaming(req);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    }
    Json(run_to_completion(req).await).into_response()
}

async fn background(Query(q): Query<BackgroundQuery>) -> Json<Vec<AgentBackground>> {
    let settle = q.settle_ms.min(warmpool_types::agent::MAX_SETTLE_MS);
    Json(exec::background(std::time::Duration::from_millis(settle)).await)
}

/// An error of the filesystem as an answer: what the request named cannot be a file here (a
/// component that is a file — EEXIST when a directory is to be made there —, a directory where
/// the file would be, a loop) is the client's mistake; anything else is the agent's.
fn fs_error(e: std::io::Error) -> Response {
    let status = match e.raw_os_error() {
        Some(libc::ENOENT) => StatusCode::NOT_FOUND,
        Some(libc::ENOTDIR | libc::EEXIST | libc::EISDIR | libc::ELOOP | libc::ENAMETOOLONG) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn read_file(Query(q): Query<FileQuery>) -> Response {
    let path = match file_path(&q.path) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
    };
    match tokio::fs::metadata(path).await {
        Ok(m) if m.len() as usize > MAX_FILE_BYTES => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "file is too large to read")
        }
        Ok(m) if !m.is_file() => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "not a regular file")
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "no such file")
        }
        Err(e) => return fs_error(e),
    }
    match tokio::fs::read(path).await {
        Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
        Err(e) => fs_error(e),
    }
}

/// Writes atomically (temporary file + rename) with the requested mode, so a reader never sees a
/// half-written file and the mode is right from the first byte.
async fn write_file(Query(q): Query<FileQuery>, body: Bytes) -> Response {
    let path = match file_path(&q.path) {
        Ok(p) => p.to_path_buf(),
        Err(m) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
    };
    if body.len() > MAX_FILE_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "file is too large");
    }
    let mode = match file_mode(q.mode.as_deref()) {
        Ok(m) => m,
        Err(m) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
    };
    let res = tokio::task::spawn_blocking(move || write_atomically(&path, &body, mode)).await;
    match res {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => fs_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    // Named apart from the file, so that a file with the longest name a directory takes can be
    // written too; numbered, so that two writes at once never share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".warmpool-tmp-{}-{n}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        // The umask may have narrowed the mode; set it exactly — after writing, because a write
        // by a user without CAP_FSETID clears the setuid and setgid bits.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    // A write that failed (say, onto a directory) leaves nothing behind.
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
