//! HTTP framing through the tool proxy, both ways (request smuggling and response
//! splitting): a hostile tool answering with ambiguous or malformed framing gets a 502 and
//! never poisons the next answer on a pooled connection; a client sending ambiguous framing
//! gets a 4xx (never a 5xx) and the tool only ever sees well-framed requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::runtime::{get, run, workspace};
use common::TestNode;

/// A tool that answers each path with crafted bytes, keeps connections alive, and logs the
/// request line of every request it reads to `requests.log`.
const HOSTILE: &str = r#"import os, socket, threading, time
ANSWERS = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/plus-cl": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "/list-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    "/big-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    "/signed-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    "/extra": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
}
LATE = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
log = open("requests.log", "a", buffering=1)

def serve(conn):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, path = lines[0].split(b" ")[:2]
        log.write(lines[0].decode("latin-1") + "\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if b"content-length" in headers:
            want = int(headers[b"content-length"])
            while len(data) < want:
                data += conn.recv(65536)
            body, data = data[:want], data[want:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            while True:
                while b"\r\n" not in data:
                    data += conn.recv(65536)
                line, data = data.split(b"\r\n", 1)
                size = int(line, 16)
                while len(data) < size + 2:
                    data += conn.recv(65536)
                body, data = body + data[:size], data[size + 2:]
                if size == 0:
                    break
        # The proxy keeps its prefix (/w/<workspace>/<tool>/...): the last part names the case.
        path = "/" + path.decode().rsplit("/", 1)[-1]
        if path == "/echo":
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        elif path == "/late":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            time.sleep(0.2)
            answer = LATE
        else:
            answer = ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        conn.sendall(answer)
        if path == "/late":
            log.write("late answer sent\n")
        if headers.get(b"connection", b"").lower() == b"close":
            conn.close()
            return

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(os.environ["PORT"])))
listener.listen(64)
print("hostile tool listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Sends raw bytes to the node's plain listener and returns the status of the first answer
/// (0 when none came).
/// Writes `bytes` to the node on a fresh connection and reads until `answers` answer heads
/// came back (or the node closes); the first answer's status, 0 when there was none.
fn raw(node: &TestNode, bytes: &[u8], answers: usize) -> u16 {
    let address = node.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let mut piece = [0u8; 4096];
    while let Ok(n) = stream.read(&mut piece) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&piece[..n]);
        let text = String::from_utf8_lossy(&answer);
        let heads = text.matches("HTTP/1.1 ").count();
        let last_complete = text
            .rfind("HTTP/1.1 ")
            .is_some_and(|at| text[at..].contains("\r\n\r\n"));
        if heads >= answers && last_complete {
            break;
        }
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn framing_is_unambiguous_both_ways_through_the_proxy() {
    let node = TestNode::spawn();
    let spec = "schema_version: 1
runtime: process
tools:
  - {name: app, kind: http, command: [python3, hostile.py]}
";
    let root = workspace(&node, "fr", &[("hostile.py", HOSTILE)], "web", spec).await;
    eprintln!("starting the hostile tool");
    let statuses = run(&node.admin(), "fr").await;
    assert_eq!(statuses[0].state, "running", "{:#?}", statuses[0]);
    let token = format!("Bearer {}", node.token());
    let url = |path: &str| format!("{}/w/fr/app{path}", node.url);

    // The tool's side: each malformed framing is refused, and the next answer on the same
    // worker's pooled connections is the right one.
    for path in [
        "/cl-te", "/dup-cl", "/plus-cl", "/list-cl", "/te-gzip", "/bare-lf",
    ] {
        eprintln!("asking {path}");
        let (code, body) = get(&url(path), Some(&token)).await;
        assert_eq!(code, 502, "{path}: {body}");
        assert!(body.contains("tool-unreachable"), "{path}: {body}");
        let (code, body) = get(&url("/ok"), Some(&token)).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "after {path}");
    }
    // A malformed chunk size comes after the head was relayed: the answer breaks off.
    for path in ["/big-chunk", "/signed-chunk"] {
        let client = awc::Client::default();
        let response = client
            .get(url(path))
            .insert_header(("Authorization", token.as_str()))
            .send()
            .await;
        if let Ok(mut response) = response {
            assert!(response.body().await.is_err(), "{path} was relayed whole");
        }
        let (code, body) = get(&url("/ok"), Some(&token)).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "after {path}");
    }
    // A second answer behind the first, at once or a moment later, never reaches anyone.
    for path in ["/extra", "/late"] {
        eprintln!("asking {path}");
        let (code, body) = get(&url(path), Some(&token)).await;
        assert_eq!(code, 200, "{path}");
        assert!(body == "hello" || body == "late", "{path}: {body}");
        if path == "/late" {
            // The next request goes out only once the late answer is on its way.
            let log = std::path::Path::new(&root).join("requests.log");
            common::eventually("the tool sent its late answer", || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(log).is_ok_and(|l| l.contains("late answer sent"))
                }
            })
            .await;
        }
        for _ in 0..4 {
            let (code, body) = get(&url("/ok"), Some(&token)).await;
            assert_eq!((code, body.as_str()), (200, "ok"), "after {path}");
        }
    }

    // The client's side: ambiguous requests are refused by the node (4xx, never 5xx); what
    // reaches the tool is one well-framed request each, never the smuggled one.
    let host = node.url.trim_start_matches("http://").to_string();
    let auth = format!("Authorization: {token}\r\n");
    let smuggled = format!("GET /w/fr/app/smuggled HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n");
    let cases = [
        format!(
            "POST /w/fr/app/echo HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /w/fr/app/echo HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 4\r\nContent-Length: 60\r\n\r\nabcd{smuggled}"
        ),
        format!(
            "POST /w/fr/app/echo HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: +4\r\n\r\nabcd{smuggled}"
        ),
        format!(
            "POST /w/fr/app/echo HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n10000000000000004\r\nabcd\r\n0\r\n\r\n{smuggled}"
        ),
        // Bare LF line ends are allowed in a request (RFC 9112, 2.2) and read the same by
        // the node as by anyone; the request after it is a pipelined one, re-framed.
        format!(
            "POST /w/fr/app/echo HTTP/1.1\nHost: {host}\n{}Content-Length: 4\n\nabcd{}",
            auth.replace("\r\n", "\n"),
            smuggled.replace("smuggled", "pipelined")
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        // The last case's pipelined request is answered too before the tool's log is read:
        // it reaches the tool only after the first answer went out.
        let answers = if i == cases.len() - 1 { 2 } else { 1 };
        let status = raw(&node, case.as_bytes(), answers);
        eprintln!("client case {i}: {status}");
        // A body whose framing breaks mid-way may also end the connection without an
        // answer (0): the client's request is unreadable from there on.
        assert!(
            (200..500).contains(&status) || status == 0 && i == 3,
            "case {i}: status {status} for {case:?}"
        );
    }
    let log = std::fs::read_to_string(std::path::Path::new(&root).join("requests.log")).unwrap();
    assert!(
        !log.contains("smuggled"),
        "a smuggled request reached the tool:\n{log}"
    );
    // What the tool saw of the client cases: at most the head of case 3's POST, whose
    // chunked body broke off (depending on when the node read the bad size), then case 4's
    // POST and its pipelined GET; cases 0 to 2 never reached it.
    let mut seen: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/echo") || l.contains("/pipelined"))
        .collect();
    if seen.len() == 3 {
        assert_eq!(seen.remove(0), "POST /w/fr/app/echo HTTP/1.1", "{log}");
    }
    assert_eq!(
        seen,
        [
            "POST /w/fr/app/echo HTTP/1.1",
            "GET /w/fr/app/pipelined HTTP/1.1"
        ],
        "{log}"
    );
}
