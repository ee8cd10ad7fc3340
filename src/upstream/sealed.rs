//! The action/data payloads of NIC e-way bill and GSTN, shared by both
//! profiles.
//!
//! Requests are `{"action": …, "data": <encrypted JSON>}`; GSTN adds one base64 layer inside
//! the encryption and an HMAC beside it. Some replies are *sealed*: `rek` is a response key
//! under the SEK, `data` is encrypted with the REK, and `hmac` is HMAC-SHA256 under the REK of
//! the base64 text of the JSON. A reply whose HMAC does not verify is refused, never passed on:
//! it is either tampered with or decrypted with the wrong key.

use serde_json::value::{to_raw_value, RawValue};

use super::envelope::Envelope;
use crate::crypto::{b64_decode, b64_encode, AesKey};
use crate::json::Json;
use crate::problem::GatewayError;

/// Whether the encrypted `data` holds the JSON itself or its base64 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// `AES(key, JSON)` — NIC e-way bill.
    Json,
    /// `AES(key, B64(JSON))` — GSTN.
    Base64Json,
}

fn raw_string(text: &str) -> Result<Box<RawValue>, GatewayError> {
    to_raw_value(text).map_err(|e| GatewayError::Internal(e.to_string()))
}

fn bad(what: String) -> GatewayError {
    GatewayError::UpstreamBadResponse(what)
}

/// Encrypts the `data` member of a caller's `{"action": …, "data": {…}}` with the SEK; with
/// `hmac`, adds GSTN's `hmac` of the base64 text under the SEK. Other members pass unchanged.
pub fn seal_request(
    body: &[u8],
    sek: &AesKey,
    layers: Layers,
    hmac: bool,
) -> Result<Vec<u8>, GatewayError> {
    let mut envelope = Envelope::parse(body).ok_or_else(|| {
        GatewayError::BodyInvalid(
            "expected a JSON object like {\"action\": \"…\", \"data\": {…}}".into(),
        )
    })?;
    if envelope.get::<String>("action").is_none() {
        return Err(GatewayError::BodyInvalid(
            "the body needs an `action` string (e.g. \"GENEWAYBILL\")".into(),
        ));
    }
    let data = envelope
        .raw("data")
        .map(|raw| raw.trim_start().to_owned())
        .ok_or_else(|| GatewayError::BodyInvalid("the body needs a `data` member".into()))?;
    if !(data.starts_with('{') || data.starts_with('[')) {
        return Err(GatewayError::BodyInvalid(
            "`data` must be the plain JSON object; gstgate encrypts it".into(),
        ));
    }
    let (sealed, mac) = match layers {
        Layers::Json => (sek.encrypt_b64(data.as_bytes()), None),
        Layers::Base64Json => {
            let inner = b64_encode(data.as_bytes());
            let mac = hmac.then(|| sek.hmac_b64(inner.as_bytes()));
            (sek.encrypt_b64(inner.as_bytes()), mac)
        }
    };
    envelope.set("data", raw_string(&sealed)?);
    if let Some(mac) = mac {
        envelope.set("hmac", raw_string(&mac)?);
    }
    Ok(envelope.to_vec())
}

/// Decrypts `data` in a reply envelope and puts the JSON value in its place. A sealed reply
/// (with `rek`) is opened with the REK after its HMAC is verified, and `rek`/`hmac` are removed
/// (they mean nothing to the caller); otherwise `data` is decrypted with the SEK.
pub fn open_reply(
    envelope: &mut Envelope<'_>,
    sek: &AesKey,
    layers: Layers,
) -> Result<(), GatewayError> {
    let Some(data) = envelope.str("data") else {
        return Ok(());
    };
    let (json, sealed) = match envelope.str("rek") {
        Some(rek) => {
            let hmac = envelope
                .str("hmac")
                .ok_or_else(|| bad("a sealed reply (rek) has no hmac".into()))?;
            let rek = sek
                .unwrap_key(&rek)
                .map_err(|e| bad(format!("rek does not decrypt with the session key: {e}")))?;
            (unwrap_layers(&rek, &data, layers, Some(&hmac))?, true)
        }
        None => (unwrap_layers(sek, &data, layers, None)?, false),
    };
    if sealed {
        envelope.remove("rek");
        envelope.remove("hmac");
    }
    let json = String::from_utf8(json).map_err(|_| bad("decrypted data is not UTF-8".into()))?;
    let value = Json::parse(json).map_err(|_| bad("decrypted data is not JSON".into()))?;
    envelope.set("data", value);
    Ok(())
}

