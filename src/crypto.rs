//! The payload cryptography of the GST APIs.
//!
//! NIC and GSTN use the same small toolbox: RSA PKCS#1 v1.5 to send the login payload to the
//! upstream's public key, AES-256-ECB with PKCS#7 padding for everything after it (the SEK
//! wrapped in the AppKey, data wrapped in the SEK, the REK wrapped in the SEK), and
//! HMAC-SHA256 to authenticate GET responses. ECB is what the upstreams mandate; it is not a
//! choice this crate would make for itself.
//!
//! Every function here takes untrusted input from the network: errors, never panics.

use aes::Aes256;
use cipher::block_padding::Pkcs7;
use cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rsa::pkcs1v15::Pkcs1v15Encrypt;
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length in bytes of every AES key the GST APIs use (AppKey, SEK, REK).
pub const KEY_LEN: usize = 32;

/// PKCS#1 v1.5 padding takes 11 bytes of every RSA block.
const PKCS1_OVERHEAD: usize = 11;

/// Why a cryptographic operation failed; carries no key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The text was not valid base64.
    #[error("invalid base64")]
    Base64,
    /// A key had the wrong length.
    #[error("key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// AES decryption failed: wrong key, truncated data or bad padding.
    #[error("AES decryption failed (wrong key or corrupt data)")]
    Decrypt,
    /// The plaintext does not fit in one RSA block of this key.
    #[error("payload of {len} bytes exceeds the RSA key's limit of {max} bytes")]
    RsaTooLong {
        /// Plaintext length.
        len: usize,
        /// Largest plaintext the key can take.
        max: usize,
    },
    /// The RSA operation itself failed.
    #[error("RSA operation failed")]
    Rsa,
    /// The key file could not be parsed as a PEM public key or X.509 certificate.
    #[error("not a PEM public key or X.509 certificate: {0}")]
    KeyFormat(String),
    /// An HMAC did not match its message.
    #[error("HMAC mismatch")]
    HmacMismatch,
}

/// A 32-byte AES-256 key that is wiped from memory when dropped.
#[derive(Clone)]
pub struct AesKey(Zeroizing<[u8; KEY_LEN]>);

