//! The fixed identities the harness configures on both sides, and the test data built from
//! them: valid GSTINs and a complete e-invoice.

use serde_json::{json, Value};

/// The caller API key used by the default client.
pub const API_KEY: &str = "test-key-0123456789";
/// The admin token of test gateways.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The upstream client id the simulator accepts.
pub const CLIENT_ID: &str = "test-client-id";
/// The upstream client secret the simulator accepts.
pub const CLIENT_SECRET: &str = "test-client-secret-Zx81";
/// The default taxpayer.
pub const GSTIN: &str = "27AAPFU0939F1ZV";
/// The default API user.
pub const USER: &str = "api_user";
/// The default API user's password.
pub const PASSWORD: &str = "s3cret-Passw0rd!";

/// The mod-36 check character of a GSTIN's first 14 characters (the GSTN checksum).
pub fn gstin_check_char(first14: &str) -> char {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let sum: usize = first14
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            let v = A.iter().position(|a| *a == c).unwrap() * if i % 2 == 0 { 1 } else { 2 };
            v / 36 + v % 36
        })
        .sum();
    A[(36 - sum % 36) % 36] as char
}

/// The n-th of a family of valid GSTINs (state 27, distinct PANs).
pub fn gstin_n(n: usize) -> String {
    let first = format!("27AAPFU{:04}F1Z", n % 10000);
    format!("{first}{}", gstin_check_char(&first))
}

/// A minimal but complete NIC e-invoice (schema 1.1) for a seller.
pub fn invoice(seller: &str, doc_no: &str) -> Value {
    json!({
        "Version": "1.1",
        "TranDtls": {"TaxSch": "GST", "SupTyp": "B2B", "RegRev": "N", "IgstOnIntra": "N"},
        "DocDtls": {"Typ": "INV", "No": doc_no, "Dt": "20/11/2026"},
        "SellerDtls": {"Gstin": seller, "LglNm": "Seller Pvt Ltd", "Addr1": "1 MG Road", "Loc": "Mumbai", "Pin": 400001, "Stcd": "27"},
        "BuyerDtls": {"Gstin": "27AAACR5055K1Z7", "LglNm": "Buyer Ltd", "Pos": "27", "Addr1": "2 FC Road", "Loc": "Pune", "Pin": 411001, "Stcd": "27"},
        "ItemList": [{"SlNo": "1", "IsServc": "N", "HsnCd": "1001", "Qty": 10, "Unit": "NOS", "UnitPrice": 100.0, "TotAmt": 1000.0, "AssAmt": 1000.0, "GstRt": 18.0, "CgstAmt": 90.0, "SgstAmt": 90.0, "TotItemVal": 1180.0}],
        "ValDtls": {"AssVal": 1000.0, "CgstVal": 90.0, "SgstVal": 90.0, "TotInvVal": 1180.0}
    })
}

/// A minimal NIC e-way bill request with the fields the simulator checks, from `from`.
pub fn ewaybill(from: &str, doc_no: &str) -> Value {
    json!({
        "supplyType": "O",
        "subSupplyType": "1",
        "docType": "INV",
        "docNo": doc_no,
        "docDate": "20/11/2026",
        "fromGstin": from,
        "fromPincode": 400001,
        "fromStateCode": 27,
        "toGstin": "27AAACR5055K1Z7",
        "toPincode": 411001,
        "toStateCode": 27,
        "transactionType": 1,
        "totalValue": 1000.0,
        "cgstValue": 90.0,
        "sgstValue": 90.0,
        "totInvValue": 1180.0,
        "transDistance": "150",
        "transMode": "1",
        "vehicleNo": "MH12AB1234",
        "vehicleType": "R",
        "itemList": [{"productName": "Wheat", "hsnCode": 1001, "quantity": 10, "qtyUnit": "NOS", "taxableAmount": 1000.0, "cgstRate": 9, "sgstRate": 9}]
    })
}
