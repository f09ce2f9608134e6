//! Optional wrapping of a backup file: zstd compression and AES-256-GCM encryption keyed by the
//! cluster's join token (as k3s encrypts its snapshots with its token), so a stolen backup does
//! not give away the cluster's Secrets.
//!
//! A plain backup is the snapshot format itself. A wrapped one starts with `SKIFFENV1`, a flags
//! byte (1 = zstd, 2 = encrypted, 4 = at-rest keys) and, when encrypted, a 16-byte salt; the
//! body is the cluster's at-rest key file as `[u32 length][text]` when flag 4 is set (the
//! Secrets in the snapshot are sealed with those keys, and a restore needs them), then the
//! (compressed) snapshot, in encrypted frames `[u32 length][ciphertext + tag]` of up to 64 KiB,
//! each sealed with its sequence number as nonce, ending with a sealed empty frame so that a
//! truncated file is refused rather than read short. The snapshot's own SHA-256 trailer still
//! checks the content underneath.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 9] = b"SKIFFENV1";
const ZSTD: u8 = 1;
const ENCRYPTED: u8 = 2;
const AT_REST_KEYS: u8 = 4;
/// A key file is a few lines; anything longer is a corrupt length.
const MAX_KEYS_BYTES: usize = 1 << 20;
const FRAME: usize = 64 * 1024;
const TAG: usize = 16;

/// How a backup is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrapping<'a> {
    pub compress: bool,
    /// The cluster token to encrypt with (None: not encrypted).
    pub token: Option<&'a str>,
    /// The cluster's at-rest key file, carried ahead of the snapshot.
    pub at_rest_keys: Option<&'a str>,
}

/// A backup opened for reading: the snapshot, and the at-rest keys it carries.
pub struct Opened {
    pub snapshot: Box<dyn Read>,
    pub at_rest_keys: Option<String>,
}

fn key(token: &str, salt: &[u8]) -> io::Result<LessSafeKey> {
    let digest = Sha256::new()
        .chain_update(b"skiff-backup-key-v1")
        .chain_update(salt)
        .chain_update(token.trim().as_bytes())
        .finalize();
    UnboundKey::new(&AES_256_GCM, &digest)
        .map(LessSafeKey::new)
        .map_err(|_| io::Error::other("bad key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Seals frames of what is written into `inner`.
struct Sealer<W: Write> {
    inner: W,
    key: LessSafeKey,
    buffer: Vec<u8>,
    counter: u64,
}

impl<W: Write> Sealer<W> {
    fn seal(&mut self, last: bool) -> io::Result<()> {
        let mut frame = std::mem::take(&mut self.buffer);
        let aad = Aad::from(if last {
            b"last".as_slice()
        } else {
            b"".as_slice()
        });
        self.key
            .seal_in_place_append_tag(nonce(self.counter), aad, &mut frame)
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.counter += 1;
        self.inner.write_all(&(frame.len() as u32).to_be_bytes())?;
        self.inner.write_all(&frame)
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.buffer.is_empty() {
            self.seal(false)?;
        }
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FRAME - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == FRAME {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens sealed frames; errors on tampering, a wrong token, or a missing last frame.
struct Opener<R: Read> {
    inner: R,
    key: LessSafeKey,
    plain: Vec<u8>,
    pos: usize,
    counter: u64,
    done: bool,
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            let mut len = [0u8; 4];
            self.inner.read_exact(&mut len).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the encrypted backup is truncated",
                )
            })?;
            let len = u32::from_be_bytes(len) as usize;
            if !(TAG..=FRAME + TAG).contains(&len) {
                return Err(io::Error::other("the encrypted backup is corrupt"));
            }
            let mut frame = vec![0u8; len];
            self.inner.read_exact(&mut frame).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the encrypted backup is truncated",
                )
            })?;
            let counter = self.counter;
            self.counter += 1;
            // A failed open leaves the buffer unspecified: keep a copy for the second try.
            let mut again = frame.clone();
            let opened = match self
                .key
                .open_in_place(nonce(counter), Aad::empty(), &mut frame)
            {
                Ok(p) => p.to_vec(),
                Err(_) => {
                    // Not a middle frame: the last one (sealed with its own AAD)?
                    self.key
                        .open_in_place(nonce(counter), Aad::from(b"last".as_slice()), &mut again)
                        .map_err(|_| {
                            io::Error::other(
                                "the backup cannot be decrypted: wrong token, or the file was altered",
                            )
                        })?;
                    self.done = true;
                    Vec::new()
                }
            };
            self.plain = opened;
            self.pos = 0;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs `write` with a writer that wraps what it writes as `wrapping` says, into `out`.
pub fn write_wrapped<T>(
    out: &mut dyn Write,
    wrapping: Wrapping<'_>,
    write: impl FnOnce(&mut dyn Write) -> io::Result<T>,
) -> io::Result<T> {
    if !wrapping.compress && wrapping.token.is_none() && wrapping.at_rest_keys.is_none() {
        return write(out);
    }
    let mut flags = 0;
    if wrapping.compress {
        flags |= ZSTD;
    }
    if wrapping.token.is_some() {
        flags |= ENCRYPTED;
    }
    if wrapping.at_rest_keys.is_some() {
        flags |= AT_REST_KEYS;
    }
    out.write_all(MAGIC)?;
    out.write_all(&[flags])?;
    // The body: the keys block, then the snapshot.
    let keys = wrapping.at_rest_keys;
    let write = move |body: &mut dyn Write| -> io::Result<T> {
        if let Some(keys) = keys {
            let len = u32::try_from(keys.len())
                .ok()
                .filter(|len| (*len as usize) <= MAX_KEYS_BYTES)
                .ok_or_else(|| io::Error::other("the at-rest key file is too large"))?;
            body.write_all(&len.to_be_bytes())?;
            body.write_all(keys.as_bytes())?;
        }
        write(body)
    };
    let Some(token) = wrapping.token else {
        if !wrapping.compress {
            return write(out);
        }
        let mut encoder = zstd::Encoder::new(out, 3)?;
        let value = write(&mut encoder)?;
        encoder.finish()?;
        return Ok(value);
    };
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| io::Error::other("no randomness"))?;
    out.write_all(&salt)?;
    let mut sealer = Sealer {
        inner: out,
        key: key(token, &salt)?,
        buffer: Vec::with_capacity(FRAME),
        counter: 0,
    };
    if wrapping.compress {
        let mut encoder = zstd::Encoder::new(sealer, 3)?;
        let value = write(&mut encoder)?;
        encoder.finish()?.finish()?;
        Ok(value)
    } else {
        let value = write(&mut sealer)?;
        sealer.finish()?;
        Ok(value)
    }
}

