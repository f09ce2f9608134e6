//! The keys that encrypt Secrets at rest, and the AES-256-GCM transform itself.
//!
//! Why: every member's RocksDB, every raft snapshot sent to a follower and `etcdctl get` on the
//! client port would otherwise show Secret data in the clear. kube-apiserver's answer is an
//! EncryptionConfiguration with an `aesgcm` provider; skiff creates the key at `--init`, keeps it
//! with the cluster PKI (DATA/pki/secrets-encryption.key) and hands it to joining members with
//! the CA, so a user does not have to set anything up.
//!
//! The stored form is kube-apiserver's: `k8s:enc:aesgcm:v1:<key name>:` + 12-byte nonce +
//! ciphertext and tag, with the storage key as authenticated data (a value copied under another
//! key does not open). Values without the `k8s:enc:` prefix are read as they are (Secrets
//! written before encryption was on), as kube-apiserver's `identity` fallback does.
//!
//! The key file holds one key per line, `aesgcm <name> <base64 of 32 bytes>`; the first one
//! encrypts, every one decrypts (so a restored cluster can hold its own key and a backup's).

use std::borrow::Cow;

use base64::Engine as _;
use rand::Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The file under DATA/pki holding the keys.
pub const KEY_FILE: &str = "secrets-encryption.key";
/// What every encrypted value starts with (any provider of kube-apiserver's format).
const ENCRYPTED_MARK: &[u8] = b"k8s:enc:";
const PROVIDER_PREFIX: &str = "k8s:enc:aesgcm:v1:";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AtRestError {
    #[error("{KEY_FILE} line {line}: {reason}")]
    BadKeyFile { line: usize, reason: String },
    #[error("{KEY_FILE} holds no key")]
    NoKeys,
    #[error("a value is encrypted with key {0:?}, which this member does not hold")]
    UnknownKey(String),
    #[error("a value is encrypted at rest but this member has no at-rest key")]
    NoKeyHere,
    #[error("an encrypted value does not open: altered, or stored under another key")]
    DoesNotOpen,
    #[error("an encrypted value uses an unsupported format")]
    Unsupported,
    #[error("encryption failed")]
    Seal,
}

struct NamedKey {
    name: String,
    /// Kept to write the key file again (merging a backup's keys into a new cluster's).
    secret: [u8; KEY_LEN],
    key: LessSafeKey,
}

/// A cluster's at-rest keys: the first encrypts, all decrypt.
pub struct AtRestKeys {
    keys: Vec<NamedKey>,
}

impl std::fmt::Debug for AtRestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("AtRestKeys").field("names", &names).finish()
    }
}

