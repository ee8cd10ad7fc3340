//! What gateway encryption costs per request, step by step, on one core: the e-invoice
//! generate body a caller sends (`bench/invoice.json`) encrypted for the upstream, and a
//! NIC-shaped generate reply (a signed invoice carrying that invoice, encrypted under the SEK)
//! read, decrypted and handed back as plain JSON.
//!
//! `cargo bench --bench payload` prints the median time per operation over 7 batches. The
//! gateway benchmark (`bench/run.sh`) shows what these steps add to a whole request; this one
//! shows which step it is. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use gstgate::crypto::{b64_decode, b64_encode, AesKey};
use gstgate::upstream::einvoice::Einvoice;
use gstgate::upstream::Profile;
use http::{Method, StatusCode};
use serde_json::json;

/// Operations per batch.
const BATCH: u32 = 20_000;
/// Batches per step; the median is reported.
const BATCHES: usize = 7;

/// How the steps run: timed under `cargo bench`; once each under `cargo test --all-targets`
/// (a debug build, no `--bench` argument), as a check that they still work, since timings
/// there would mean nothing.
#[derive(Clone, Copy)]
enum Mode {
    Measure,
    Check,
}

/// The median time of `f` over [`BATCHES`] batches of [`BATCH`] calls, as a table row.
fn time(mode: Mode, name: &str, mut f: impl FnMut()) {
    if let Mode::Check = mode {
        f();
        return;
    }
    for _ in 0..BATCH {
        f();
    }
    let mut per_op: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            started.elapsed() / BATCH
        })
        .collect();
    per_op.sort();
    let median = per_op[BATCHES / 2];
    println!("| {name} | {:.2} |", median.as_nanos() as f64 / 1000.0);
}

/// A JWT-shaped string like NIC's signed content, as the benchmark upstream makes it.
fn pseudo_jwt(data: &str) -> String {
    let head = B64URL.encode(r#"{"alg":"RS256","kid":"BENCH","typ":"JWT"}"#);
    let body = B64URL.encode(json!({"data": data, "iss": "NIC"}).to_string());
    format!("{head}.{body}.{}", "s".repeat(43))
}

fn main() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let invoice = std::fs::read(format!("{manifest}/bench/invoice.json"))
        .expect("bench/invoice.json, the benchmark invoice");
    let sek = AesKey::random();
    let profile = Einvoice;
    let irn = "a".repeat(64);
    let data = json!({
        "AckNo": 112_010_036_563_310_u64,
        "AckDt": "2026-12-07 10:00:00",
        "Irn": irn,
        "SignedInvoice": pseudo_jwt(&String::from_utf8_lossy(&invoice)),
        "SignedQRCode": pseudo_jwt(&format!(r#"{{"Irn":"{irn}","DocNo":"BENCH/1"}}"#)),
        "Status": "ACT",
        "EwbNo": null,
        "EwbDt": null,
        "EwbValidTill": null,
        "Remarks": null,
    })
    .to_string();
    let sealed = sek.encrypt_b64(data.as_bytes());
    let reply = format!(r#"{{"Status":1,"Data":"{sealed}","ErrorDetails":null,"InfoDtls":null}}"#);
    // What a passthrough call gets back: the same reply with `Data` as plain JSON.
    let plain_reply =
        format!(r#"{{"Status":1,"Data":{data},"ErrorDetails":null,"InfoDtls":null}}"#);
    let ciphertext = sek.encrypt(&invoice);
    let request_b64 = b64_encode(&ciphertext);

    let mode = if std::env::args().any(|a| a == "--bench") && !cfg!(debug_assertions) {
        println!(
            "caller body {} B; reply {} B, its Data {} B plain\n",
            invoice.len(),
            reply.len(),
            data.len()
        );
        println!("| step | µs |\n|---|---:|");
        Mode::Measure
    } else {
        println!("payload-bench: each step run once (not under `cargo bench`); `cargo bench --bench payload` times them");
        Mode::Check
    };
    time(
        mode,
        "request: `encode_request` (validate, encrypt, base64, envelope)",
        || {
            black_box(profile.encode_request(&Method::POST, black_box(&invoice), &sek)).ok();
        },
    );
    time(mode, "  of which: validate the caller's JSON", || {
        black_box(gstgate::json::validate(black_box(&invoice))).ok();
    });
    time(mode, "  (the same with serde_json's `IgnoredAny`)", || {
        black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(
            &invoice,
        )))
        .ok();
    });
    time(mode, "  of which: AES-256-ECB encrypt", || {
        black_box(sek.encrypt(black_box(&invoice)));
    });
    time(mode, "  of which: base64 encode", || {
        black_box(b64_encode(black_box(&ciphertext)));
    });
    time(mode, "reply: `read_reply` (the verdict)", || {
        black_box(profile.read_reply(StatusCode::OK, black_box(reply.as_bytes())));
    });
    time(
        mode,
        "passthrough reply (plain `Data`): `read_reply`",
        || {
            black_box(profile.read_reply(StatusCode::OK, black_box(plain_reply.as_bytes())));
        },
    );
    time(mode, "reply: `read_reply` + `decode_reply`", || {
        let read = profile.read_reply(StatusCode::OK, black_box(reply.as_bytes()));
        black_box(profile.decode_reply(read, &sek)).ok();
    });
    time(mode, "  of which: base64 decode", || {
        black_box(b64_decode(black_box(&sealed))).ok();
    });
    time(mode, "  of which: base64 decode + AES decrypt", || {
        black_box(sek.decrypt_b64(black_box(&sealed))).ok();
    });
    time(mode, "  of which: check the decrypted JSON", || {
        black_box(gstgate::json::Json::parse(black_box(data.clone()))).ok();
    });
    time(mode, "  (the same with serde_json's `RawValue`)", || {
        black_box(serde_json::value::RawValue::from_string(black_box(
            data.clone(),
        )))
        .ok();
    });
    time(
        mode,
        "(for scale) serde_json's pass over the plain reply",
        || {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(
                plain_reply.as_bytes(),
            )))
            .ok();
        },
    );
    time(
        mode,
        "(for scale) base64 decode of the request's Data",
        || {
            black_box(b64_decode(black_box(&request_b64))).ok();
        },
    );
}
