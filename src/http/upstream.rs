//! The tool proxy's HTTP/1.1 client for plain requests: pooled keep-alive connections to
//! tools on loopback, and bodies relayed in large reads (256 KiB) handed on without copying.
//! awc reads in 8 KiB pieces, which capped a proxied download at a third of what the tool
//! sent; WebSocket upgrades still go through awc.
//!
//! The tool's answer is parsed strictly, because the tool runs a workspace's code: a head
//! with a bare LF, two Content-Lengths, a length that is not plain digits, Transfer-Encoding
//! with Content-Length or not ending in one `chunked`, or a malformed chunk-size line is
//! refused (502), and a connection on which the tool sent anything after its answer is
//! never reused. The node writes its own framing towards the client either way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted from a tool.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes asked of the socket per read of a body.
const READ_SIZE: usize = 1024 * 1024;
/// Idle connections kept per tool per worker.
const POOL_PER_TOOL: usize = 16;
/// How long a tool may take to send its response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(300);

thread_local! {
    static POOL: RefCell<HashMap<SocketAddr, Vec<TcpStream>>> = RefCell::new(HashMap::new());
}

/// How a request body is sent.
pub enum RequestBody<S> {
    /// No body.
    Empty,
    /// Exactly this many bytes from the stream.
    Sized(u64, S),
    /// Unknown length: sent chunked.
    Chunked(S),
}

/// The tool's answer: status, headers, and the body as a stream.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Body length, when the tool said.
    pub length: Option<u64>,
    pub body: futures_util::stream::LocalBoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// The client's request body could not be read (malformed framing, cut short): the