impl AesKey {
    /// A fresh key from the operating system's CSPRNG (an e-invoice / e-way bill AppKey).
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// A key from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyLength(bytes.len()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Base64 of the raw bytes, as the e-invoice and e-way bill logins send the AppKey.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(b64_encode(self.0.as_ref()))
    }

    /// AES-256-ECB/PKCS#7 encryption under this key.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        ecb::Encryptor::<Aes256>::new(self.0.as_ref().into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
    }

    /// AES-256-ECB/PKCS#7 decryption under this key.
    pub fn decrypt(&self, cipher: &[u8]) -> Result<Vec<u8>, CryptoError> {
        ecb::Decryptor::<Aes256>::new(self.0.as_ref().into())
            .decrypt_padded_vec_mut::<Pkcs7>(cipher)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Encrypts and base64-encodes: the `Data` field of a request.
    pub fn encrypt_b64(&self, plain: &[u8]) -> String {
        b64_encode(&self.encrypt(plain))
    }

    /// Base64-decodes and decrypts: the `Data` field of a response.
    pub fn decrypt_b64(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        // In place in the decoded buffer: a second, zeroed copy of a reply's `Data` cost about
        // as much as the AES itself.
        let mut buf = b64_decode(text)?;
        let len = ecb::Decryptor::<Aes256>::new(self.0.as_ref().into())
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Unwraps a key that was AES-encrypted under this key and base64-encoded (SEK, REK).
    pub fn unwrap_key(&self, wrapped_b64: &str) -> Result<AesKey, CryptoError> {
        let plain = Zeroizing::new(self.decrypt_b64(wrapped_b64)?);
        AesKey::from_slice(&plain)
    }

    /// HMAC-SHA256 of `message` under this key.
    pub fn hmac(&self, message: &[u8]) -> [u8; 32] {
        self.hmac_mac(message).finalize().into_bytes().into()
    }

    /// HMAC-SHA256 of `message` under this key, base64-encoded.
    pub fn hmac_b64(&self, message: &[u8]) -> String {
        b64_encode(&self.hmac_mac(message).finalize().into_bytes())
    }

    /// Verifies a base64 HMAC-SHA256 in constant time.
    pub fn verify_hmac_b64(&self, message: &[u8], expected_b64: &str) -> Result<(), CryptoError> {
        let expected = b64_decode(expected_b64).map_err(|_| CryptoError::HmacMismatch)?;
        self.hmac_mac(message)
            .verify_slice(&expected)
            .map_err(|_| CryptoError::HmacMismatch)
    }

    fn hmac_mac(&self, message: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(message);
        mac
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Base64 decoding of upstream text (surrounding whitespace ignored), padded and canonical as
/// the `base64` crate's standard engine requires.
///
/// The payloads (a reply's `Data` is kilobytes) go through a vector decoder picked for the CPU
/// at run time: on the benchmark machine a reply's `Data` decodes in a quarter of the scalar
/// engine's time. `tests/fuzz.rs` checks that it accepts and refuses exactly what that engine
/// does, on the code path of the CPU the tests run on (AVX2 on x86-64 machines that have it).
pub fn b64_decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    base64_simd::STANDARD
        .decode_to_vec(text.trim().as_bytes())
        .map_err(|_| CryptoError::Base64)
}

/// Standard base64 encoding (padded), by the same vector code as [`b64_decode`].
pub fn b64_encode(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// An upstream's RSA public key, used to encrypt login payloads.
#[derive(Clone, Debug)]
pub struct PublicKey(RsaPublicKey);

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), a PEM `RSA PUBLIC KEY`, or a PEM or DER
    /// X.509 certificate — NIC ships the former, GSTN the latter.
    pub fn from_pem_or_cert(bytes: &[u8]) -> Result<Self, CryptoError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use x509_cert::der::{pem, Decode};

        let text = std::str::from_utf8(bytes).ok();
        if let Some(text) = text {
            if text.contains("BEGIN PUBLIC KEY") {
                return RsaPublicKey::from_public_key_pem(text.trim())
                    .map(Self)
                    .map_err(|e| CryptoError::KeyFormat(e.to_string()));
            }
            if text.contains("BEGIN RSA PUBLIC KEY") {
                return RsaPublicKey::from_pkcs1_pem(text.trim())
                    .map(Self)
                    .map_err(|e| CryptoError::KeyFormat(e.to_string()));
            }
            if text.contains("BEGIN CERTIFICATE") {
                // PEM to DER first, then DER: `Certificate::from_pem` reads through der 0.7's
                // streaming PEM reader, which loops forever when the data ends inside a length.
                let (label, der) = pem::decode_vec(text.trim().as_bytes())
                    .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
                if label != "CERTIFICATE" {
                    return Err(CryptoError::KeyFormat(format!(
                        "expected a CERTIFICATE, found {label}"
                    )));
                }
                let cert = x509_cert::Certificate::from_der(&der)
                    .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
                return Self::from_cert(&cert);
            }
        }
        if let Ok(cert) = x509_cert::Certificate::from_der(bytes) {
            return Self::from_cert(&cert);
        }
        RsaPublicKey::from_public_key_der(bytes)
            .map(Self)
            .map_err(|_| {
                CryptoError::KeyFormat("expected PEM PUBLIC KEY or CERTIFICATE".to_string())
            })
    }

    fn from_cert(cert: &x509_cert::Certificate) -> Result<Self, CryptoError> {
        use x509_cert::der::Encode;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
        RsaPublicKey::from_public_key_der(&spki)
            .map(Self)
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }

    /// Largest plaintext one PKCS#1 v1.5 block of this key takes (245 bytes for 2048 bits).
    pub fn max_plaintext(&self) -> usize {
        self.0.size().saturating_sub(PKCS1_OVERHEAD)
    }

    /// RSA-PKCS#1 v1.5 encryption, refusing over-long input instead of failing inside RSA.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let max = self.max_plaintext();
        if plain.len() > max {
            return Err(CryptoError::RsaTooLong {
                len: plain.len(),
                max,
            });
        }
        self.0
            .encrypt(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, plain)
            .map_err(|_| CryptoError::Rsa)
    }

    /// PEM (SubjectPublicKeyInfo) text of this key.
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }
}

/// An RSA key pair: the simulator's, playing the upstream's side of the login, and gstgate's
/// own drop-in key, with which unmodified clients log in to gstgate.
pub struct KeyPair(RsaPrivateKey);

impl KeyPair {
    /// Generates a fresh 2048-bit key pair (the size NIC and GSTN use).
    pub fn generate() -> Result<Self, CryptoError> {
        RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .map(Self)
            .map_err(|_| CryptoError::Rsa)
    }

    /// Parses a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, CryptoError> {
        use rsa::pkcs8::DecodePrivateKey;
        RsaPrivateKey::from_pkcs8_pem(text)
            .map(Self)
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }

    /// PKCS#8 PEM text of the private key (wiped when dropped).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.to_public_key())
    }

    /// RSA-PKCS#1 v1.5 decryption, blinded: the ciphertext comes from the network, and
    /// blinding keeps the private-key operation's timing from depending on it.
    pub fn decrypt(&self, cipher: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.0
            .decrypt_blinded(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, cipher)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Rsa)
    }
}