impl AtRestKeys {
    /// A new key with a random name (names must not collide when keys of two clusters meet in
    /// one file, after a restore).
    pub fn generate() -> Result<Self, AtRestError> {
        let mut secret = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AtRestError::Seal)?;
        let name = format!("skiff-{}", hex::encode(rand::rng().random::<[u8; 4]>()));
        Ok(AtRestKeys {
            keys: vec![named_key(name, secret)?],
        })
    }

    pub fn parse(text: &str) -> Result<Self, AtRestError> {
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| AtRestError::BadKeyFile {
                line: index + 1,
                reason: reason.to_string(),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [provider, name, secret] = fields.as_slice() else {
                return Err(bad("expected `aesgcm <name> <base64 key>`"));
            };
            if *provider != "aesgcm" {
                return Err(bad("only the aesgcm provider is supported"));
            }
            if name.is_empty() || name.contains(':') {
                return Err(bad("a key name must not contain ':'"));
            }
            if keys.iter().any(|k| k.name == *name) {
                return Err(bad("a key name appears twice"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .map_err(|_| bad("the key is not base64"))?;
            let secret: [u8; KEY_LEN] = bytes
                .try_into()
                .map_err(|_| bad("an aesgcm key must be 32 bytes"))?;
            keys.push(named_key(name.to_string(), secret)?);
        }
        if keys.is_empty() {
            return Err(AtRestError::NoKeys);
        }
        Ok(AtRestKeys { keys })
    }

    /// The key file's text.
    pub fn render(&self) -> String {
        let mut text = String::from(
            "# skiff: the keys that encrypt Secrets at rest (AES-256-GCM).\n# The first encrypts; every one decrypts. Losing this file loses the Secrets.\n",
        );
        for key in &self.keys {
            text.push_str(&format!(
                "aesgcm {} {}\n",
                key.name,
                base64::engine::general_purpose::STANDARD.encode(key.secret)
            ));
        }
        text
    }

    /// These keys, then those of `other` not already here (by name): the first of `self` still
    /// encrypts, and values sealed by either set open.
    pub fn merged_with(mut self, other: AtRestKeys) -> Self {
        for key in other.keys {
            if !self.keys.iter().any(|k| k.name == key.name) {
                self.keys.push(key);
            }
        }
        self
    }

    /// The stored form of `plaintext` kept under `storage_key`.
    pub fn seal(&self, storage_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let key = self.keys.first().ok_or(AtRestError::NoKeys)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| AtRestError::Seal)?;
        let mut sealed = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(storage_key),
                &mut sealed,
            )
            .map_err(|_| AtRestError::Seal)?;
        let mut out = Vec::with_capacity(
            PROVIDER_PREFIX.len() + key.name.len() + 1 + NONCE_LEN + sealed.len(),
        );
        out.extend_from_slice(PROVIDER_PREFIX.as_bytes());
        out.extend_from_slice(key.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of a value stored under `storage_key` (borrowed when it was not encrypted).
    #[cfg(test)]
    pub fn open<'a>(
        &self,
        storage_key: &[u8],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, AtRestError> {
        open_with(Some(self), storage_key, stored)
    }
}

/// Opens `stored` with `keys`, if any: a value that is not encrypted passes as it is; an
/// encrypted one without keys is an error, never garbage handed on as an object.
pub fn open_with<'a>(
    keys: Option<&AtRestKeys>,
    storage_key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, AtRestError> {
    if !is_encrypted(stored) {
        return Ok(Cow::Borrowed(stored));
    }
    let rest = stored
        .strip_prefix(PROVIDER_PREFIX.as_bytes())
        .ok_or(AtRestError::Unsupported)?;
    let colon = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or(AtRestError::Unsupported)?;
    let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
    let keys = keys.ok_or(AtRestError::NoKeyHere)?;
    let key = keys
        .keys
        .iter()
        .find(|k| k.name == name)
        .ok_or(AtRestError::UnknownKey(name))?;
    let body = &rest[colon + 1..];
    if body.len() < NONCE_LEN {
        return Err(AtRestError::DoesNotOpen);
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AtRestError::DoesNotOpen)?;
    let mut buffer = sealed.to_vec();
    let plain_len = key
        .key
        .open_in_place(nonce, Aad::from(storage_key), &mut buffer)
        .map_err(|_| AtRestError::DoesNotOpen)?
        .len();
    buffer.truncate(plain_len);
    Ok(Cow::Owned(buffer))
}

/// A key file as the admin API carries it (join, backup stream), where an empty string means
/// the cluster has none.
pub fn key_file_from_wire(text: String) -> Option<String> {
    Some(text).filter(|text| !text.trim().is_empty())
}

/// Whether a stored value is in kube-apiserver's encrypted form.
pub fn is_encrypted(stored: &[u8]) -> bool {
    stored.starts_with(ENCRYPTED_MARK)
}

fn named_key(name: String, secret: [u8; KEY_LEN]) -> Result<NamedKey, AtRestError> {
    let key = UnboundKey::new(&AES_256_GCM, &secret).map_err(|_| AtRestError::Seal)?;
    Ok(NamedKey {
        name,
        secret,
        key: LessSafeKey::new(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"/registry/secrets/default/db";

    #[test]
    fn a_sealed_value_opens_and_shows_nothing_of_the_plaintext() {
        let keys = AtRestKeys::generate().unwrap();
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#;
        let sealed = keys.seal(KEY, plain).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:skiff-"));
        assert!(!sealed.windows(8).any(|w| w == b"aHVudGVy"));
        assert_eq!(keys.open(KEY, &sealed).unwrap().as_ref(), plain);
        // A fresh nonce each time: the same plaintext never gives the same bytes.
        assert_ne!(keys.seal(KEY, plain).unwrap(), sealed);
    }

    #[test]
    fn plaintext_passes_and_tampering_or_moving_fails() {
        let keys = AtRestKeys::generate().unwrap();
        assert!(matches!(
            keys.open(KEY, b"{\"kind\":\"Secret\"}").unwrap(),
            Cow::Borrowed(_)
        ));
        let sealed = keys.seal(KEY, b"{}").unwrap();
        assert_eq!(
            keys.open(b"/registry/secrets/default/other", &sealed),
            Err(AtRestError::DoesNotOpen)
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(keys.open(KEY, &altered), Err(AtRestError::DoesNotOpen));
        assert_eq!(
            keys.open(KEY, &sealed[..sealed.len() - 20]),
            Err(AtRestError::DoesNotOpen)
        );
        assert_eq!(open_with(None, KEY, &sealed), Err(AtRestError::NoKeyHere));
        let other = AtRestKeys::generate().unwrap();
        assert!(matches!(
            other.open(KEY, &sealed),
            Err(AtRestError::UnknownKey(_))
        ));
        assert_eq!(
            keys.open(KEY, b"k8s:enc:kms:v2:x:abc"),
            Err(AtRestError::Unsupported)
        );
    }

    #[test]
    fn the_key_file_round_trips_and_merged_keys_open_both_clusters_values() {
        let mine = AtRestKeys::generate().unwrap();
        let theirs = AtRestKeys::generate().unwrap();
        let old_value = theirs.seal(KEY, b"old").unwrap();
        let merged = AtRestKeys::parse(&mine.render())
            .unwrap()
            .merged_with(AtRestKeys::parse(&theirs.render()).unwrap());
        let reread = AtRestKeys::parse(&merged.render()).unwrap();
        assert_eq!(reread.open(KEY, &old_value).unwrap().as_ref(), b"old");
        let new_value = reread.seal(KEY, b"new").unwrap();
        assert_eq!(mine.open(KEY, &new_value).unwrap().as_ref(), b"new");
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        assert_eq!(
            AtRestKeys::parse("# nothing\n").unwrap_err(),
            AtRestError::NoKeys
        );
        for bad in [
            "aesgcm k1",
            "secretbox k1 AAAA",
            "aesgcm k:1 AAAA",
            "aesgcm k1 not-base64!",
            "aesgcm k1 AAAA",
        ] {
            match AtRestKeys::parse(&format!("# header\n{bad}\n")) {
                Err(AtRestError::BadKeyFile { line: 2, .. }) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let one = AtRestKeys::generate().unwrap().render();
        let twice = format!("{one}{}", one.lines().last().unwrap_or_default());
        assert!(matches!(
            AtRestKeys::parse(&twice),
            Err(AtRestError::BadKeyFile { .. })
        ));
    }
}
