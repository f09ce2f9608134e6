//! SPDY/3.1 framing, as much as Kubernetes' streams need (it multiplexes them with SPDY, over a
//! plain HTTP upgrade or tunnelled inside a WebSocket): the API server's side of
//! `kubectl port-forward`, and the agent's client side of containerd's CRI streaming server
//! (`kubectl attach`). Data frames,
//! and the control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS
//! and WINDOW_UPDATE. Header blocks are zlib streams primed with the protocol's dictionary,
//! one compression context per direction for the whole connection (draft 3, section 2.6.10).

use std::collections::BTreeMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;

/// The header names the protocol's compression dictionary lists, each length-prefixed, in the
/// order of draft 3 section 2.6.10.1; the dictionary ends with `DICTIONARY_TAIL` verbatim.
const DICTIONARY_NAMES: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> Vec<u8> {
    let mut out = Vec::with_capacity(1423);
    for name in DICTIONARY_NAMES {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("not SPDY/3: control frame version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    Headers(String),
}

/// Headers: lower-case names to values (several values are NUL-separated on the wire).
pub type Headers = BTreeMap<String, String>;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_stream: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type this side does not use (ignored, as the spec asks).
    Other {
        kind: u16,
    },
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// One connection's codec: reassembles frames from a byte stream and keeps both directions'
/// zlib contexts.
pub struct Codec {
    buffer: Vec<u8>,
    inflate: Decompress,
    deflate: Compress,
    dictionary: Vec<u8>,
    inflate_primed: bool,
    deflate_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            buffer: Vec::new(),
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            dictionary: dictionary(),
            inflate_primed: false,
            deflate_primed: false,
        }
    }
}