/// Drop-in: opens a caller's `{"action": …, "data": <encrypted>}` (and GSTN's `hmac`, checked
/// when present) into the plain `{"action": …, "data": {…}}` that [`seal_request`] takes.
/// `None`: the body is not that, or does not open with `sek`.
pub fn open_request(body: &[u8], sek: &AesKey, layers: Layers) -> Option<Vec<u8>> {
    let mut envelope = Envelope::parse(body)?;
    envelope.get::<String>("action")?;
    let data = envelope.str("data")?;
    let hmac = envelope.str("hmac");
    let plain = sek.decrypt_b64(&data).ok()?;
    let json = match layers {
        Layers::Json => plain,
        Layers::Base64Json => {
            let text = String::from_utf8(plain).ok()?;
            if let Some(mac) = &hmac {
                sek.verify_hmac_b64(text.trim().as_bytes(), mac).ok()?;
            }
            b64_decode(text.trim()).ok()?
        }
    };
    let value = Json::parse(String::from_utf8(json).ok()?).ok()?;
    envelope.set("data", value);
    envelope.remove("hmac");
    Some(envelope.to_vec())
}

/// Drop-in: seals the plain `data` of a reply for the caller, the way the API sends it: with
/// `rek`, under a fresh REK wrapped in `sek`, with the HMAC beside it; without, under `sek`.
/// A reply with no JSON `data` goes back as it is.
pub fn seal_reply(plain: &[u8], sek: &AesKey, layers: Layers, rek: bool) -> Vec<u8> {
    let Some(mut envelope) = Envelope::parse(plain) else {
        return plain.to_vec();
    };
    let Some(data) = envelope.raw("data").map(|raw| raw.trim().to_owned()) else {
        return plain.to_vec();
    };
    if !(data.starts_with('{') || data.starts_with('[')) {
        return plain.to_vec();
    }
    let encoded = b64_encode(data.as_bytes());
    let inner = match layers {
        Layers::Json => data.as_bytes(),
        Layers::Base64Json => encoded.as_bytes(),
    };
    let mut members = Vec::with_capacity(3);
    if rek {
        let rek = AesKey::random();
        members.push(("rek", b64_encode(&sek.encrypt(rek.as_bytes()))));
        members.push(("data", rek.encrypt_b64(inner)));
        members.push(("hmac", rek.hmac_b64(encoded.as_bytes())));
    } else {
        members.push(("data", sek.encrypt_b64(inner)));
    }
    for (key, text) in members {
        match raw_string(&text) {
            Ok(value) => envelope.set(key, value),
            Err(_) => return plain.to_vec(),
        }
    }
    envelope.to_vec()
}

