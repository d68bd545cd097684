//! Health probes: an HTTP request to a tool on loopback. A tool "answers" when it sends
//! any HTTP status below 500 (a login page or a redirect is an answer).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asks `GET path` of the tool at `addr`; `Ok(status)` when it answered below 500.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("no answer on {addr}: {e}"))?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: token {t}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: aienv-health\r\n{auth}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        // Read the whole (bounded) answer: closing with unread bytes would reset the
        // connection and fill the tool's log with errors.
        let mut answer = Vec::with_capacity(1024);
        let mut buffer = [0u8; 8192];
        while answer.len() < 64 * 1024 {
            let n = stream
                .read(&mut buffer)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        let line = String::from_utf8_lossy(&answer[..answer.len().min(64)]).to_string();
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
        if status < 500 {
            Ok(status)
        } else {
            Err(format!("{path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {timeout:?}")))
}