impl Codec {
    /// Appends bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let length =
            u32::from_be_bytes([0, self.buffer[5], self.buffer[6], self.buffer[7]]) as usize;
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buffer.drain(..8 + length).collect();
        let flags = frame[4];
        let body = &frame[8..];
        if frame[0] & 0x80 == 0 {
            let stream = u32_at(&frame, 0).unwrap_or(0) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                flags,
                data: body.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([frame[0] & 0x7f, frame[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        let stream = u32_at(body, 0).map(|s| s & 0x7fff_ffff);
        Ok(Some(match kind {
            1 => {
                let stream = stream.ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let block = body.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                Frame::SynStream {
                    stream,
                    flags,
                    headers: self.inflate_headers(block)?,
                }
            }
            2 => {
                let stream = stream.ok_or(SpdyError::Malformed("SYN_REPLY"))?;
                let block = body.get(4..).ok_or(SpdyError::Malformed("SYN_REPLY"))?;
                Frame::SynReply {
                    stream,
                    flags,
                    headers: self.inflate_headers(block)?,
                }
            }
            3 => Frame::RstStream {
                stream: stream.ok_or(SpdyError::Malformed("RST_STREAM"))?,
                status: u32_at(body, 4).ok_or(SpdyError::Malformed("RST_STREAM"))?,
            },
            4 => Frame::Settings,
            6 => Frame::Ping {
                id: u32_at(body, 0).ok_or(SpdyError::Malformed("PING"))?,
            },
            7 => Frame::GoAway {
                last_stream: stream.ok_or(SpdyError::Malformed("GOAWAY"))?,
            },
            8 => {
                let stream = stream.ok_or(SpdyError::Malformed("HEADERS"))?;
                let block = body.get(4..).ok_or(SpdyError::Malformed("HEADERS"))?;
                Frame::Headers {
                    stream,
                    flags,
                    headers: self.inflate_headers(block)?,
                }
            }
            9 => Frame::WindowUpdate {
                stream: stream.ok_or(SpdyError::Malformed("WINDOW_UPDATE"))?,
                delta: u32_at(body, 4).ok_or(SpdyError::Malformed("WINDOW_UPDATE"))? & 0x7fff_ffff,
            },
            other => Frame::Other { kind: other },
        }))
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let bad = |e: String| SpdyError::Headers(e);
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            out.reserve(1024);
            let before_in = self.inflate.total_in();
            let status = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            match status {
                Err(e) if e.needs_dictionary().is_some() && !self.inflate_primed => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| bad(e.to_string()))?;
                    self.inflate_primed = true;
                }
                Err(e) => return Err(bad(e.to_string())),
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
            }
        }
        parse_block(&out)
    }

    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        if !self.deflate_primed {
            self.deflate
                .set_dictionary(&self.dictionary)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            self.deflate_primed = true;
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for text in [name, value] {
                plain.extend_from_slice(&(text.len() as u32).to_be_bytes());
                plain.extend_from_slice(text.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            out.reserve(256);
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            let consumed = (self.deflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }

    /// A SYN_STREAM opening `stream` (odd ids from a client) with `headers`.
    pub fn syn_stream(
        &mut self,
        stream: u32,
        flags: u8,
        headers: &Headers,
    ) -> Result<Vec<u8>, SpdyError> {
        // No associated stream, priority 0, no credential slot.
        let mut prefix = stream.to_be_bytes().to_vec();
        prefix.extend_from_slice(&[0; 6]);
        self.with_headers(1, flags, &prefix, headers)
    }

    /// A SYN_REPLY for `stream` with `headers`.
    pub fn syn_reply(
        &mut self,
        stream: u32,
        flags: u8,
        headers: &Headers,
    ) -> Result<Vec<u8>, SpdyError> {
        self.with_headers(2, flags, &stream.to_be_bytes(), headers)
    }

    /// A control frame whose body is `prefix` then the compressed `headers`.
    fn with_headers(
        &mut self,
        kind: u16,
        flags: u8,
        prefix: &[u8],
        headers: &Headers,
    ) -> Result<Vec<u8>, SpdyError> {
        let block = self.deflate_headers(headers)?;
        let mut body = prefix.to_vec();
        body.extend_from_slice(&block);
        Ok(control(kind, flags, &body))
    }
}

fn parse_block(plain: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Malformed("header block");
    let count = u32_at(plain, 0).ok_or_else(bad)? as usize;
    let mut at = 4;
    let mut headers = Headers::new();
    for _ in 0..count.min(1024) {
        let mut text = || -> Result<String, SpdyError> {
            let len = u32_at(plain, at).ok_or_else(bad)? as usize;
            let bytes = plain.get(at + 4..at + 4 + len).ok_or_else(bad)?;
            at += 4 + len;
            Ok(String::from_utf8_lossy(bytes).into_owned())
        };
        let name = text()?.to_ascii_lowercase();
        let value = text()?;
        headers.insert(name, value);
    }
    Ok(headers)
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    let len = body.len() as u32;
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

/// A data frame (at most 16 MB - 1 of data; callers send smaller chunks).
pub fn data(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(data);
    out
}

pub fn ping(id: u32) -> Vec<u8> {
    control(6, 0, &id.to_be_bytes())
}

pub fn goaway(last_stream: u32) -> Vec<u8> {
    let mut body = last_stream.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    control(7, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423, "draft 3 gives 1423 bytes");
        assert!(dictionary.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(dictionary.ends_with(b"utf-,*,enq=0."));
    }

    fn client_syn_stream(client: &mut Codec, stream: u32, headers: &Headers) -> Vec<u8> {
        client.syn_stream(stream, 0, headers).expect("deflate")
    }

    #[test]
    fn frames_round_trip_through_both_compression_contexts() {
        let (mut client, mut server) = (Codec::default(), Codec::default());
        let mut headers = Headers::new();
        headers.insert("streamtype".into(), "error".into());
        headers.insert("port".into(), "8080".into());
        headers.insert("requestid".into(), "0".into());
        let mut wire = client_syn_stream(&mut client, 1, &headers);
        headers.insert("streamtype".into(), "data".into());
        wire.extend(client_syn_stream(&mut client, 3, &headers));
        wire.extend(data(3, FLAG_FIN, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(ping(7));
        // Split anywhere: frames come out whole.
        let (first, second) = wire.split_at(13);
        server.feed(first);
        let mut frames = Vec::new();
        while let Some(f) = server.next_frame().expect("frame") {
            frames.push(f);
        }
        server.feed(second);
        while let Some(f) = server.next_frame().expect("frame") {
            frames.push(f);
        }
        assert_eq!(frames.len(), 4, "{frames:?}");
        let Frame::SynStream {
            stream: 3,
            headers: got,
            ..
        } = &frames[1]
        else {
            panic!("{frames:?}")
        };
        assert_eq!(got, &headers);
        assert_eq!(
            frames[2],
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec()
            }
        );
        assert_eq!(frames[3], Frame::Ping { id: 7 });
        // And the reply direction.
        let reply = server.syn_reply(3, 0, &Headers::new()).expect("reply");
        client.feed(&reply);
        assert!(matches!(
            client.next_frame(),
            Ok(Some(Frame::SynReply { stream: 3, .. }))
        ));
    }
}