/// Decrypts `data` with `key`, strips GSTN's base64 layer, and checks `hmac` over the base64
/// text of the JSON when one is given.
fn unwrap_layers(
    key: &AesKey,
    data: &str,
    layers: Layers,
    hmac: Option<&str>,
) -> Result<Vec<u8>, GatewayError> {
    let plain = key
        .decrypt_b64(data)
        .map_err(|e| bad(format!("data does not decrypt: {e}")))?;
    let (json, encoded) = match layers {
        Layers::Json => {
            let encoded = hmac.map(|_| b64_encode(&plain));
            (plain, encoded)
        }
        Layers::Base64Json => {
            let text = String::from_utf8(plain)
                .map_err(|_| bad("decrypted data is not base64 text".into()))?;
            let json =
                b64_decode(&text).map_err(|_| bad("decrypted data is not base64 text".into()))?;
            (json, Some(text))
        }
    };
    if let (Some(expected), Some(message)) = (hmac, encoded) {
        key.verify_hmac_b64(message.trim().as_bytes(), expected)
            .map_err(|_| bad("the reply's hmac does not match its data".into()))?;
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sealed_reply(rek: &AesKey, sek: &AesKey, json: &[u8], layers: Layers) -> String {
        let encoded = b64_encode(json);
        let data = match layers {
            Layers::Json => rek.encrypt_b64(json),
            Layers::Base64Json => rek.encrypt_b64(encoded.as_bytes()),
        };
        format!(
            r#"{{"status":"1","rek":"{}","data":"{}","hmac":"{}"}}"#,
            sek.encrypt_b64(rek.as_bytes()),
            data,
            rek.hmac_b64(encoded.as_bytes())
        )
    }

    #[test]
    fn sealed_replies_open_in_both_layouts_and_lose_rek_and_hmac() {
        let (sek, rek) = (AesKey::random(), AesKey::random());
        for layers in [Layers::Json, Layers::Base64Json] {
            let body = sealed_reply(&rek, &sek, br#"{"ewbNo":1}"#, layers);
            let mut env = Envelope::parse(body.as_bytes()).unwrap();
            open_reply(&mut env, &sek, layers).unwrap();
            let out: Value = serde_json::from_slice(&env.to_vec()).unwrap();
            assert_eq!(out["data"]["ewbNo"], 1);
            assert!(out.get("rek").is_none() && out.get("hmac").is_none());
            assert_eq!(out["status"], "1");
        }
    }

    #[test]
    fn a_wrong_or_missing_hmac_is_refused() {
        let (sek, rek) = (AesKey::random(), AesKey::random());
        let body = sealed_reply(&rek, &sek, br#"{"a":1}"#, Layers::Json);
        let tampered = body.replace("\"hmac\":\"", "\"hmac\":\"AAAA");
        let mut env = Envelope::parse(tampered.as_bytes()).unwrap();
        assert!(matches!(
            open_reply(&mut env, &sek, Layers::Json),
            Err(GatewayError::UpstreamBadResponse(m)) if m.contains("hmac")
        ));
        let v: Value = serde_json::from_str(&body).unwrap();
        let no_hmac = format!(
            r#"{{"status":"1","rek":{},"data":{}}}"#,
            v["rek"], v["data"]
        );
        let mut env = Envelope::parse(no_hmac.as_bytes()).unwrap();
        assert!(open_reply(&mut env, &sek, Layers::Json).is_err());
    }

    #[test]
    fn requests_are_sealed_with_the_sek_and_gstn_adds_an_hmac() {
        let sek = AesKey::random();
        let body = br#"{"action":"GENEWAYBILL","data":{"docNo":"A1"}}"#;
        let out: Value =
            serde_json::from_slice(&seal_request(body, &sek, Layers::Json, false).unwrap())
                .unwrap();
        assert_eq!(out["action"], "GENEWAYBILL");
        let plain = sek.decrypt_b64(out["data"].as_str().unwrap()).unwrap();
        assert_eq!(plain, br#"{"docNo":"A1"}"#);
        let out: Value =
            serde_json::from_slice(&seal_request(body, &sek, Layers::Base64Json, true).unwrap())
                .unwrap();
        let inner = sek.decrypt_b64(out["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            b64_decode(std::str::from_utf8(&inner).unwrap()).unwrap(),
            br#"{"docNo":"A1"}"#
        );
        sek.verify_hmac_b64(&inner, out["hmac"].as_str().unwrap())
            .unwrap();
        for bad in [
            &br#"{"data":{}}"#[..],
            br#"{"action":"X","data":"abc"}"#,
            b"[1]",
        ] {
            assert!(matches!(
                seal_request(bad, &sek, Layers::Json, false),
                Err(GatewayError::BodyInvalid(_))
            ));
        }
    }
}
