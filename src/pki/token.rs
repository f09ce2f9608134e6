//! Join tokens: `K10<ca sha256 hex>::server:<secret>`, the k3s format users already know.
//! The hash lets a joiner trust the CA it downloads; the secret authorizes the join.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("join token must look like K10<64 hex chars>::server:<secret>")]
    Malformed,
}

impl JoinToken {
    pub fn new(ca_hash: String) -> Self {
        let bytes: [u8; 24] = rand::rng().random();
        JoinToken {
            ca_hash,
            secret: hex::encode(bytes),
        }
    }

    /// Constant-time comparison of the secret, so timing does not leak it.
    pub fn secret_matches(&self, candidate: &str) -> bool {
        constant_time_eq(&self.secret, candidate)
    }
}

/// Equality whose time depends only on the lengths, not on where the strings differ: for
/// comparing secrets a caller presents.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::server:{}", self.ca_hash, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix("K10").ok_or(TokenError::Malformed)?;
        let (hash, cred) = rest.split_once("::").ok_or(TokenError::Malformed)?;
        let secret = cred.strip_prefix("server:").ok_or(TokenError::Malformed)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let token = JoinToken::new("ab".repeat(32));
        let parsed: JoinToken = token.to_string().parse().expect("parse");
        assert_eq!(parsed, token);
        assert!(parsed.secret_matches(&token.secret));
        assert!(!parsed.secret_matches("nope"));
        assert_eq!(
            "K10abc::server:x".parse::<JoinToken>(),
            Err(TokenError::Malformed)
        );
        assert_eq!("garbage".parse::<JoinToken>(), Err(TokenError::Malformed));
    }
}
