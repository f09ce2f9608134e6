//! A minimal DNS client for A records (RFC 1035 wire format, UDP): what `skiff up` uses to
//! see that cluster DNS answers, and what `skiff bench endpoints` polls every millisecond.
//! Not a resolver: one question, one server, no retries beyond the caller's.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// How long one query waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

/// The A records `server` answers for `name` on `socket` (empty on no answer or any error).
pub async fn query_a(socket: &UdpSocket, server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    let id = rand::random::<u16>();
    if socket.send_to(&a_query(id, name), server).await.is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(ANSWER_TIMEOUT, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => a_records(&buf[..n], id),
        _ => Vec::new(),
    }
}

/// One query from a fresh socket.
pub async fn lookup_a(server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    match UdpSocket::bind(local).await {
        Ok(socket) => query_a(&socket, server, name).await,
        Err(_) => Vec::new(),
    }
}

/// A DNS query for the A records of `name` (RFC 1035 4.1), recursion not desired.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// The A records in the answer section of a response to query `id` (empty on anything odd).
fn a_records(message: &[u8], id: u16) -> Vec<Ipv4Addr> {
    fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let len = *message.get(at)? as usize;
            if len == 0 {
                return Some(at + 1);
            }
            if len & 0xC0 == 0xC0 {
                return Some(at + 2);
            }
            at += len + 1;
        }
    }
    let parse = || -> Option<Vec<Ipv4Addr>> {
        if message.get(..2)? != id.to_be_bytes() {
            return None;
        }
        let answers = u16::from_be_bytes([*message.get(6)?, *message.get(7)?]);
        let mut at = skip_name(message, 12)? + 4;
        let mut found = Vec::new();
        for _ in 0..answers {
            at = skip_name(message, at)?;
            let kind = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
            let len = u16::from_be_bytes([*message.get(at + 8)?, *message.get(at + 9)?]) as usize;
            let data = message.get(at + 10..at + 10 + len)?;
            if kind == 1 && len == 4 {
                found.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            }
            at += 10 + len;
        }
        Some(found)
    };
    parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_wire_format() {
        let query = a_query(0x1234, "a.b.");
        assert_eq!(
            query,
            [
                0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 1, 0, 1
            ]
        );
        // The response: the query echoed with one answer (a compressed name) for 10.42.0.5.
        let mut response = query.clone();
        response[2] = 0x84;
        response[7] = 1;
        response.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 42, 0, 5]);
        assert_eq!(a_records(&response, 0x1234), [Ipv4Addr::new(10, 42, 0, 5)]);
        assert!(
            a_records(&response, 0x9999).is_empty(),
            "another query's answer"
        );
        assert!(a_records(&response[..20], 0x1234).is_empty(), "truncated");
    }
}
