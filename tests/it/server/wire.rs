//! The wire side of the test server: read request heads, pick the reply
//! (faults first, then the object with `Range` / `If-Range`), and send it
//! the way the fault says: whole, cut short, reset, stalled or dripped.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Fault, Object, Request, Shared};

/// The parts of a request head the server acts on.
struct Head {
    method: String,
    target: String,
    range: Option<String>,
    if_range: Option<String>,
    close: bool,
}

pub(super) async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut buffer = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buffer).await {
        let keep_alive = respond(&shared, &mut stream, head).await;
        if !keep_alive {
            return;
        }
    }
}

/// Read one request head (and discard any body); `None` when the connection
/// ends or speaks nonsense.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Head> {
    let end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
    buffer.drain(..end);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let mut head = Head {
        method,
        target,
        range: None,
        if_range: None,
        close: false,
    };
    let mut body_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => head.range = Some(value),
            "if-range" => head.if_range = Some(value),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            "content-length" => body_length = value.parse().ok()?,
            _ => {}
        }
    }
    while buffer.len() < body_length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    buffer.drain(..body_length);
    Some(head)
}

/// What to send: status, extra headers, body, and how the body is delivered.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// `Content-Length` to announce; `body.len()` unless a fault lies.
    announced: usize,
}

impl Reply {
    fn text(status: u16, text: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "text/plain".to_string())],
            body: text.as_bytes().to_vec(),
            announced: text.len(),
        }
    }

    fn redirect(location: String) -> Reply {
        let mut reply = Reply::text(302, "redirect\n");
        reply.headers.push(("Location", location));
        reply
    }
}

/// Counts a request as being answered while it lives.
struct Active<'a>(&'a Shared);

impl<'a> Active<'a> {
    fn new(shared: &'a Shared) -> Active<'a> {
        let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_active.fetch_max(now, Ordering::SeqCst);
        Active(shared)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The path of a request target, also of the absolute form a client
/// sends to a proxy (`http://host:port/path`), which the proxy of the
/// tests passes on as it is.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target.split_once("://").map(|(_, rest)| rest) else {
        return target;
    };
    rest.find('/').map_or("/", |slash| &rest[slash..])
}

/// Answer one request; returns whether the connection may be reused.
async fn respond(shared: &Shared, stream: &mut TcpStream, head: Head) -> bool {
    let _active = Active::new(shared);
    let origin = origin_form(&head.target);
    let raw_path = origin.split('?').next().unwrap_or("").to_string();
    let path = percent_encoding::percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let (fault, mut object, index) = {
        let mut state = shared.lock();
        let fault = state.take_fault(&path);
        if fault == Some(Fault::ChangeEtag)
            && let Some(object) = state.objects.get_mut(&path)
        {
            object.generation += 1;
        }
        let object = state.objects.get(&path).cloned();
        state.requests.push(Request {
            method: head.method.clone(),
            target: head.target.clone(),
            path: path.clone(),
            range: head.range.clone(),
            if_range: head.if_range.clone(),
            fault: fault.clone(),
            status: 0,
            body_bytes: 0,
            arrived: std::time::SystemTime::now(),
        });
        (fault, object, state.requests.len() - 1)
    };
    wait_while_held(shared, &path).await;
    // A stale copy is served the way its inner fault says.
    let fault = match fault {
        Some(Fault::Stale(inner)) => {
            object = object.as_ref().map(Object::stale);
            Some(*inner)
        }
        fault => fault,
    };
    let reply = build_reply(shared, &head, &raw_path, fault.as_ref(), object);
    shared.lock().requests[index].status = reply.status;
    let head_only = head.method == "HEAD";
    if write_head(stream, &reply, fault.as_ref()).await.is_err() {
        return false;
    }
    let body: &[u8] = if head_only { &[] } else { &reply.body };
    let keep_alive = match fault {
        Some(Fault::Truncate { after }) => {
            let _ = send(shared, index, stream, &body[..after.min(body.len())]).await;
            let _ = stream.shutdown().await;
            false
        }
        Some(Fault::Reset { after }) => {
            let _ = send(shared, index, stream, &body[..after.min(body.len())]).await;
            // Give the client a moment to read what was sent before the RST.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = stream.set_zero_linger();
            false
        }
        Some(Fault::Stall { after }) => {
            let _ = send(shared, index, stream, &body[..after.min(body.len())]).await;
            wait_for_close(stream).await;
            false
        }
        Some(Fault::SlowDrip {
            bytes_per_tick,
            tick,
        }) => drip(shared, index, stream, body, bytes_per_tick.max(1), tick).await,
        Some(Fault::Chunked) => send_chunked(shared, index, stream, body).await.is_ok(),
        Some(Fault::UntilClose) => {
            let _ = send(shared, index, stream, body).await;
            let _ = stream.shutdown().await;
            false
        }
        Some(Fault::LongerThanAnnounced) => {
            let _ = send(shared, index, stream, body).await;
            let _ = stream.shutdown().await;
            false
        }
        _ => send(shared, index, stream, body).await.is_ok(),
    };
    keep_alive && !head.close
}

/// Wait until `path` is not held (see `Server::hold`).
async fn wait_while_held(shared: &Shared, path: &str) {
    loop {
        // Registered before the check, so a release in between is not missed.
        let released = shared.released.notified();
        if !shared.lock().held.contains(path) {
            return;
        }
        released.await;
    }
}

fn build_reply(
    shared: &Shared,
    head: &Head,
    raw_path: &str,
    fault: Option<&Fault>,
    object: Option<Object>,
) -> Reply {
    match fault {
        Some(Fault::NotFound) => return Reply::text(404, "not found\n"),
        Some(Fault::Gone) => return Reply::text(410, "gone\n"),
        Some(Fault::Forbidden) => return Reply::text(403, "forbidden\n"),
        Some(Fault::Status(code)) => return Reply::text(*code, "injected status\n"),
        Some(Fault::RetryAfter { status, value }) => {
            let mut reply = Reply::text(*status, "come back later\n");
            reply.headers.push(("Retry-After", value.clone()));
            return reply;
        }
        Some(Fault::Redirect { to }) => {
            return Reply::redirect(format!("http://{}{}", shared.addr, to));
        }
        Some(Fault::RedirectTo(location)) => return Reply::redirect(location.clone()),
        Some(Fault::RedirectLoop) => {
            return Reply::redirect(format!("http://{}{}", shared.addr, raw_path));
        }
        _ => {}
    }
    let Some(object) = object else {
        return Reply::text(404, "not found\n");
    };
    let mut body = object.body.as_slice().to_vec();
    match fault {
        Some(Fault::WrongBytes) => body.iter_mut().for_each(|b| *b ^= 0x5a),
        Some(Fault::WrongLength) => body.extend_from_slice(&[b'x'; 16]),
        _ => {}
    }
    let mut headers = vec![
        ("Content-Type", "application/octet-stream".to_string()),
        ("ETag", object.etag()),
        ("Last-Modified", object.last_modified()),
    ];
    if fault == Some(&Fault::Gzip) {
        headers.push(("Content-Encoding", "gzip".to_string()));
    }
    let ignore_range = fault == Some(&Fault::IgnoreRange);
    if !ignore_range {
        headers.push(("Accept-Ranges", "bytes".to_string()));
    }
    let validator_matches = match &head.if_range {
        None => true,
        Some(v) => *v == object.etag() || *v == object.last_modified(),
    };
    let range = match &head.range {
        Some(spec) if !ignore_range && validator_matches => parse_range(spec, body.len()),
        _ => None,
    };
    let total = body.len();
    let range = match fault {
        Some(Fault::UnaskedRange) if total > 1 => Some(Some((1, total - 1))),
        _ => range,
    };
    if let Some(Fault::ContentRange(value)) = fault {
        let start = match range {
            Some(Some((start, _))) => start,
            _ => 0,
        };
        headers.push(("Content-Range", value.clone()));
        let body = body[start..].to_vec();
        let announced = body.len();
        return Reply {
            status: 206,
            headers,
            body,
            announced,
        };
    }
    if fault == Some(&Fault::RangeNotSatisfiable) {
        headers.push(("Content-Range", format!("bytes */{total}")));
        return Reply {
            status: 416,
            headers,
            body: Vec::new(),
            announced: 0,
        };
    }
    let (status, body) = match range {
        None => (200, body),
        Some(None) => {
            headers.push(("Content-Range", format!("bytes */{total}")));
            (416, Vec::new())
        }
        Some(Some((start, end))) => {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
            (206, body[start..=end].to_vec())
        }
    };
    let announced = body.len();
    let mut body = body;
    if fault == Some(&Fault::LongerThanAnnounced) {
        body.extend_from_slice(&[b'!'; 64]);
    }
    Reply {
        status,
        headers,
        body,
        announced,
    }
}

/// `Some(Some((first, last)))` for a satisfiable single range, `Some(None)`
/// for an unsatisfiable one, `None` for a header to ignore.
fn parse_range(spec: &str, total: usize) -> Option<Option<(usize, usize)>> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let n: usize = last.parse().ok()?;
        if n == 0 || total == 0 {
            return Some(None);
        }
        return Some(Some((total - n.min(total), total - 1)));
    }
    let first: usize = first.parse().ok()?;
    let last = if last.is_empty() {
        usize::MAX
    } else {
        last.parse().ok()?
    };
    if last < first {
        return None;
    }
    if first >= total {
        return Some(None);
    }
    Some(Some((first, last.min(total - 1))))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

