//! A small client of slurmrestd's REST API (plugin `openapi/v0.0.38`, Slurm 22.05 and later)
//! over its Unix socket (`rest_auth/local`: the job runs as the user slurmrestd authenticates)
//! or TCP with a JWT (`X-SLURM-USER-NAME`, `X-SLURM-USER-TOKEN`). One HTTP/1.1 request per
//! connection; answers are bounded in size and time, and Slurm's own error texts are returned.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime_supervisor::RuntimeError;

/// API version prefix.
pub const API: &str = "/slurm/v0.0.38";
/// Largest answer read (a job listing of a busy cluster stays far below).
const MAX_ANSWER: usize = 16 << 20;
/// Longest wait for one answer.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Where slurmrestd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:/run/slurmrestd.sock`.
    Unix(PathBuf),
    /// `http://host:port`.
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:PATH`, `http://HOST:PORT` (or a bare absolute socket path).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if !authority.is_empty() && !authority.contains('/') && authority.contains(':') {
                return Ok(Endpoint::Tcp(authority.to_string()));
            }
        }
        Err(format!(
            "`{text}` is not `unix:/path/to/slurmrestd.sock` or `http://host:port`"
        ))
    }
}

/// A slurmrestd client.
#[derive(Debug, Clone)]
pub struct SlurmRest {
    endpoint: Endpoint,
    /// `(user, token)` sent as `X-SLURM-USER-NAME` / `X-SLURM-USER-TOKEN`.
    jwt: Option<(String, String)>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

impl SlurmRest {
    /// A client of `endpoint`, authenticating with `jwt` when given.
    pub fn new(endpoint: Endpoint, jwt: Option<(String, String)>) -> SlurmRest {
        SlurmRest { endpoint, jwt }
    }

    /// `GET`s `path` below [`API`].
    pub async fn get(&self, path: &str) -> Result<Value, RuntimeError> {
        self.request("GET", path, None).await
    }

    /// `POST`s `body` to `path` below [`API`].
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, RuntimeError> {
        self.request("POST", path, Some(body)).await
    }

    /// `DELETE`s `path` below [`API`].
    pub async fn delete(&self, path: &str) -> Result<Value, RuntimeError> {
        self.request("DELETE", path, None).await
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, RuntimeError> {
        let unavailable = |e: std::io::Error| {
            RuntimeError::BackendUnavailable {
            backend: "slurm",
            reason: format!(
                "cannot reach slurmrestd at {:?}: {e} (start slurmrestd, and set runtime.slurm.url)",
                self.endpoint
            ),
        }
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unavailable)?,
            ),
            Endpoint::Tcp(authority) => Box::new(
                tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(unavailable)?,
            ),
        })
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RuntimeError> {
        let exchange = async {
            let mut stream = self.connect().await?;
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let host = match &self.endpoint {
                Endpoint::Unix(_) => "localhost",
                Endpoint::Tcp(authority) => authority.as_str(),
            };
            let mut head = format!(
                "{method} {API}{path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            if !body.is_empty() {
                head.push_str("Content-Type: application/json\r\n");
            }
            if let Some((user, token)) = &self.jwt {
                head.push_str(&format!(
                    "X-SLURM-USER-NAME: {user}\r\nX-SLURM-USER-TOKEN: {token}\r\n"
                ));
            }
            head.push_str("\r\n");
            let io = |e: std::io::Error| RuntimeError::Slurm(format!("{method} {path}: {e}"));
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(body.as_bytes()).await.map_err(io)?;
            let mut answer = Vec::new();
            (&mut stream)
                .take(MAX_ANSWER as u64 + 1)
                .read_to_end(&mut answer)
                .await
                .map_err(io)?;
            if answer.len() > MAX_ANSWER {
                return Err(RuntimeError::Slurm(format!(
                    "{method} {path}: answer larger than {MAX_ANSWER} bytes"
                )));
            }
            parse_answer(&answer).map_err(|e| RuntimeError::Slurm(format!("{method} {path}: {e}")))
        };
        let (status, value) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| {
                RuntimeError::Slurm(format!(
                    "{method} {path}: no answer from slurmrestd within {} s",
                    TIMEOUT.as_secs()
                ))
            })??;
        if status == 401 || status == 403 {
            let detail = slurm_errors(&value)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Err(RuntimeError::Slurm(format!(
                "slurmrestd refused this node's credentials (HTTP {status}{detail}); check runtime.slurm.user and runtime.slurm.token_file (`scontrol token username=USER`), or slurmrestd's user for a Unix socket"
            )));
        }
        if let Some(message) = slurm_errors(&value) {
            // slurmrestd 22.05 answers a token slurmctld refuses with a bare 500.
            let hint = if self.jwt.is_some() && message == "Unspecified error" {
                "; with a JWT this is how slurmrestd reports a token slurmctld refused: check runtime.slurm.user and runtime.slurm.token_file (`scontrol token username=USER`)"
            } else {
                ""
            };
            return Err(RuntimeError::Slurm(format!(
                "{method} {path}: {message} (HTTP {status}{hint})"
            )));
        }
        if !(200..300).contains(&status) {
            return Err(RuntimeError::Slurm(format!(
                "{method} {path}: HTTP {status}"
            )));
        }
        Ok(value)
    }
}

/// Slurm's own error texts in an answer (`errors: [{error, description}]`), if any.
pub fn slurm_errors(value: &Value) -> Option<String> {
    let errors = value.get("errors")?.as_array()?;
    let texts: Vec<String> = errors
        .iter()
        .map(|e| {
            let text = |key| e.get(key).and_then(Value::as_str).unwrap_or("");
            match (text("error"), text("description")) {
                ("", description) => description.to_string(),
                (error, "") => error.to_string(),
                (error, description) => format!("{error}: {description}"),
            }
        })
        .filter(|t| !t.is_empty())
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

/// Status and JSON body of an HTTP/1.1 answer (`Content-Length`, chunked, or until close).
fn parse_answer(bytes: &[u8]) -> Result<(u16, Value), String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("answer without a complete header")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("answer without a status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let raw = &bytes[end + 4..];
    let body = if chunked {
        dechunk(raw)?
    } else {
        match length {
            Some(length) if length <= raw.len() => raw[..length].to_vec(),
            Some(_) => return Err("answer shorter than its Content-Length".into()),
            None => raw.to_vec(),
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, Value::Null));
    }
    let value = serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    Ok((status, value))
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("unix:/run/s.sock").unwrap(),
            Endpoint::Unix("/run/s.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://ctl:6820").unwrap(),
            Endpoint::Tcp("ctl:6820".into())
        );
        for bad in [
            "ctl:6820",
            "https://ctl:6820",
            "http://ctl",
            "http://ctl:1/x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\nextra";
        assert_eq!(parse_answer(plain).unwrap().1["a"], 1);
        let chunked = b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n: 2\r\n1\r\n}\r\n0\r\n\r\n";
        let (status, value) = parse_answer(chunked).unwrap();
        assert_eq!((status, value["a"].as_i64()), (500, Some(2)));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}").is_err());
        assert!(parse_answer(b"garbage").is_err());
        let errors = serde_json::json!({"errors": [{"error": "Invalid job id specified", "description": "Unable to find JobId=9"}]});
        assert_eq!(
            slurm_errors(&errors).unwrap(),
            "Invalid job id specified: Unable to find JobId=9"
        );
        assert!(slurm_errors(&serde_json::json!({"errors": []})).is_none());
    }
}
