//! A small HTTP client for the warmpool API, for the CLI.

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use warmpool_types::api::ErrorResponse;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut http =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        if let Some(path) = ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))?,
            );
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http.build()?,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.call_status(method, path, body).await?.1)
    }

    /// Server-sent events from `path`, as they come.
    pub async fn events(
        &self,
        path: &str,
    ) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<eventsource_stream::Event>>>
    {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the warmpool server at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(match serde_json::from_str::<ErrorResponse>(&text) {
                Ok(e) => anyhow!("{} ({})", e.error.message, e.error.code),
                Err(_) => anyhow!("the server answered {status}: {text}"),
            });
        }
        Ok(resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| anyhow!("the event stream broke: {e}"))))
    }

    /// Like [`Client::call`], also answering the status.
    pub async fn call_status(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the warmpool server at {}: is `warmpool serve` running? ({e})",
                    self.base
                )
            } else {
                anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read the answer")?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || text.is_empty() {
                return Ok((status, Value::Null));
            }
            return Ok((
                status,
                serde_json::from_str(&text).context("the server's answer is not JSON")?,
            ));
        }
        match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(e) => {
                let mut msg = format!("{} ({})", e.error.message, e.error.code);
                if let Some(Value::Array(details)) = e.error.details {
                    for d in details {
                        msg.push_str(&format!(
                            "\n  {}: {}",
                            d.get("field").and_then(Value::as_str).unwrap_or("?"),
                            d.get("message").and_then(Value::as_str).unwrap_or("?")
                        ));
                    }
                }
                bail!("{msg}")
            }
            Err(_) => bail!("the server answered {status}: {text}"),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(serde_json::from_value(
            self.call(Method::GET, path, None).await?,
        )?)
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        Ok(serde_json::from_value(
            self.call(method, path, Some(body)).await?,
        )?)
    }
}
