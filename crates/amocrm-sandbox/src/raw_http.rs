//! Reading one HTTP/1.1 request off a raw connection, for test peers that answer by hand: webhook
//! receivers, and servers that misbehave on purpose (hang up, never answer) where a real one cannot.

use tokio::io::{AsyncRead, AsyncReadExt};

/// One request as it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRequest {
    /// The request line and the headers, without the blank line that ends them.
    pub head: String,
    /// The body: `Content-Length` bytes, or fewer when the peer stopped sending early.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line (`POST /hook HTTP/1.1`).
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The headers as `(lower-cased name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The whole request as text, head and body as sent.
    pub fn text(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.body_text())
    }
}

/// Reads the head and then the `Content-Length` body. `None` when the connection ends or fails before
/// the head is complete.
pub async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawRequest { head, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_reads_the_head_and_the_content_length_body() {
        let raw = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let req = read_request(&mut &raw[..]).await.expect("a whole request");
        assert_eq!(req.request_line(), "POST /hook HTTP/1.1");
        assert!(
            req.headers()
                .any(|(k, v)| k == "content-length" && v == "5")
        );
        assert_eq!(req.body_text(), "hello");
        assert_eq!(req.text(), String::from_utf8_lossy(raw));
        assert_eq!(read_request(&mut &b"GET / HTTP/1.1\r\n"[..]).await, None);
    }
}
