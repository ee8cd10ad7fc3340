//! E-invoice generates and how each is found again: generate IRN by its document details
//! (`irnbydocdetails`), generate e-way bill by IRN by its IRN; and whether a document found
//! is the one the request was for. The outcome phase uses this through `Profile::generate`.

use http::Method;
use serde_json::{json, Value};

use crate::path::CallerPath;
use crate::upstream::generate::{self, Generate};

/// Whether a call is a generate IRN or a generate e-way bill by IRN, by method and path.
pub(super) fn is_generate(method: &Method, path: &CallerPath) -> bool {
    method == Method::POST
        && (generate::ends_with(path, &["eicore", "v", "Invoice"])
            || generate::ends_with(path, &["eiewb", "v", "ewaybill"]))
}

/// Generate IRN: found again by its document details (`DocDtls`), which NIC answers for a
/// few days after generation. 2148: no IRN for those details.
pub(super) fn irn_generate(path: &CallerPath, body: &[u8]) -> Option<Generate> {
    let invoice: Value = serde_json::from_slice(body).ok()?;
    let field = |pointer: &str| {
        invoice
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let wanted = DocDetails {
        typ: field("/DocDtls/Typ")?.to_owned(),
        no: field("/DocDtls/No")?.to_owned(),
        date: field("/DocDtls/Dt")?.to_owned(),
        seller: field("/SellerDtls/Gstin").map(str::to_owned),
    };
    let lookup = generate::lookup(
        path,
        "/irnbydocdetails",
        &[
            ("doctype", &wanted.typ),
            ("docnum", &wanted.no),
            ("docdate", &wanted.date),
        ],
    )?;
    Some(Generate {
        lookup,
        duplicate: &["2150"],
        absent: &["2148"],
        answer: Box::new(move |plain| irn_answer(plain, &wanted)),
    })
}

/// The document a generate IRN is for, as its lookup's reply must show it.
struct DocDetails {
    /// `DocDtls.Typ`: INV, CRN, DBN.
    typ: String,
    /// `DocDtls.No`.
    no: String,
    /// `DocDtls.Dt`, dd/mm/yyyy.
    date: String,
    /// `SellerDtls.Gstin`, when the request gives it.
    seller: Option<String>,
}

/// The IRN lookup's reply is the generate's own (AckNo, Irn, SignedInvoice, SignedQRCode…);
/// a cancelled IRN, or one whose signed content is not of the caller's document (a GSP that
/// answered for another one), stands for no generate.
fn irn_answer(plain: &[u8], wanted: &DocDetails) -> Option<Vec<u8>> {
    let reply: Value = serde_json::from_slice(plain).ok()?;
    let data = reply.get("Data")?;
    data.get("Irn")?.as_str()?;
    if data.get("Status").and_then(Value::as_str) == Some("CNL") {
        return None;
    }
    is_of(data, wanted).then(|| plain.to_vec())
}

/// Whether the IRN in `data` was generated for `wanted`: the document details its signed QR
/// code carries (`DocTyp`, `DocNo`, `DocDt`, `SellerGstin`), or else its signed invoice's
/// (`DocDtls`, `SellerDtls.Gstin`). Neither readable: it cannot be told, so it is not.
fn is_of(data: &Value, wanted: &DocDetails) -> bool {
    let signed = |name: &str| data.get(name).and_then(Value::as_str).and_then(signed_data);
    let (typ, no, date, seller) = if let Some(qr) = signed("SignedQRCode") {
        let at = |k: &str| qr.get(k).cloned();
        (at("DocTyp"), at("DocNo"), at("DocDt"), at("SellerGstin"))
    } else if let Some(invoice) = signed("SignedInvoice") {
        let at = |p: &str| invoice.pointer(p).cloned();
        (
            at("/DocDtls/Typ"),
            at("/DocDtls/No"),
            at("/DocDtls/Dt"),
            at("/SellerDtls/Gstin"),
        )
    } else {
        return false;
    };
    generate::same(typ.as_ref(), &wanted.typ)
        && generate::same(no.as_ref(), &wanted.no)
        && generate::same(date.as_ref(), &wanted.date)
        && wanted
            .seller
            .as_deref()
            .is_none_or(|want| generate::same(seller.as_ref(), want))
}

/// The `data` a NIC-signed JWT carries (its payload's `data`, a JSON text or object); the
/// signature is not checked: this only tells which document the IRP signed.
fn signed_data(jwt: &str) -> Option<Value> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("data")? {
        Value::String(text) => serde_json::from_str(text).ok(),
        object @ Value::Object(_) => Some(object.clone()),
        _ => None,
    }
}

