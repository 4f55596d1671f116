//! A minimal QMP client: JSON commands over QEMU's unix socket, one at a time. Events QEMU sends
//! meanwhile are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "cannot connect to QMP at {}: {e}",
                        socket.display()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
        };
        // Greeting, then capabilities negotiation.
        qmp.read_message(deadline).await?;
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self, deadline: tokio::time::Instant) -> Result<Value, String> {
        let mut line = String::new();
        let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut line))
            .await
            .map_err(|_| "QMP did not answer in time".to_string())?
            .map_err(|e| format!("QMP: {e}"))?;
        if n == 0 {
            return Err("QMP closed the connection (QEMU exited?)".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent something that is not JSON: {e}"))
    }

    /// Runs a command and answers its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = json!({"execute": command});
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|e| format!("QMP: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let reply = self.read_message(deadline).await?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(format!(
                    "QMP {command} failed: {}",
                    e.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                ));
            }
            // An asynchronous event: not our answer.
        }
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, String> {
        let r = self.execute("query-status", json!({})).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    }
}
