//! A small HTTP/1.1 client for JSON APIs (OpenSearch's REST API): one kept-alive connection,
//! requests with a body and `Content-Length`, responses read by `Content-Length` or chunked,
//! basic authentication from the URL. Plain HTTP only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct HttpClient {
    /// `host:port` to connect to.
    addr: String,
    /// `Authorization` header value, from the URL's user and password.
    auth: Option<String>,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
    /// How long an answer may take (60 s unless set).
    timeout: Duration,
}

pub use weir_crds::base64;

impl HttpClient {
    /// A client of `http://[user:password@]host[:port]` (port 80 by default); connects lazily.
    pub fn new(url: &str) -> Result<HttpClient, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let hostpart = rest.split('/').next().unwrap_or_default();
        let (auth, hostport) = match hostpart.rsplit_once('@') {
            Some((user, h)) => (Some(format!("Basic {}", base64(user.as_bytes()))), h),
            None => (None, hostpart),
        };
        if hostport.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let addr = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
        Ok(HttpClient { addr, auth, conn: None, timeout: Duration::from_secs(60) })
    }

    /// Gives up on an answer after `timeout` (a request on a reused connection is then sent
    /// once more on a new one).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.conn = None;
    }

    /// Sends HTTP basic authentication with `user` and `password` (which may hold any
    /// character, unlike credentials in the URL).
    pub fn set_basic_auth(&mut self, user: &str, password: &str) {
        self.auth = Some(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())));
    }

    /// Where requests go, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a request and reads its response. A kept-alive connection the server closed in the
    /// meantime is replaced once; other failures are errors (the caller retries).
    pub fn request(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, content_type, body) {
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, content_type, body)
            }
            r => r,
        }
    }

    fn try_request(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
        let fail = |e: std::io::Error| format!("{method} http://{}{path}: {e}", self.addr);
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr).map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            stream.set_nodelay(true).ok();
            stream.set_read_timeout(Some(self.timeout)).ok();
            let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            self.conn = Some((reader, stream));
        }
        let (reader, stream) = self.conn.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        if let Err(e) = sent {
            self.conn = None;
            return Err(fail(e));
        }
        let read = Self::read_response(reader, method == "HEAD");
        match read {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(fail(e))
            }
        }
    }

    /// The response and whether the connection stays open. A response to HEAD has no body,
    /// whatever its headers say.
    fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> std::io::Result<(Response, bool)> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("not an HTTP status line: {}", line.trim_end())))?;
        let (mut length, mut chunked, mut keep) = (None, false, !line.starts_with("HTTP/1.0"));
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if head {
        } else if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(format!("bad chunk size `{}`", line.trim_end())))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                r.read_exact(&mut body[start..])?;
                line.clear();
                r.read_line(&mut line)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
            keep = false;
        }
        Ok((Response { status, body }, keep))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b"elastic:secret"), "ZWxhc3RpYzpzZWNyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn urls_name_the_server_and_the_credentials() {
        let c = HttpClient::new("http://u:p@search:9201").unwrap();
        assert_eq!((c.addr(), c.auth.as_deref()), ("search:9201", Some("Basic dTpw")));
        assert_eq!(HttpClient::new("http://search").unwrap().addr(), "search:80");
        assert!(HttpClient::new("https://x").err().unwrap().contains("not an http:// URL"));
    }

    /// A server that answers each request on one connection with the next canned response.
    pub(crate) fn serve(responses: Vec<&'static str>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for resp in responses {
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                w.write_all(resp.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn reads_sized_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 120\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]);
        let mut c = HttpClient::new(&format!("http://{addr}")).unwrap();
        let r = c.request("GET", "/", "application/json", b"").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = c.request("POST", "/_bulk", "application/x-ndjson", b"{}\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (429, &b"{\"a\"}"[..]));
        let r = c.request("HEAD", "/index", "application/json", b"").unwrap();
        assert_eq!((r.status, r.body.len()), (404, 0), "a HEAD response has no body");
        let r = c.request("GET", "/", "application/json", b"").unwrap();
        assert_eq!(r.status, 200, "the connection is still in step");
    }
}
