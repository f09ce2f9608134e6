//! Which stored objects are encrypted at rest, with the keys this member installed at start
//! (see `pki::at_rest` for the format and why). Every object the API stores or reads passes
//! through `ObjectStore` (or a mirror of it), so these two functions are the whole policy.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::pki::at_rest::{AtRestError, AtRestKeys, open_with};

/// The member's keys, installed once before the API starts; none on a member of a cluster made
/// before Secrets were encrypted (its Secrets are stored as they are).
static KEYS: OnceLock<AtRestKeys> = OnceLock::new();

/// Key prefixes whose values are sealed: Secrets (kube-apiserver's usual
/// EncryptionConfiguration) and the private key that signs ServiceAccount tokens, which is
/// worth as much as every Secret.
const ENCRYPTED_PREFIXES: &[&str] = &["/registry/secrets/", super::tokens::KEY_PATH];

/// Installs this member's keys; a second call is refused (keys never change under a running
/// API).
pub fn install(keys: AtRestKeys) -> Result<(), AtRestKeys> {
    KEYS.set(keys)
}

fn sealed_here(storage_key: &str) -> bool {
    ENCRYPTED_PREFIXES
        .iter()
        .any(|prefix| storage_key.starts_with(prefix))
}

/// The bytes to store under `storage_key`: sealed when the key is encrypted and this member
/// has keys, else as they are.
pub fn to_storage(storage_key: &str, plain: Vec<u8>) -> Result<Vec<u8>, AtRestError> {
    match KEYS.get() {
        Some(keys) if sealed_here(storage_key) => keys.seal(storage_key.as_bytes(), &plain),
        _ => Ok(plain),
    }
}

/// The plaintext of a value read from under `storage_key`. Any value in the encrypted form is
/// opened (whatever its key), so a value sealed elsewhere is never handed on as an object.
pub fn from_storage<'a>(
    storage_key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, AtRestError> {
    open_with(KEYS.get(), storage_key, stored)
}
