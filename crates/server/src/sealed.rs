//! Secrets at rest: environment-variable values and VM agent tokens are sealed (XChaCha20-Poly1305)
//! before they reach the store, with a key kept in `<data-dir>/secret.key` (mode 0600). A copy of
//! the database alone reveals none of them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Keys the digests of secrets (derived from the secrets key, never the key itself).
    digest_key: [u8; 32],
    /// A digest of the key that reveals nothing of it: servers sharing a database compare it.
    check: String,
}

impl Sealer {
    /// Reads the key, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        let key = match std::fs::read(path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = XChaCha20Poly1305::generate_key(&mut OsRng);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                f.write_all(&key)?;
                f.sync_all()?;
                tracing::info!("secrets key: created {} (mode 0600)", path.display());
                key.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if key.len() != 32 {
            bail!("{} is not a 32-byte key; restore it from a backup (the secrets sealed with it cannot be read otherwise)", path.display());
        }
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"warmpool secrets key check\0");
        h.update(key);
        let mut d = Sha256::new();
        d.update(b"warmpool digest key\0");
        d.update(key);
        Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
            check: hex::encode(h.finalize()),
            digest_key: d.finalize().into(),
        }
    }

    /// A keyed digest (HMAC-SHA256, hex) of `parts`: equal inputs give equal digests on every
    /// server sharing the key, and a digest reveals nothing of a secret in them — not even to
    /// someone guessing it, without the key.
    pub fn digest(&self, parts: &[&str]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.digest_key)
            .expect("HMAC takes keys of any length");
        for p in parts {
            // Length-prefixed, so no two lists of parts read the same.
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// See [`Sealer::check`]'s field.
    pub fn key_check(&self) -> &str {
        &self.check
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("encryption with a valid key cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        )
    }

    /// Opens a sealed value. A value stored before sealing existed is returned as it is.
    pub fn open(&self, stored: &str) -> anyhow::Result<String> {
        let Some(b64) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .context("a sealed value is corrupt")?;
        if bytes.len() < NONCE_LEN {
            bail!("a sealed value is too short");
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| anyhow::anyhow!("a sealed value does not open with this server's key (was secret.key replaced?)"))?;
        String::from_utf8(plain).context("a sealed value is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens() {
        let s = Sealer::from_key(&[7u8; 32]);
        let a = s.seal("hunter2 'quoted' ünï\n");
        let b = s.seal("hunter2 'quoted' ünï\n");
        assert_ne!(a, b, "a fresh nonce every time");
        assert!(!a.contains("hunter2"));
        assert_eq!(s.open(&a).unwrap(), "hunter2 'quoted' ünï\n");
        assert_eq!(s.open("legacy plain").unwrap(), "legacy plain");
        assert!(Sealer::from_key(&[8u8; 32]).open(&a).is_err());
        assert_eq!(s.digest(&["a", "bc"]), s.digest(&["a", "bc"]));
        assert_ne!(s.digest(&["a", "bc"]), s.digest(&["ab", "c"]));
        assert_ne!(
            s.digest(&["a"]),
            Sealer::from_key(&[8u8; 32]).digest(&["a"])
        );
    }
}
