//! `gstgate keygen`, run as a process: the drop-in key pair it writes is usable as one
//! (what its public half encrypts, its private key decrypts), the private key is never
//! readable by others, and an existing key is replaced only when asked.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use common::BIN;
use gstgate::crypto::{KeyPair, PublicKey};

fn keygen(args: &[&Path], flags: &[&str]) -> Output {
    let mut command = std::process::Command::new(BIN);
    command.arg("keygen");
    for (flag, path) in ["--out", "--public-out"].iter().zip(args) {
        command.arg(flag).arg(path);
    }
    command.args(flags).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The names in `dir`, sorted: keygen creates nothing but the files it was given.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks one successful run: the public key on stdout is the private key's own public
/// half, and a login-sized payload encrypted with it decrypts with the private key.
fn check_pair(out: &Output, private: &Path, public: &Path) -> String {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("-----BEGIN PUBLIC KEY-----\n")
            && stdout.ends_with("-----END PUBLIC KEY-----\n"),
        "stdout is the PEM and nothing else: {stdout:?}"
    );
    assert_eq!(std::fs::read_to_string(public).unwrap(), stdout);
    assert_eq!(mode(private), 0o600, "private key mode");
    assert!(
        stderr.contains(&private.display().to_string()) && stderr.contains("dropin_private_key"),
        "{stderr}"
    );

    let pair = KeyPair::from_pkcs8_pem(&std::fs::read_to_string(private).unwrap()).unwrap();
    assert_eq!(pair.public_key().to_pem().unwrap(), stdout);
    let payload = br#"{"UserName":"demo","Password":"secret","AppKey":"0123456789abcdef0123456789abcdef","ForceRefreshAccessToken":false}"#;
    let cipher = PublicKey::from_pem_or_cert(stdout.as_bytes())
        .unwrap()
        .encrypt(payload)
        .unwrap();
    assert_eq!(pair.decrypt(&cipher).unwrap().as_slice(), payload);
    stdout
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_replaces_it_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub.pem");

    let out = keygen(&[&private, &public], &[]);
    let first_public = check_pair(&out, &private, &public);
    assert_eq!(listing(dir.path()), ["k.pem", "k.pub.pem"]);
    let first_private = std::fs::read(&private).unwrap();

    // An existing key is the one the ASP has been given: not replaced by accident.
    let out = keygen(&[&private, &public], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--force") && stderr.contains("k.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&private).unwrap(), first_private);
    assert_eq!(std::fs::read_to_string(&public).unwrap(), first_public);

    // An existing public file alone refuses the run before the private key is created.
    let other = dir.path().join("other.pem");
    let out = keygen(&[&other, &public], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(listing(dir.path()), ["k.pem", "k.pub.pem"]);

    let out = keygen(&[&private, &public], &["--force"]);
    let second_public = check_pair(&out, &private, &public);
    assert_ne!(second_public, first_public, "a new key");
    assert_ne!(std::fs::read(&private).unwrap(), first_private);
    assert_eq!(
        listing(dir.path()),
        ["k.pem", "k.pub.pem"],
        "no temporary left"
    );
}

#[test]
fn keygen_into_a_missing_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let out = keygen(&[&missing.join("k.pem")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("directory") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(listing(dir.path()).is_empty());
}