/// client's fault, answered 400, not the tool's.
fn client_body(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("the request body: {error}"),
    )
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Sends one request to the tool at `addr` and reads the response head.
pub async fn send<S, E>(
    addr: SocketAddr,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: RequestBody<S>,
) -> std::io::Result<Response>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut head = format!("{method} {path_and_query} HTTP/1.1\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match &body {
        RequestBody::Empty => {}
        RequestBody::Sized(length, _) => {
            head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes())
        }
        RequestBody::Chunked(_) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");

    // A pooled connection may have been closed by the tool meanwhile: a request without a
    // body is sent again on a fresh one when the old one fails before any answer.
    let pooled = matches!(body, RequestBody::Empty)
        .then(|| POOL.with(|pool| pool.borrow_mut().get_mut(&addr).and_then(Vec::pop)))
        .flatten()
        .filter(idle_and_silent);
    let mut body = body;
    if let Some(mut stream) = pooled {
        if stream.write_all(&head).await.is_ok() {
            if let Ok(Some(response)) = read_head(stream, method, addr).await {
                return Ok(response);
            }
        }
    }
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&head).await?;
    match &mut body {
        RequestBody::Empty => {}
        RequestBody::Sized(length, source) => {
            let mut left = *length;
            while let Some(chunk) = source.next().await {
                let chunk = chunk.map_err(client_body)?;
                let take = (chunk.len() as u64).min(left) as usize;
                stream.write_all(&chunk[..take]).await?;
                left -= take as u64;
            }
            if left > 0 {
                return Err(client_body("it ended early"));
            }
        }
        RequestBody::Chunked(source) => {
            while let Some(chunk) = source.next().await {
                let chunk = chunk.map_err(client_body)?;
                if chunk.is_empty() {
                    continue;
                }
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(&chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    read_head(stream, method, addr)
        .await?
        .ok_or_else(|| invalid("the tool closed the connection without answering"))
}

/// Reads the response head; `Ok(None)` when the connection closed before a byte came.
async fn read_head(
    mut stream: TcpStream,
    method: &Method,
    addr: SocketAddr,
) -> std::io::Result<Option<Response>> {
    let mut buffer = BytesMut::with_capacity(16 * 1024);
    loop {
        let read = tokio::time::timeout(HEAD_TIMEOUT, stream.read_buf(&mut buffer))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the tool sent no answer")
            })??;
        if read == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(invalid("the tool closed the connection mid-answer"))
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        let used = match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(invalid("the tool's response head is too large"))
            }
            Err(error) => return Err(invalid(format!("the tool's answer is not HTTP: {error}"))),
        };
        let code = parsed.code.unwrap_or(502);
        // Interim answers (100 Continue) are not relayed.
        if (100..200).contains(&code) && code != 101 {
            buffer.advance(used);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| invalid(format!("status {code}")))?;
        // Lines end in CRLF only: a bare LF is read differently by different parsers.
        if buffer[..used]
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b'\n' && (i == 0 || buffer[i - 1] != b'\r'))
        {
            return Err(invalid(
                "the tool's response head has a line ending in a bare LF",
            ));
        }
        let keep_alive_version = parsed.version == Some(1);
        let mut map = HeaderMap::new();
        let mut length = None;
        let mut codings: Vec<String> = Vec::new();
        let mut close = !keep_alive_version;
        for header in parsed.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|e| invalid(e.to_string()))?;
            let value =
                HeaderValue::from_bytes(header.value).map_err(|e| invalid(e.to_string()))?;
            match name.as_str() {
                "content-length" => {
                    if length.is_some() {
                        return Err(invalid("the tool sent Content-Length twice"));
                    }
                    length = Some(content_length(header.value).ok_or_else(|| {
                        invalid(format!(
                            "the tool's Content-Length `{}` is not a length",
                            String::from_utf8_lossy(header.value)
                        ))
                    })?);
                }
                "transfer-encoding" => {
                    codings.extend(
                        String::from_utf8_lossy(header.value)
                            .split(',')
                            .map(|c| c.trim().to_ascii_lowercase())
                            .filter(|c| !c.is_empty()),
                    );
                }
                "connection" => {
                    let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
                    if value.contains("close") {
                        close = true;
                    }
                }
                _ => {}
            }
            map.append(name, value);
        }
        // One framing, unambiguous (RFC 9112, 6.3): a response that could be cut two ways
        // is refused rather than guessed at.
        let chunked = !codings.is_empty();
        if chunked {
            if length.is_some() {
                return Err(invalid(
                    "the tool sent both Transfer-Encoding and Content-Length",
                ));
            }
            if codings.last().map(String::as_str) != Some("chunked")
                || codings.iter().filter(|c| *c == "chunked").count() > 1
            {
                return Err(invalid(format!(
                    "the tool's Transfer-Encoding `{}` does not end in one chunked",
                    codings.join(", ")
                )));
            }
        }
        buffer.advance(used);
        let bodiless = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            Framing::Sized(0)
        } else if chunked {
            length = None;
            Framing::Chunked(ChunkState::Size)
        } else if let Some(length) = length {
            Framing::Sized(length)
        } else {
            close = true;
            Framing::UntilClose
        };
        let reader = BodyReader {
            stream: Some(stream),
            buffer,
            framing,
            reusable: !close,
            addr,
        };
        return Ok(Some(Response {
            status,
            headers: map,
            length: if bodiless { None } else { length },
            body: futures_util::stream::unfold(reader, |mut reader| async move {
                match reader.next().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), reader)),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), reader.failed())),
                }
            })
            .boxed_local(),
        }));
    }
}

enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

