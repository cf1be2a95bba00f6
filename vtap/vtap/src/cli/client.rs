//! HTTP client of the vtap REST API: base URL, bearer token, JSON bodies,
//! and the decoding of every kind of answer into either a JSON value or a
//! [`CliError`]. Nothing the server sends can make it panic: non-JSON
//! bodies, empty bodies, huge bodies and malformed HTTP all become errors.

use std::io::Read;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CliError;
use crate::wire::ErrorBody;

/// Largest answer body read (the rest is an error, not a crash).
const MAX_BODY: u64 = 64 << 20;
/// Characters of a non-JSON body quoted in an error.
const SNIPPET: usize = 300;

/// A client of one daemon.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`Null` when the body was empty).
    pub body: serde_json::Value,
    /// `METHOD URL`, for messages.
    pub request: String,
}

impl Reply {
    /// The body as `T`; a body of another shape is a [`CliError::BadAnswer`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, CliError> {
        serde_json::from_value(self.body.clone()).map_err(|e| CliError::BadAnswer {
            request: self.request.clone(),
            reason: format!(
                "HTTP {}, body is not the expected object ({e}): {}",
                self.status,
                snippet(&self.body.to_string())
            ),
        })
    }
}

/// Checks and normalises `--api`: `http://HOST[:PORT][/PREFIX]`, without a
/// trailing slash.
pub fn normalize_base(api: &str) -> Result<String, CliError> {
    let api = api.trim();
    let rest = if let Some(r) = api.strip_prefix("http://") {
        r
    } else if api.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "--api {api}: https is not supported by this client (the API listens on loopback; use http://)"
        )));
    } else {
        return Err(CliError::Usage(format!(
            "--api {api:?}: expected a URL like {}",
            super::DEFAULT_API
        )));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(CliError::Usage(format!(
            "--api {api:?}: expected a URL like {}",
            super::DEFAULT_API
        )));
    }
    Ok(api.trim_end_matches('/').to_owned())
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved
/// characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `If-Match` value for an etag given with or without quotes.
pub fn quote_etag(etag: &str) -> String {
    let e = etag.trim();
    if e.starts_with('"') || e.starts_with("W/\"") || e == "*" {
        e.to_owned()
    } else {
        format!("\"{e}\"")
    }
}

/// The first characters of `s`, on one line.
pub fn snippet(s: &str) -> String {
    let one: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > SNIPPET {
        let cut: String = one.chars().take(SNIPPET).collect();
        format!("{cut}…")
    } else {
        one
    }
}

/// Turns the body of a non-2xx answer into an [`ErrorBody`]: the server's
/// own when it sent one, otherwise a readable stand-in with the status and
/// the start of the body.
pub fn decode_error(status: u16, reason: &str, body: &[u8]) -> ErrorBody {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body)
        && (!e.error.trim().is_empty() || !e.details.is_empty())
    {
        return e;
    }
    let text = String::from_utf8_lossy(body);
    let reason = if reason.trim().is_empty() {
        default_reason(status)
    } else {
        reason.trim()
    };
    let mut error = format!("HTTP {status} {reason}");
    let text = snippet(&text);
    if !text.is_empty() {
        error.push_str(": ");
        error.push_str(&text);
    }
    ErrorBody {
        error,
        details: vec![],
    }
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Decodes a 2xx body: empty → `Null`, otherwise JSON or an error.
pub fn decode_success(
    request: &str,
    status: u16,
    body: &[u8],
) -> Result<serde_json::Value, CliError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| CliError::BadAnswer {
        request: request.to_owned(),
        reason: format!(
            "HTTP {status}, body is not JSON ({e}): {}",
            snippet(&String::from_utf8_lossy(body))
        ),
    })
}

fn read_body(resp: ureq::Response, request: &str) -> Result<Vec<u8>, CliError> {
    let mut v = Vec::new();
    resp.into_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut v)
        .map_err(|e| CliError::BadAnswer {
            request: request.to_owned(),
            reason: format!("reading the body failed: {e}"),
        })?;
    if v.len() as u64 > MAX_BODY {
        return Err(CliError::BadAnswer {
            request: request.to_owned(),
            reason: format!("body larger than {MAX_BODY} bytes"),
        });
    }
    Ok(v)
}