/// A GSTN-style app key: 32 random alphanumeric characters whose ASCII bytes are the AES key.
pub fn gstn_app_key() -> AesKey {
    use rand::distributions::{Alphanumeric, Distribution};
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    let mut rng = rand::rngs::OsRng;
    for b in k.iter_mut() {
        *b = Alphanumeric.sample(&mut rng);
    }
    AesKey(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_round_trip_and_wrong_key_fails() {
        let k = AesKey::random();
        let c = k.encrypt_b64(br#"{"a":1}"#);
        assert_eq!(k.decrypt_b64(&c).unwrap(), br#"{"a":1}"#);
        let other = AesKey::random();
        // A wrong key almost always yields bad padding; if by chance it does not, the bytes differ.
        match other.decrypt_b64(&c) {
            Err(e) => assert_eq!(e, CryptoError::Decrypt),
            Ok(p) => assert_ne!(p, br#"{"a":1}"#),
        }
        assert_eq!(k.decrypt_b64("not base64!"), Err(CryptoError::Base64));
        assert_eq!(k.decrypt(&[1, 2, 3]), Err(CryptoError::Decrypt));
    }

    #[test]
    fn aes_matches_known_vector() {
        // NIST SP 800-38A F.1.5 ECB-AES256 block 1, followed by one block of PKCS#7 padding.
        let key = AesKey::from_slice(&hex(
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        ))
        .unwrap();
        let c = key.encrypt(&hex("6bc1bee22e409f96e93d7e117393172a"));
        assert_eq!(&c[..16], hex("f3eed1bdb5d2a03c064b5a7e3db181f8").as_slice());
        assert_eq!(c.len(), 32);
    }

    #[test]
    fn key_wrapping_round_trip() {
        let app = AesKey::random();
        let sek = AesKey::random();
        let wrapped = app.encrypt_b64(sek.as_bytes());
        assert_eq!(app.unwrap_key(&wrapped).unwrap().as_bytes(), sek.as_bytes());
        let short = app.encrypt_b64(&[1u8; 16]);
        assert_eq!(
            app.unwrap_key(&short).unwrap_err(),
            CryptoError::KeyLength(16)
        );
    }

    #[test]
    fn rsa_round_trip_and_length_limit() {
        let pair = KeyPair::generate().unwrap();
        let public =
            PublicKey::from_pem_or_cert(pair.public_key().to_pem().unwrap().as_bytes()).unwrap();
        assert_eq!(public.max_plaintext(), 245);
        let c = public.encrypt(b"hello").unwrap();
        assert_eq!(pair.decrypt(&c).unwrap().as_slice(), b"hello");
        assert_eq!(
            public.encrypt(&[0u8; 246]).unwrap_err(),
            CryptoError::RsaTooLong { len: 246, max: 245 }
        );
        let pem = pair.to_pkcs8_pem().unwrap();
        assert!(KeyPair::from_pkcs8_pem(&pem).is_ok());
    }

    #[test]
    fn garbage_key_files_are_errors() {
        assert!(PublicKey::from_pem_or_cert(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        )
        .is_err());
        assert!(PublicKey::from_pem_or_cert(b"hello").is_err());
    }

    #[test]
    fn pem_data_ending_inside_a_length_is_an_error_not_a_hang() {
        // Found by tests/fuzz.rs: "MIIC" is 30 82 02, a SEQUENCE whose two-byte length is cut
        // short. der's streaming PEM reader looped forever on it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for label in ["CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"] {
                let pem = format!("-----BEGIN {label}-----\nMIIC\n-----END {label}-----\n");
                let _ = tx.send((label, PublicKey::from_pem_or_cert(pem.as_bytes()).is_err()));
            }
        });
        for label in ["CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"] {
            let got = rx.recv_timeout(std::time::Duration::from_secs(30));
            assert_eq!(got, Ok((label, true)), "{label}: no error within 30 s");
        }
    }

    #[test]
    fn hmac_verifies_and_rejects_tampering() {
        let k = AesKey::random();
        let mac = k.hmac_b64(b"eyJhIjoxfQ==");
        assert!(k.verify_hmac_b64(b"eyJhIjoxfQ==", &mac).is_ok());
        assert_eq!(
            k.verify_hmac_b64(b"eyJhIjoyfQ==", &mac),
            Err(CryptoError::HmacMismatch)
        );
        assert_eq!(
            k.verify_hmac_b64(b"x", "%%%"),
            Err(CryptoError::HmacMismatch)
        );
    }

    #[test]
    fn gstn_app_key_is_alphanumeric_ascii() {
        let k = gstn_app_key();
        assert!(k.as_bytes().iter().all(|b| b.is_ascii_alphanumeric()));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
