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
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = String::from_utf8_lossy(&head[..read]).to_string();
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