/// Generate e-way bill by IRN: found again by the IRN. 4002: the IRN has an e-way bill
/// already; 4005: it has none (NIC's get-EWB-by-IRN).
pub(super) fn ewb_by_irn_generate(path: &CallerPath, body: &[u8]) -> Option<Generate> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let irn = request.get("Irn")?.as_str()?.trim();
    if irn.len() != 64 || !irn.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lookup = generate::lookup(path, &format!("/irn/{irn}"), &[])?;
    Some(Generate {
        lookup,
        duplicate: &["4002"],
        absent: &["4005"],
        answer: Box::new(ewb_by_irn_answer),
    })
}

/// The generate's reply (`EwbNo`, `EwbDt`, `EwbValidTill`) from the e-way bill NIC holds for
/// the IRN; a cancelled one stands for no generate.
fn ewb_by_irn_answer(plain: &[u8]) -> Option<Vec<u8>> {
    let reply: Value = serde_json::from_slice(plain).ok()?;
    let data = reply.get("Data")?;
    let number = data.get("EwbNo").filter(|n| !n.is_null())?;
    if data.get("Status").and_then(Value::as_str) == Some("CNL") {
        return None;
    }
    serde_json::to_vec(&json!({
        "Status": 1,
        "Data": {
            "EwbNo": number,
            "EwbDt": data.get("EwbDt"),
            "EwbValidTill": data.get("EwbValidTill"),
            "Alert": null,
        },
        "ErrorDetails": null,
        "InfoDtls": null,
    }))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::super::Einvoice;
    use super::*;
    use crate::upstream::Profile;

    #[test]
    fn an_irn_generate_is_looked_up_by_its_document_details() {
        let path = CallerPath::parse("/gsp/eicore/v1.03/Invoice", None).unwrap();
        let body = br#"{"DocDtls":{"Typ":"INV","No":"A/1","Dt":"01/04/2026"}}"#;
        let g = Einvoice.generate(&Method::POST, &path, body).unwrap();
        assert_eq!(g.lookup.path(), "/gsp/eicore/v1.03/Invoice/irnbydocdetails");
        assert_eq!(g.lookup.query_values("docnum"), vec!["A/1".to_owned()]);
        assert_eq!(g.duplicate, &["2150"]);
        assert!(Einvoice.generate(&Method::GET, &path, body).is_none());
        assert!(Einvoice.generate(&Method::POST, &path, b"{}").is_none());
        let cancel = CallerPath::parse("/eicore/v1.03/Invoice/Cancel", None).unwrap();
        assert!(Einvoice.generate(&Method::POST, &cancel, body).is_none());
        // A passthrough generate's body is ciphertext: it is one by method and path alone.
        assert!(Einvoice.may_generate(&Method::POST, &path, br#"{"Data":"x"}"#));
        assert!(!Einvoice.may_generate(&Method::POST, &cancel, b""));
        assert!(!Einvoice.may_generate(&Method::GET, &path, b""));
        let by_irn = CallerPath::parse("/eiewb/v1.03/ewaybill", None).unwrap();
        assert!(Einvoice.may_generate(&Method::POST, &by_irn, b""));
        let found = found_irn(
            "ACT",
            r#"{"DocTyp":"INV","DocNo":"a/1","DocDt":"01/04/2026"}"#,
        );
        assert_eq!((g.answer)(&found).unwrap(), found);
        let cancelled = found_irn(
            "CNL",
            r#"{"DocTyp":"INV","DocNo":"A/1","DocDt":"01/04/2026"}"#,
        );
        assert!((g.answer)(&cancelled).is_none());
    }

    /// A decoded IRN lookup reply with status `status` whose signed QR code carries `qr`.
    fn found_irn(status: &str, qr: &str) -> Vec<u8> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let claims = json!({"data": qr, "iss": "NIC"}).to_string();
        let jwt = format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims));
        json!({"Status": 1, "Data": {"Irn": "ab", "Status": status, "SignedQRCode": jwt}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_irn_found_for_another_document_is_not_the_callers() {
        let path = CallerPath::parse("/eicore/v1.03/Invoice", None).unwrap();
        let body = br#"{"DocDtls":{"Typ":"INV","No":"A/1","Dt":"01/04/2026"},"SellerDtls":{"Gstin":"29AAGCB1286Q000"}}"#;
        let g = Einvoice.generate(&Method::POST, &path, body).unwrap();
        let mine = r#"{"DocTyp":"INV","DocNo":"A/1","DocDt":"01/04/2026","SellerGstin":"29AAGCB1286Q000"}"#;
        assert!((g.answer)(&found_irn("ACT", mine)).is_some());
        for other in [
            r#"{"DocTyp":"INV","DocNo":"A/2","DocDt":"01/04/2026","SellerGstin":"29AAGCB1286Q000"}"#,
            r#"{"DocTyp":"CRN","DocNo":"A/1","DocDt":"01/04/2026","SellerGstin":"29AAGCB1286Q000"}"#,
            r#"{"DocTyp":"INV","DocNo":"A/1","DocDt":"02/04/2026","SellerGstin":"29AAGCB1286Q000"}"#,
            r#"{"DocTyp":"INV","DocNo":"A/1","DocDt":"01/04/2026","SellerGstin":"27AAGCB1286Q000"}"#,
            r#"{"DocTyp":"INV","DocDt":"01/04/2026"}"#,
        ] {
            assert!((g.answer)(&found_irn("ACT", other)).is_none(), "{other}");
        }
        // Without a readable signed QR code the signed invoice's DocDtls tell; without
        // either, nothing does.
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let invoice = json!({"DocDtls": {"Typ": "INV", "No": "A/1", "Dt": "01/04/2026"},
            "SellerDtls": {"Gstin": "29AAGCB1286Q000"}});
        let claims = json!({"data": invoice.to_string()}).to_string();
        let signed = format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims));
        let reply = json!({"Status": 1, "Data": {"Irn": "ab", "SignedQRCode": "garbage",
            "SignedInvoice": signed}});
        assert!((g.answer)(reply.to_string().as_bytes()).is_some());
        let bare = br#"{"Status":1,"Data":{"Irn":"ab","Status":"ACT"}}"#;
        assert!((g.answer)(bare).is_none());
    }

    #[test]
    fn an_ewb_by_irn_generate_is_looked_up_by_its_irn() {
        let path = CallerPath::parse("/eiewb/v1.03/ewaybill", None).unwrap();
        let irn = "a".repeat(64);
        let body = format!(r#"{{"Irn":"{irn}","Distance":10}}"#);
        let g = Einvoice
            .generate(&Method::POST, &path, body.as_bytes())
            .unwrap();
        assert_eq!(g.lookup.path(), format!("/eiewb/v1.03/ewaybill/irn/{irn}"));
        let bad = br#"{"Irn":"../x"}"#;
        assert!(Einvoice.generate(&Method::POST, &path, bad).is_none());
        let out: Value = serde_json::from_slice(
            &(g.answer)(br#"{"Status":1,"Data":{"EwbNo":1,"EwbDt":"d","EwbValidTill":"t"}}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(out["Data"]["EwbNo"], 1);
        assert_eq!(out["Status"], 1);
    }
}