enum Framing {
    Sized(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

struct BodyReader {
    stream: Option<TcpStream>,
    buffer: BytesMut,
    framing: Framing,
    reusable: bool,
    addr: SocketAddr,
}

impl BodyReader {
    fn failed(mut self) -> BodyReader {
        self.stream = None;
        self.framing = Framing::Done;
        self
    }

    /// The body is complete: the connection goes back to the pool when it can.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(stream) = self.stream.take() {
            if self.reusable && self.buffer.is_empty() {
                let addr = self.addr;
                POOL.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    let idle = pool.entry(addr).or_default();
                    if idle.len() < POOL_PER_TOOL {
                        idle.push(stream);
                    }
                });
            }
        }
    }

    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(None),
                Framing::Sized(0) => {
                    self.finish();
                    return Ok(None);
                }
                Framing::Sized(left) => {
                    if self.buffer.is_empty() && !fill(&mut self.stream, &mut self.buffer).await? {
                        return Err(invalid("the tool closed the connection mid-body"));
                    }
                    let take = (self.buffer.len() as u64).min(*left) as usize;
                    *left -= take as u64;
                    return Ok(Some(self.buffer.split_to(take).freeze()));
                }
                Framing::UntilClose => {
                    if self.buffer.is_empty() && !fill(&mut self.stream, &mut self.buffer).await? {
                        self.finish();
                        return Ok(None);
                    }
                    return Ok(Some(self.buffer.split().freeze()));
                }
                Framing::Chunked(state) => match state {
                    ChunkState::Size => match find_line(&self.buffer) {
                        Some(end) => {
                            let size = chunk_size(&self.buffer[..end]).ok_or_else(|| {
                                invalid(format!(
                                    "bad chunk size line `{}`",
                                    String::from_utf8_lossy(&self.buffer[..end.min(40)])
                                ))
                            })?;
                            self.buffer.advance(end + 2);
                            *state = if size == 0 {
                                ChunkState::Trailers
                            } else {
                                ChunkState::Data(size)
                            };
                        }
                        None if self.buffer.len() > 1024 => {
                            return Err(invalid("bad chunk size line"))
                        }
                        None => {
                            if !fill(&mut self.stream, &mut self.buffer).await? {
                                return Err(invalid("the tool closed the connection mid-body"));
                            }
                        }
                    },
                    ChunkState::Data(left) => {
                        if self.buffer.is_empty()
                            && !fill(&mut self.stream, &mut self.buffer).await?
                        {
                            return Err(invalid("the tool closed the connection mid-body"));
                        }
                        let take = (self.buffer.len() as u64).min(*left) as usize;
                        *left -= take as u64;
                        if *left == 0 {
                            *state = ChunkState::DataEnd;
                        }
                        return Ok(Some(self.buffer.split_to(take).freeze()));
                    }
                    ChunkState::DataEnd => {
                        if self.buffer.len() < 2 {
                            if !fill(&mut self.stream, &mut self.buffer).await? {
                                return Err(invalid("the tool closed the connection mid-body"));
                            }
                            continue;
                        }
                        if &self.buffer[..2] != b"\r\n" {
                            return Err(invalid("bad chunk end"));
                        }
                        self.buffer.advance(2);
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => match find_line(&self.buffer) {
                        Some(0) => {
                            self.buffer.advance(2);
                            self.finish();
                            return Ok(None);
                        }
                        Some(end) => self.buffer.advance(end + 2),
                        None if self.buffer.len() > MAX_HEAD => {
                            return Err(invalid("trailers too large"))
                        }
                        None => {
                            if !fill(&mut self.stream, &mut self.buffer).await? {
                                return Err(invalid("the tool closed the connection mid-body"));
                            }
                        }
                    },
                },
            }
        }
    }
}

/// Reads more from the socket into the buffer; false at end of stream.
async fn fill(stream: &mut Option<TcpStream>, buffer: &mut BytesMut) -> std::io::Result<bool> {
    let Some(stream) = stream.as_mut() else {
        return Ok(false);
    };
    buffer.reserve(READ_SIZE);
    Ok(stream.read_buf(buffer).await? > 0)
}

/// A Content-Length value: decimal digits only (no sign, no list), optional spaces around.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A chunk-size line (without its CRLF): 1 to 16 hex digits, then nothing or optional
/// whitespace and `;` extensions; no CR or LF inside.
fn chunk_size(line: &[u8]) -> Option<u64> {
    if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return None;
    }
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// A pooled connection may be reused only when the tool has sent nothing since its last
/// answer ended: bytes waiting there (a second answer smuggled after the first) or a closed
/// connection take it out of the pool.
fn idle_and_silent(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    match stream.try_read(&mut probe) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => true,
        Ok(0) => false,
        Ok(_) => {
            tracing::warn!("a tool sent bytes after its answer; its connection is dropped");
            false
        }
        Err(_) => false,
    }
}

fn find_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_chunk_sizes_are_read_strictly() {
        assert_eq!(content_length(b"5"), Some(5));
        assert_eq!(content_length(b" 42 "), Some(42));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5, 5",
            b"0x5",
            b"",
            b" ",
            b"5 5",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"1A;name=value"), Some(26));
        assert_eq!(chunk_size(b"10 ;ext"), Some(16));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b" 5",
            b"5 5",
            b"0x5",
            b"g",
            b"10000000000000000",
            b"5\nx",
            b"5;a\rb",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
