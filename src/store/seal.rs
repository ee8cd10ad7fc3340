//! Sealing record values: AES-256-GCM with a random 96-bit nonce per write and the record's
//! key name as associated data, so a value copied under another key does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore as _;
use zeroize::Zeroizing;

/// The format byte in front of every sealed value, so a later format can be told apart.
const FORMAT: u8 = 1;
/// AES-GCM's standard nonce length.
const NONCE_LEN: usize = 12;
/// The length of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Too short, or a format this version does not know.
    #[error("not a sealed value of a known format")]
    Format,
    /// Neither key opens it: another key, another record's name, or altered bytes.
    #[error("does not open under the configured keys (another key, or altered)")]
    Key,
}

/// Under which key a value opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The current key.
    Current,
    /// The previous key: the value should be rewritten under the current one.
    Previous,
}

/// The current key, which seals and opens, and optionally the previous one, which only opens.
pub struct Sealer {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

impl Sealer {
    /// A sealer from the raw bytes of the current and previous keys.
    pub fn new(current: &[u8; KEY_LEN], previous: Option<&[u8; KEY_LEN]>) -> Self {
        Self {
            current: Aes256Gcm::new(current.into()),
            previous: previous.map(|k| Aes256Gcm::new(k.into())),
        }
    }

    /// Whether a previous key is configured, so records may still be sealed under it.
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// Seals `plain` under the current key, bound to the record name `aad`. Fails only for
    /// inputs of gigabytes.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, aes_gcm::Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        let ct = self
            .current
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed value stored under the record name `aad`.
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, Opened), OpenError> {
        let (&format, rest) = sealed.split_first().ok_or(OpenError::Format)?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return Err(OpenError::Format);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::from_slice(nonce);
        let payload = || Payload { msg: ct, aad };
        if let Ok(plain) = self.current.decrypt(nonce, payload()) {
            return Ok((Zeroizing::new(plain), Opened::Current));
        }
        match &self.previous {
            Some(previous) => previous
                .decrypt(nonce, payload())
                .map(|plain| (Zeroizing::new(plain), Opened::Previous))
                .map_err(|_| OpenError::Key),
            None => Err(OpenError::Key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; KEY_LEN] = [7; KEY_LEN];
    const B: [u8; KEY_LEN] = [9; KEY_LEN];

    #[test]
    fn a_sealed_value_round_trips_and_hides_its_plaintext() {
        let s = Sealer::new(&A, None);
        let sealed = s.seal(b"k1", b"secret token").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let (plain, how) = s.open(b"k1", &sealed).unwrap();
        assert_eq!(&plain[..], b"secret token");
        assert_eq!(how, Opened::Current);
        // A fresh nonce per write: the same value seals differently each time.
        assert_ne!(s.seal(b"k1", b"secret token").unwrap(), sealed);
    }

    #[test]
    fn a_value_moved_to_another_key_name_does_not_open() {
        let s = Sealer::new(&A, None);
        let sealed = s.seal(b"einvoice:27AAPFU0939F1ZV:u1", b"x").unwrap();
        assert_eq!(
            s.open(b"einvoice:27AAPFU0939F1ZV:u2", &sealed).unwrap_err(),
            OpenError::Key
        );
    }

    #[test]
    fn a_wrong_key_or_altered_bytes_do_not_open() {
        let sealed = Sealer::new(&A, None).seal(b"k", b"value").unwrap();
        assert_eq!(
            Sealer::new(&B, None).open(b"k", &sealed).unwrap_err(),
            OpenError::Key
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            Sealer::new(&A, None).open(b"k", &altered).unwrap_err(),
            OpenError::Key
        );
        assert_eq!(
            Sealer::new(&A, None)
                .open(b"k", &[FORMAT, 1, 2])
                .unwrap_err(),
            OpenError::Format
        );
        assert_eq!(
            Sealer::new(&A, None).open(b"k", &[]).unwrap_err(),
            OpenError::Format
        );
    }

    #[test]
    fn the_previous_key_opens_and_says_so() {
        let sealed = Sealer::new(&A, None).seal(b"k", b"value").unwrap();
        let rotated = Sealer::new(&B, Some(&A));
        let (plain, how) = rotated.open(b"k", &sealed).unwrap();
        assert_eq!(&plain[..], b"value");
        assert_eq!(how, Opened::Previous);
        let (_, how) = rotated
            .open(b"k", &rotated.seal(b"k", b"value").unwrap())
            .unwrap();
        assert_eq!(how, Opened::Current);
    }
}
