//! The HTTP client for `warmpool-agent` (the protocol is in `warmpool_types::agent`).

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use warmpool_types::agent::{
    AgentBackground, AgentExecEvent, AgentExecRequest, AgentExecResult, AgentHealth,
    IdentityRequest,
};

use crate::{Agent, AgentCallError};

pub struct HttpAgent {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl HttpAgent {
    pub fn new(client: reqwest::Client, base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client,
        }
    }

    /// A client suitable for agents: short connect timeout, no overall timeout (commands can run
    /// long; callers bound them).
    pub fn default_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client")
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }
}

fn transport(e: reqwest::Error) -> AgentCallError {
    if e.is_decode() || e.is_body() {
        AgentCallError::Protocol(e.to_string())
    } else {
        AgentCallError::Unreachable(e.to_string())
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, AgentCallError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(AgentCallError::Unauthorized);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<warmpool_types::agent::AgentError>(&body)
        .map(|e| e.error)
        .unwrap_or(body);
    Err(AgentCallError::Status {
        status: status.as_u16(),
        message,
    })
}

#[async_trait]
impl Agent for HttpAgent {
    async fn health(&self) -> Result<AgentHealth, AgentCallError> {
        let resp = self
            .req(reqwest::Method::GET, "/v1/health")
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(transport)?;
        check(resp).await?.json().await.map_err(transport)
    }

    async fn exec_stream(
        &self,
        mut req: AgentExecRequest,
        on_event: &mut (dyn FnMut(AgentExecEvent) + Send),
    ) -> Result<(), AgentCallError> {
        req.stream = true;
        let resp = self
            .req(reqwest::Method::POST, "/v1/exec")
            .json(&req)
            .send()
            .await
            .map_err(transport)?;
        let mut stream = check(resp).await?.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut finished = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| AgentCallError::Unreachable(e.to_string()))?;
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let ev: AgentExecEvent = serde_json::from_slice(&line[..line.len() - 1])
                    .map_err(|e| AgentCallError::Protocol(e.to_string()))?;
                finished |= matches!(
                    ev,
                    AgentExecEvent::Exit { .. } | AgentExecEvent::SpawnError { .. }
                );
                on_event(ev);
            }
        }
        if finished {
            Ok(())
        } else {
            Err(AgentCallError::Unreachable(
                "the agent closed the stream before the command ended".into(),
            ))
        }
    }

    async fn exec(&self, req: AgentExecRequest) -> Result<AgentExecResult, AgentCallError> {
        let resp = self
            .req(reqwest::Method::POST, "/v1/exec")
            .json(&req)
            .send()
            .await
            .map_err(transport)?;
        check(resp).await?.json().await.map_err(transport)
    }

    async fn write_file(&self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), AgentCallError> {
        let resp = self
            .req(reqwest::Method::PUT, "/v1/files")
            .query(&[("path", path), ("mode", &format!("{mode:o}"))])
            .body(data)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(transport)?;
        check(resp).await.map(|_| ())
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AgentCallError> {
        let resp = self
            .req(reqwest::Method::GET, "/v1/files")
            .query(&[("path", path)])
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(transport)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = check(resp).await?.bytes().await.map_err(transport)?;
        Ok(Some(bytes.to_vec()))
    }

    async fn set_identity(&self, identity: &IdentityRequest) -> Result<(), AgentCallError> {
        let resp = self
            .req(reqwest::Method::POST, "/v1/identity")
            .json(identity)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(transport)?;
        check(resp).await.map(|_| ())
    }

    async fn background(&self, settle: Duration) -> Result<Vec<AgentBackground>, AgentCallError> {
        let resp = self
            .req(reqwest::Method::GET, "/v1/background")
            .query(&[("settleMs", settle.as_millis() as u64)])
            .timeout(settle + Duration::from_secs(10))
            .send()
            .await
            .map_err(transport)?;
        check(resp)
            .await?
            .json()
            .await
            .map_err(|e| AgentCallError::Protocol(e.to_string()))
    }
}