/// Opens a backup file for reading its snapshot, unwrapping compression and encryption.
pub fn open(path: &Path, token: Option<&str>) -> io::Result<Opened> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut head = [0u8; 10];
    let mut got = 0;
    while got < head.len() {
        let n = file.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got < head.len() || &head[..9] != MAGIC {
        return Ok(Opened {
            snapshot: Box::new(io::Cursor::new(head[..got].to_vec()).chain(file)),
            at_rest_keys: None,
        });
    }
    let flags = head[9];
    let body: Box<dyn Read> = if flags & ENCRYPTED != 0 {
        let token = token.ok_or_else(|| {
            io::Error::other("this backup is encrypted: pass the cluster's token (--token, or --data with DATA/token)")
        })?;
        let mut salt = [0u8; 16];
        file.read_exact(&mut salt)?;
        Box::new(Opener {
            inner: file,
            key: key(token, &salt)?,
            plain: Vec::new(),
            pos: 0,
            counter: 0,
            done: false,
        })
    } else {
        Box::new(file)
    };
    let mut body: Box<dyn Read> = if flags & ZSTD != 0 {
        Box::new(zstd::Decoder::new(body)?)
    } else {
        body
    };
    let at_rest_keys = if flags & AT_REST_KEYS != 0 {
        Some(read_keys(&mut body)?)
    } else {
        None
    };
    Ok(Opened {
        snapshot: body,
        at_rest_keys,
    })
}

fn read_keys(body: &mut dyn Read) -> io::Result<String> {
    let mut len = [0u8; 4];
    body.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_KEYS_BYTES {
        return Err(io::Error::other(
            "the backup is corrupt (its at-rest keys block is too long)",
        ));
    }
    let mut text = vec![0u8; len];
    body.read_exact(&mut text)?;
    String::from_utf8(text)
        .map_err(|_| io::Error::other("the backup is corrupt (its at-rest keys are not text)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(wrapping: Wrapping<'_>, token: Option<&str>, data: &[u8]) -> io::Result<Vec<u8>> {
        round_trip_with_keys(wrapping, token, data).map(|(data, _)| data)
    }

    fn round_trip_with_keys(
        wrapping: Wrapping<'_>,
        token: Option<&str>,
        data: &[u8],
    ) -> io::Result<(Vec<u8>, Option<String>)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("b.snap");
        let mut file = File::create(&path)?;
        write_wrapped(&mut file, wrapping, |w| w.write_all(data))?;
        drop(file);
        let mut out = Vec::new();
        let mut opened = open(&path, token)?;
        opened.snapshot.read_to_end(&mut out)?;
        Ok((out, opened.at_rest_keys))
    }

    #[test]
    fn every_wrapping_round_trips_and_wrong_tokens_fail() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let keys = "aesgcm skiff-1 AAAA\n";
        for (compress, token) in [
            (false, None),
            (true, None),
            (false, Some("t0k")),
            (true, Some("t0k")),
        ] {
            for at_rest_keys in [None, Some(keys)] {
                let w = Wrapping {
                    compress,
                    token,
                    at_rest_keys,
                };
                assert_eq!(
                    round_trip_with_keys(w, token, &data).expect("round trip"),
                    (data.clone(), at_rest_keys.map(str::to_string)),
                    "{w:?}"
                );
            }
        }
        let sealed = Wrapping {
            compress: false,
            token: Some("right"),
            at_rest_keys: Some(keys),
        };
        assert!(round_trip(sealed, Some("wrong"), &data).is_err());
        assert!(round_trip(sealed, None, &data).is_err());
    }

    #[test]
    fn a_truncated_encrypted_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("b.snap");
        let mut file = File::create(&path).expect("create");
        let w = Wrapping {
            compress: false,
            token: Some("t"),
            at_rest_keys: None,
        };
        write_wrapped(&mut file, w, |w| w.write_all(&vec![7u8; 200_000])).expect("write");
        drop(file);
        let len = std::fs::metadata(&path).expect("meta").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(len - 100).expect("truncate");
        let mut out = Vec::new();
        assert!(
            open(&path, Some("t"))
                .expect("open")
                .snapshot
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