async fn write_head(
    stream: &mut TcpStream,
    reply: &Reply,
    fault: Option<&Fault>,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        reply.status,
        reason_phrase(reply.status)
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match fault {
        Some(Fault::Chunked) => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
        Some(Fault::UntilClose) => head.push_str("Connection: close\r\n\r\n"),
        _ => head.push_str(&format!("Content-Length: {}\r\n\r\n", reply.announced)),
    }
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

/// Send `body` with chunked transfer coding, in chunks of up to 1000 bytes.
async fn send_chunked(
    shared: &Shared,
    index: usize,
    stream: &mut TcpStream,
    body: &[u8],
) -> std::io::Result<()> {
    for chunk in body.chunks(1000) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await?;
        stream.write_all(chunk).await?;
        stream.write_all(b"\r\n").await?;
        shared.add_body_bytes(index, chunk.len());
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await
}

/// Write `body` in chunks, recording each chunk once it is written.
async fn send(
    shared: &Shared,
    index: usize,
    stream: &mut TcpStream,
    body: &[u8],
) -> std::io::Result<()> {
    for chunk in body.chunks(16 * 1024) {
        stream.write_all(chunk).await?;
        shared.add_body_bytes(index, chunk.len());
    }
    stream.flush().await
}

async fn drip(
    shared: &Shared,
    index: usize,
    stream: &mut TcpStream,
    body: &[u8],
    bytes_per_tick: usize,
    tick: Duration,
) -> bool {
    let mut chunks = body.chunks(bytes_per_tick).peekable();
    while let Some(chunk) = chunks.next() {
        if send(shared, index, stream, chunk).await.is_err() {
            return false;
        }
        if chunks.peek().is_some() {
            tokio::time::sleep(tick).await;
        }
    }
    true
}

/// Hold the connection open until the peer closes it (or the runtime ends).
async fn wait_for_close(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}
