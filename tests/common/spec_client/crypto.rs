//! The payload crypto the NIC and GSTN specifications prescribe, written against the RustCrypto
//! crates directly so that the test clients share no code with the gateway they test.
//!
//! Every primitive is standard base64 (with padding), RSA PKCS#1 v1.5, AES-256 in ECB mode with
//! PKCS#7 padding, or HMAC-SHA256. Failures are [`ClientError::Crypto`]: a test that feeds a
//! wrong key or a forged MAC must be able to tell them from an API refusal.

use aes::Aes256;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cipher::block_padding::Pkcs7;
use cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit};
use hmac::{Hmac, Mac};
use rand::distributions::{Alphanumeric, Distribution};
use rand::RngCore;
use rsa::{Pkcs1v15Encrypt, RsaPublicKey};
use sha2::Sha256;

use super::ClientError;

/// An AES-256 key (AppKey, SEK, REK): always exactly 32 bytes.
pub type Key = [u8; 32];

fn crypto(what: impl Into<String>) -> ClientError {
    ClientError::Crypto(what.into())
}

/// Standard base64 with padding, as both specifications use.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64; `what` names the field for the error.
pub fn unb64(text: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    B64.decode(text.trim())
        .map_err(|_| crypto(format!("{what} is not base64")))
}

/// 32 random bytes: NIC's `AppKey` (e-invoice, e-way bill).
pub fn random_key() -> Key {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// 32 random alphanumeric ASCII characters: GSTN's `app_key`, whose characters are the key bytes.
pub fn random_ascii_key() -> Key {
    let mut k = [0u8; 32];
    let mut rng = rand::rngs::OsRng;
    for b in &mut k {
        *b = Alphanumeric.sample(&mut rng);
    }
    k
}

/// Reads the server's public key: a PEM `PUBLIC KEY` (NIC ships this), a PEM `RSA PUBLIC KEY`,
/// or a PEM X.509 `CERTIFICATE` (GSTN ships this).
pub fn public_key_from_pem(pem: &str) -> Result<RsaPublicKey, ClientError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use x509_cert::der::{Decode, Encode};

    let pem = pem.trim();
    let bad = |e: &dyn std::fmt::Display| crypto(format!("public key: {e}"));
    if pem.contains("BEGIN CERTIFICATE") {
        let (label, der) = x509_cert::der::pem::decode_vec(pem.as_bytes()).map_err(|e| bad(&e))?;
        if label != "CERTIFICATE" {
            return Err(crypto(format!("public key: PEM label {label}")));
        }
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| bad(&e))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| bad(&e))?;
        return RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(&e));
    }
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        return RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| bad(&e));
    }
    RsaPublicKey::from_public_key_pem(pem).map_err(|e| bad(&e))
}

/// B64(RSA-PKCS#1 v1.5(key, plain)).
pub fn rsa_encrypt_b64(key: &RsaPublicKey, plain: &[u8]) -> Result<String, ClientError> {
    key.encrypt(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, plain)
        .map(|c| b64(&c))
        .map_err(|e| crypto(format!("RSA encryption: {e}")))
}

/// AES-256-ECB-PKCS7 encryption.
pub fn aes_encrypt(key: &Key, plain: &[u8]) -> Vec<u8> {
    ecb::Encryptor::<Aes256>::new(key.into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// B64(AES-256-ECB-PKCS7(key, plain)).
pub fn aes_encrypt_b64(key: &Key, plain: &[u8]) -> String {
    b64(&aes_encrypt(key, plain))
}

/// Decrypts B64(AES-256-ECB-PKCS7(key, …)); `what` names the field for the error.
pub fn aes_decrypt_b64(key: &Key, text: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    let cipher = unb64(text, what)?;
    ecb::Decryptor::<Aes256>::new(key.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&cipher)
        .map_err(|_| {
            crypto(format!(
                "{what} does not decrypt (wrong key or corrupt ciphertext)"
            ))
        })
}

/// Decrypts a wrapped key (SEK under the AppKey, REK under the SEK): the plaintext must be
/// exactly 32 bytes, or the wrong key was used.
pub fn unwrap_key_b64(key: &Key, text: &str, what: &str) -> Result<Key, ClientError> {
    let plain = aes_decrypt_b64(key, text, what)?;
    let len = plain.len();
    plain
        .try_into()
        .map_err(|_| crypto(format!("{what} decrypts to {len} bytes, not a 32-byte key")))
}

fn mac(key: &Key, message: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    m.update(message);
    m
}

/// B64(HMAC-SHA256(key, message)).
pub fn hmac_b64(key: &Key, message: &[u8]) -> String {
    b64(&mac(key, message).finalize().into_bytes())
}

/// Checks B64(HMAC-SHA256(key, message)) in constant time (`verify_slice`), so a client that
/// verifies replies leaks nothing about how much of a forged MAC was right.
pub fn verify_hmac_b64(key: &Key, message: &[u8], expected_b64: &str) -> Result<(), ClientError> {
    let expected = unb64(expected_b64, "hmac")?;
    mac(key, message)
        .verify_slice(&expected)
        .map_err(|_| crypto("hmac does not match the decrypted data"))
}