/// The innermost readable cause of a transport error.
fn transport_reason(t: &ureq::Transport) -> String {
    let mut reason = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(s) = src {
        reason = Some(s.to_string());
        src = s.source();
    }
    reason
        .or_else(|| t.message().map(str::to_owned))
        .unwrap_or_else(|| t.kind().to_string())
}

impl Client {
    /// A client of the API at `api` (see [`normalize_base`]).
    pub fn new(api: &str, token: Option<&str>) -> Result<Client, CliError> {
        let base = normalize_base(api)?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // Applying a policy set attaches programs: give it time.
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(30))
            .redirects(0)
            .user_agent(concat!("vtap-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base,
            token: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            agent,
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Reply, CliError> {
        self.send::<()>("GET", path, &[], None, None)
    }

    /// `GET path` whose body is copied to `out` as it arrives (a live
    /// stream: no read timeout). Returns the bytes copied.
    pub fn stream_to(
        &self,
        path: &str,
        query: &[(&str, &str)],
        out: &mut dyn std::io::Write,
    ) -> Result<u64, CliError> {
        let url = format!("{}{path}", self.base);
        let request = format!("GET {url}");
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .redirects(0)
            .user_agent(concat!("vtap-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut req = agent.get(&url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(resp) => {
                let mut r = resp.into_reader();
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(CliError::BadAnswer {
                                request,
                                reason: format!("the stream broke: {e}"),
                            });
                        }
                    };
                    // A closed stdout (`| head`) ends the stream quietly.
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                    total += n as u64;
                }
                Ok(total)
            }
            Err(ureq::Error::Status(status, resp)) => {
                let reason = resp.status_text().to_owned();
                let bytes = read_body(resp, &request).unwrap_or_default();
                Err(CliError::Api {
                    request,
                    status,
                    body: decode_error(status, &reason, &bytes),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(CliError::Unreachable {
                api: self.base.clone(),
                reason: transport_reason(&t),
            }),
        }
    }

    /// Any request. `path` starts with `/`; `query` pairs are appended;
    /// `if_match` is an etag (quoted here if needed).
    pub fn send<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        if_match: Option<&str>,
    ) -> Result<Reply, CliError> {
        let url = format!("{}{path}", self.base);
        let mut shown = url.clone();
        for (i, (k, v)) in query.iter().enumerate() {
            shown.push(if i == 0 { '?' } else { '&' });
            shown.push_str(&format!("{k}={v}"));
        }
        let request = format!("{method} {shown}");
        let mut req = self
            .agent
            .request(method, &url)
            .set("Accept", "application/json");
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(e) = if_match {
            req = req.set("If-Match", &quote_etag(e));
        }
        let result = match body {
            Some(b) => {
                let text = serde_json::to_string(b).map_err(|e| {
                    CliError::Local(vec![format!("error: cannot encode the request: {e}")])
                })?;
                req.set("Content-Type", "application/json")
                    .send_string(&text)
            }
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let status = resp.status();
                let bytes = read_body(resp, &request)?;
                if !(200..300).contains(&status) {
                    // 1xx/3xx reach here (redirects are not followed).
                    return Err(CliError::Api {
                        request,
                        status,
                        body: decode_error(status, "", &bytes),
                    });
                }
                let body = decode_success(&request, status, &bytes)?;
                Ok(Reply {
                    status,
                    body,
                    request,
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let reason = resp.status_text().to_owned();
                let bytes = read_body(resp, &request).unwrap_or_default();
                Err(CliError::Api {
                    request,
                    status,
                    body: decode_error(status, &reason, &bytes),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(match t.kind() {
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                    CliError::Usage(format!("--api {}: {}", self.base, transport_reason(&t)))
                }
                ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => CliError::BadAnswer {
                    request,
                    reason: format!("not an HTTP answer: {}", transport_reason(&t)),
                },
                _ => CliError::Unreachable {
                    api: self.base.clone(),
                    reason: transport_reason(&t),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn base_urls() {
        assert_eq!(
            normalize_base("http://127.0.0.1:7470/").unwrap(),
            "http://127.0.0.1:7470"
        );
        assert_eq!(
            normalize_base(" http://[::1]:9000/vtap ").unwrap(),
            "http://[::1]:9000/vtap"
        );
        for bad in [
            "127.0.0.1:7470",
            "https://x",
            "http://",
            "http:///x",
            "ftp://a",
            "http://a?b",
        ] {
            let e = normalize_base(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn segments_and_etags() {
        assert_eq!(encode_segment("web-to_ids.1"), "web-to_ids.1");
        assert_eq!(encode_segment("vnet*"), "vnet%2A");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
        assert_eq!(quote_etag("*"), "*");
    }

    #[test]
    fn error_bodies() {
        let e = decode_error(
            422,
            "Unprocessable Entity",
            br#"{"error":"invalid","details":[{"field":"outputs[0].vlan","message":"too big"}]}"#,
        );
        assert_eq!(e.error, "invalid");
        assert_eq!(e.details[0].field, "outputs[0].vlan");
        // Details optional.
        assert_eq!(
            decode_error(404, "", br#"{"error":"no policy x"}"#).error,
            "no policy x"
        );
        // Not JSON, not an error object, empty, binary: readable stand-ins.
        assert_eq!(
            decode_error(502, "Bad Gateway", b"<html>oops</html>\n").error,
            "HTTP 502 Bad Gateway: <html>oops</html>"
        );
        assert_eq!(decode_error(404, "", b"").error, "HTTP 404 Not Found");
        assert_eq!(
            decode_error(400, "Bad Request", br#"{"message":"x"}"#).error,
            r#"HTTP 400 Bad Request: {"message":"x"}"#
        );
        assert!(
            decode_error(500, "", &[0xff, 0xfe, 0, 1])
                .error
                .starts_with("HTTP 500")
        );
        let long = "x".repeat(10_000);
        assert!(decode_error(500, "", long.as_bytes()).error.chars().count() < 400);
    }

    #[test]
    fn success_bodies() {
        assert_eq!(
            decode_success("GET x", 200, b"").unwrap(),
            serde_json::Value::Null
        );
        assert_eq!(decode_success("GET x", 200, br#"{"a":1}"#).unwrap()["a"], 1);
        let e = decode_success("GET x", 200, b"ok\n").unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.render().contains("not JSON"), "{}", e.render());
    }

    /// A one-shot HTTP server answering `raw` to the first connection.
    fn serve_once(raw: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let _ = s.write_all(&raw);
            }
        });
        format!("http://{addr}")
    }

    /// An HTTP/1.1 answer with a correct Content-Length.
    fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn answers_of_every_kind() {
        let ok = serve_once(answer(
            "200 OK",
            "Content-Type: application/json\r\nETag: \"e1\"\r\n",
            "{\"a\": 1}\n",
        ));
        let r = Client::new(&ok, Some("t")).unwrap().get("/x").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body["a"], 1);

        let conflict = serve_once(answer(
            "409 Conflict",
            "Content-Type: application/json\r\n",
            r#"{"error":"stale","details":[{"field":"If-Match","message":"x"}]}"#,
        ));
        let e = Client::new(&conflict, None).unwrap().get("/x").unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.render(), "error: stale\n  If-Match: x\n");

        // Truncated body (Content-Length larger than what is sent).
        let truncated = serve_once(
            b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{\"error\":".to_vec(),
        );
        let e = Client::new(&truncated, None)
            .unwrap()
            .get("/x")
            .unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e:?}");

        let html = serve_once(answer("500 Internal Server Error", "", "boom!"));
        let e = Client::new(&html, None).unwrap().get("/x").unwrap_err();
        assert_eq!(e.render(), "error: HTTP 500 Internal Server Error: boom!\n");

        let garbage = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        let e = Client::new(&garbage, None).unwrap().get("/x").unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e:?}");

        let bad_json = serve_once(answer("200 OK", "", "ok\n"));
        let e = Client::new(&bad_json, None).unwrap().get("/x").unwrap_err();
        assert!(matches!(e, CliError::BadAnswer { .. }), "{e:?}");

        let wrong_shape = serve_once(answer("200 OK", "", "[1, 2]"));
        let r = Client::new(&wrong_shape, None).unwrap().get("/x").unwrap();
        let e = r.parse::<crate::wire::PolicyList>().unwrap_err();
        assert!(matches!(e, CliError::BadAnswer { .. }), "{e:?}");
    }

    #[test]
    fn unreachable_is_exit_3() {
        // Bind then drop: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = format!("http://127.0.0.1:{port}");
        let e = Client::new(&api, None)
            .unwrap()
            .get("/api/v1/policies")
            .unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e:?}");
        assert!(e.render().contains(&api), "{}", e.render());
    }
}
