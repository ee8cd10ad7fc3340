//! Fuzz targets for the parsers that read untrusted bytes, run as ordinary tests on stable Rust.
//!
//! What is fuzzed, one `#[test]` per target:
//!
//! - `envelope`: [`Envelope::parse`] of upstream reply bodies, then `raw`, `get`, `set`,
//!   `remove` and `to_vec` on what parsed. `to_vec` must parse again to the same members.
//! - `sealed_reply`: [`open_reply`] on hostile reply envelopes (bad, missing or mistyped
//!   `rek`/`data`/`hmac`, keys of the wrong length, wrong layering) and [`seal_request`] on
//!   hostile caller bodies. A sealed reply with any corrupt part is refused; a request
//!   `seal_request` accepts opens again with the same key to the same `data`.
//! - `sealed_roundtrip`: a sealed reply built with the crypto helpers opens to exactly its
//!   payload; changing any one byte of its `rek`, `data` or `hmac` makes it fail, and changing
//!   any byte elsewhere never yields different data.
//! - `crypto`: the decoders upstream bytes reach — [`b64_decode`] (which must accept and
//!   refuse exactly what the `base64` crate's standard engine does), [`AesKey::decrypt_b64`],
//!   [`AesKey::unwrap_key`], [`AesKey::verify_hmac_b64`], [`PublicKey::from_pem_or_cert`].
//! - `config`: [`Config::parse`] and [`interpolate`] on hostile TOML: huge durations and
//!   integers, broken `${VAR}` forms, unicode, NULs. Interpolation reads the environment; the
//!   variables used are unset ones and those cargo sets for every test (`CARGO_PKG_NAME`);
//!   nothing here calls `set_var`.
//! - `path`: the caller path normaliser (`gstgate::path`). What it accepts is canonical
//!   (idempotent, allowed bytes only, no dot-only or dot-ending segment, no `//` inside),
//!   unchanged when it had no escape, and stays exactly itself inside an upstream URI; the
//!   query reader and the auth-path matcher never panic.
//! - `otp_body`: the admin OTP body parser. What it accepts is a JSON object whose one member
//!   `otp` is six ASCII digits; everything else is a 400.
//!
//! The invariant everywhere: an `Ok` or an error, never a panic and never a hang (a watchdog
//! ends the run when one case takes more than `CASE_TIMEOUT`); plus per target the properties
//! above, so a wrong result fails too.
//!
//! Each target has two phases. First every file of its seed corpus,
//! `tests/fuzz/corpus/<target>/`, is replayed (valid inputs, edge cases, earlier finds).
//! Then `proptest` generates cases: structure-aware strategies (JSON, sealed-reply recipes,
//! TOML fields) and byte-level mutations of the corpus seeds (bit flips, inserts, deletes,
//! splices of tokens such as `"`, `\u0000`, `${`, long digit runs, base64 garbage).
//!
//! Why proptest: cargo-fuzz needs a nightly toolchain for libFuzzer and the sanitizers, and
//! this project builds on stable only. Proptest runs inside `cargo test`, generates
//! structured inputs, shrinks a failing case to a small one and persists the seeds of
//! failures.
//!
//! Running: `cargo test --test fuzz` runs `DEFAULT_CASES` generated cases per target (25-28 s
//! in the debug profile on two cores shared with other builds, 12-13 s of CPU), so CI fuzzes a
//! little on every run. A long session (`--nocapture` shows cases, time and the outcomes
//! reached per target):
//!
//! ```text
//! GSTGATE_FUZZ_CASES=200000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! Seeds: each target fuzzes twice, half its cases each time — first under the fixed
//! `FIXED_SEED`, so every run (CI's included) covers the same known cases, then under a seed
//! drawn for this run, so every run also tries new ones. Both seeds are printed with the
//! outcomes (`--nocapture`), and a failure's message names the seed and the command that
//! replays it: `GSTGATE_FUZZ_SEED=<u64>` fuzzes under that one seed instead (with
//! `GSTGATE_FUZZ_CASES` as the message says, so that the failing case is reached again).
//!
//! When a target fails, proptest shrinks the case, prints it, writes its seed to
//! `tests/fuzz/regressions/<target>.txt` (replayed first by later runs while the strategies
//! are unchanged) and this harness writes the shrunk input's bytes to
//! `target/tmp/fuzz-failures/<target>.bin`. To commit a regression case for good, fix the bug,
//! then copy that file into `tests/fuzz/corpus/<target>/` under a name that says what it is:
//! corpus files are replayed by every run, whatever the strategies become. (Seeds in
//! `regressions/` are only meaningful to the strategies that produced them.) The corpus of
//! `sealed_reply` and `crypto` is replayed under the fixed `CORPUS_SEK` (sealed seeds carry
//! `CORPUS_REK`); a failure that needs the case's own key shows that key in the message. The
//! corpus of `sealed_roundtrip` holds payloads, which it seals itself.
//!
//! Adding a target: write `fn check_x(input) -> Result<(), TestCaseError>` with `prop_assert!`
//! for its invariants, add a corpus directory with a few seeds, and a `#[test]` that calls
//! [`replay`] with the corpus and [`fuzz`] with a strategy mixing a structured generator
//! and [`mutated`] corpus seeds.

use std::fmt;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use gstgate::config::{self, interpolate, Config, ConfigError};
use gstgate::crypto::{b64_decode, b64_encode, AesKey, PublicKey};
use gstgate::json;
use gstgate::problem::GatewayError;
use gstgate::upstream::envelope::Envelope;
use gstgate::upstream::sealed::{open_reply, seal_request, Layers};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::{
    Config as RunnerConfig, FailurePersistence, FileFailurePersistence, RngSeed, TestCaseError,
    TestError, TestRunner,
};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The harness shared by all targets.

/// Generated cases per target when `GSTGATE_FUZZ_CASES` is unset: all targets together took
/// 25-28 s (12-13 s of CPU) in the debug profile on two cores shared with other builds.
const DEFAULT_CASES: u32 = 6_000;

/// The number of generated cases per target.
fn cases() -> u32 {
    match std::env::var("GSTGATE_FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GSTGATE_FUZZ_CASES={text:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

/// The seed every run fuzzes under first, so that every run covers the same known cases.
const FIXED_SEED: u64 = 0x6773_7467_6174_6531;

/// The seeds of this run: the one `GSTGATE_FUZZ_SEED` names (`replay`) to replay a failure,
/// else [`FIXED_SEED`] and a new random one.
fn run_seeds(replay: Option<String>) -> Vec<u64> {
    match replay {
        Some(text) => vec![text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GSTGATE_FUZZ_SEED={text:?} is not a number"))],
        None => vec![FIXED_SEED, rand::random()],
    }
}

/// The command that fuzzes `target` again under `seed` for `cases` cases.
fn replay_command(target: &str, seed: u64, cases: u32) -> String {
    format!("GSTGATE_FUZZ_SEED={seed} GSTGATE_FUZZ_CASES={cases} cargo test --test fuzz {target}")
}

thread_local! {
    /// How often each outcome happened on this thread (one target per test thread), so a run
    /// shows which paths its cases reached and not only that nothing failed.
    static OUTCOMES: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>> =
        Default::default();
}

/// Counts one outcome of the current target.
fn note(outcome: &'static str) {
    OUTCOMES.with(|o| *o.borrow_mut().entry(outcome).or_default() += 1);
}

/// Input bytes that print as text (escaped), so a failure report can be read and pasted.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// What a failing case writes to `target/tmp/fuzz-failures/`: the bytes a corpus file holds.
trait CorpusBytes {
    fn corpus_bytes(&self) -> Vec<u8>;
}

impl CorpusBytes for Bytes {
    fn corpus_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// The seed files of a target, sorted by name. A target without seeds is a mistake.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seed files", dir.display());
    files
}

/// A case running longer than this is taken for a hang (legitimate cases take milliseconds,
/// even in the debug profile on a busy machine).
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes a failing or hanging input where the failure message says it is.
fn save_failure(target: &str, bytes: &[u8]) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let file: PathBuf = dir.join(format!("{target}.bin"));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, bytes))
        .map(|()| file.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"))
}

/// Turns a hang into a failure: proptest cannot interrupt a case that never returns, so a
/// thread watches the running case and, past [`CASE_TIMEOUT`], saves its input and ends the
/// test process.
/// The running case: when it started and its input.
type Running = Mutex<Option<(Instant, Vec<u8>)>>;

struct Watchdog {
    current: Arc<Running>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    /// Watches `target`'s cases; `source` says where they come from (the corpus, or a seed and
    /// how to replay it), for the hang report.
    fn new(target: &str, source: String) -> Self {
        let current: Arc<Running> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let (watched, finished, target) = (current.clone(), done.clone(), target.to_owned());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let guard = watched.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((start, bytes)) = &*guard {
                    if start.elapsed() > CASE_TIMEOUT {
                        let saved = save_failure(&target, bytes);
                        // Straight to stderr: the test harness would swallow captured output,
                        // as the process ends here.
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz {target}: a case has run for more than {CASE_TIMEOUT:?} (a \
                             hang): {:?}\nits bytes: {saved}\ncases from: {source}\nfix the \
                             bug, then add the bytes to tests/fuzz/corpus/{target}/",
                            Bytes(bytes.clone())
                        );
                        std::process::exit(101);
                    }
                }
            }
        });
        Self { current, done }
    }

    /// Runs one case under watch.
    fn watch<T>(&self, input: Vec<u8>, case: impl FnOnce() -> T) -> T {
        struct Leave<'a>(&'a Running);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), input));
        let _leave = Leave(&self.current);
        case()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Phase one: feeds every corpus file to `check`; a panic or a failed property names the file.
fn replay(
    target: &str,
    files: &[(String, Vec<u8>)],
    check: impl Fn(&[u8]) -> Result<(), TestCaseError>,
) {
    let dog = Watchdog::new(target, "the corpus".into());
    for (name, bytes) in files {
        let result = dog.watch(bytes.clone(), || {
            catch_unwind(AssertUnwindSafe(|| check(bytes)))
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("corpus/{target}/{name}: {e}"),
            Err(_) => panic!("corpus/{target}/{name}: panicked (message above)"),
        }
    }
}

/// Phase two: `cases()` generated cases, split over the run's seeds ([`run_seeds`]), shrunk
/// and persisted on failure.
fn fuzz<S>(target: &'static str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: CorpusBytes,
{
    let seeds = run_seeds(std::env::var("GSTGATE_FUZZ_SEED").ok());
    let per_seed = (cases() / u32::try_from(seeds.len()).unwrap()).max(1);
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/regressions")
        .join(format!("{target}.txt"));
    for seed in seeds {
        if let Err(failure) = fuzz_seed(
            target,
            &strategy,
            &check,
            seed,
            per_seed,
            Some(&regressions),
        ) {
            panic!("{failure}");
        }
    }
}

/// `cases` generated cases from `seed`; a failure (or abort) comes back as its report, which
/// names the seed and the command that replays it. A failure's seed is persisted in
/// `regressions` when given.
fn fuzz_seed<S>(
    target: &'static str,
    strategy: &S,
    check: &impl Fn(S::Value) -> Result<(), TestCaseError>,
    seed: u64,
    cases: u32,
    regressions: Option<&Path>,
) -> Result<(), String>
where
    S: Strategy,
    S::Value: CorpusBytes,
{
    let replay = replay_command(target, seed, cases);
    let config = RunnerConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: regressions.map(|path| {
            let path: &'static str = Box::leak(path.display().to_string().into_boxed_str());
            Box::new(FileFailurePersistence::Direct(path)) as Box<dyn FailurePersistence>
        }),
        source_file: Some(file!()),
        test_name: Some(target),
        // A failure in CI should report within minutes, shrunk as far as that allows.
        max_shrink_iters: 20_000,
        max_shrink_time: 120_000,
        ..RunnerConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let dog = Watchdog::new(target, format!("seed {seed}; replay: {replay}"));
    let start = Instant::now();
    let result = runner.run(strategy, |case| {
        dog.watch(case.corpus_bytes(), || check(case))
    });
    match result {
        Ok(()) => {
            let outcomes = OUTCOMES.with(|o| std::mem::take(&mut *o.borrow_mut()));
            eprintln!(
                "fuzz {target}: {cases} generated cases from seed {seed} in {:.1?}; outcomes \
                 (corpus, cases and shrinking together): {outcomes:?}",
                start.elapsed()
            );
            Ok(())
        }
        Err(TestError::Fail(reason, case)) => {
            let saved = save_failure(target, &case.corpus_bytes());
            Err(format!(
                "fuzz {target}: {reason}\nseed: {seed}; replay: {replay}\nminimal failing \
                 case: {case:#?}\nits bytes: {saved}\nfix the bug, then add the bytes to \
                 tests/fuzz/corpus/{target}/"
            ))
        }
        Err(TestError::Abort(reason)) => Err(format!(
            "fuzz {target}: aborted: {reason}\nseed: {seed}; replay: {replay}"
        )),
    }
}

#[test]
fn each_run_fuzzes_the_fixed_seed_and_a_new_one_unless_one_is_named() {
    let seeds = run_seeds(None);
    assert_eq!(seeds.len(), 2, "{seeds:?}");
    assert_eq!(seeds[0], FIXED_SEED);
    assert_eq!(run_seeds(Some(" 42\n".into())), [42]);
}

#[test]
fn a_seed_replays_its_cases_and_a_failure_names_its_seed() {
    let strategy = vec(any::<u8>(), 0..64).prop_map(Bytes);
    let cases_from = |seed: u64| {
        let seen = Mutex::new(Vec::new());
        let record = |b: Bytes| {
            seen.lock().unwrap().push(b.0);
            Ok(())
        };
        fuzz_seed("harness_self_test", &strategy, &record, seed, 50, None).unwrap();
        seen.into_inner().unwrap()
    };
    let seed: u64 = rand::random();
    assert_eq!(cases_from(seed), cases_from(seed), "seed {seed}");
    assert_ne!(cases_from(seed), cases_from(seed ^ 1), "seed {seed}");

    let failing = |b: Bytes| -> Result<(), TestCaseError> {
        prop_assert!(b.0.iter().all(|&x| x < 200), "a byte of 200 or more");
        Ok(())
    };
    let report = fuzz_seed("harness_self_test", &strategy, &failing, seed, 500, None).unwrap_err();
    let replay = format!(
        "seed: {seed}; replay: GSTGATE_FUZZ_SEED={seed} GSTGATE_FUZZ_CASES=500 cargo test --test \
         fuzz harness_self_test"
    );
    assert!(report.contains(&replay), "{report}");
}

/// One byte-level edit of a seed. Positions are [`Index`]es, so they fit any length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, u8),
    Delete(Index, u8),
    Token(Index, Index),
    Truncate(Index),
    Duplicate(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Duplicate(i, j)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation], tokens: &[&[u8]]) -> Vec<u8> {
    let mut b = seed.to_vec();
    // A position in 0..=len (inserts may append).
    let at = |i: &Index, len: usize| i.index(len + 1);
    for m in mutations {
        match m {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let p = i.index(b.len());
                b[p] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let p = i.index(b.len());
                b[p] = *v;
            }
            Mutation::Insert(i, v) => {
                let p = at(i, b.len());
                b.insert(p, *v);
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let p = i.index(b.len());
                let end = (p + usize::from(*n)).min(b.len());
                b.drain(p..end);
            }
            Mutation::Token(i, t) => {
                let p = at(i, b.len());
                let token = tokens[t.index(tokens.len())];
                b.splice(p..p, token.iter().copied());
            }
            Mutation::Truncate(i) => {
                let p = at(i, b.len());
                b.truncate(p);
            }
            Mutation::Duplicate(i, j) if !b.is_empty() => {
                let (x, y) = (i.index(b.len()), j.index(b.len()));
                let (from, to) = (x.min(y), x.max(y) + 1);
                let piece = b[from..to.min(from + 256)].to_vec();
                b.splice(to..to, piece);
            }
            _ => {}
        }
    }
    b
}

/// Byte-level mutations (one to eight edits) of a corpus seed.
fn mutated(seeds: Vec<Vec<u8>>, tokens: &'static [&'static [u8]]) -> BoxedStrategy<Bytes> {
    (select(seeds), vec(mutation(), 1..8))
        .prop_map(move |(seed, mutations)| Bytes(apply(&seed, &mutations, tokens)))
        .boxed()
}

fn seeds(files: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    files.iter().map(|(_, b)| b.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// JSON generation, shared by the envelope and sealed targets.

/// Tokens spliced into JSON seeds.
const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udfff\\ud800",
    b"\\x",
    b"\\u12",
    b"01",
    b"NaN",
    b"\xc2\xa0",
    b"\x0c",
    b"\\\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"-",
    b".",
    b"e",
    b"1e999999",
    b"-0.0e-0",
    b"99999999999999999999999999999999999999999999999999999999999999999999999999999999",
    b"0000000000000000000000000000000000000000000000000000000000000000000000000000001",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\x28",
    b"\xf4\x90\x80\x80",
    b" \t\r\n",
    b"\"rek\":",
    b"\"data\":",
    b"\"hmac\":",
    b"\"status\":\"1\",",
    b"\"a\":1,\"a\":2,",
    b"====",
    b"A",
    b"+/",
    b"-_",
    b"QQ==",
    b"QR==",
    b"AAAAAAAAAAAAAAAAAAAAAA==",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
];

/// Member names the gateway reads, and awkward ones.
const KEYS: &[&str] = &[
    "data",
    "rek",
    "hmac",
    "status",
    "Status",
    "Data",
    "ErrorDetails",
    "InfoDtls",
    "error",
    "action",
    "",
    "\u{0}",
    "\"",
    "\\",
    "é",
    "\u{feff}",
    "\u{10ffff}",
    "\u{2028}",
];

/// The JSON text of a string: plain runs, base64, escapes, raw unicode.
fn json_string() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        "[a-zA-Z0-9+/=]{0,24}",
        any::<char>().prop_map(|c| {
            let quoted = serde_json::to_string(&c.to_string()).unwrap();
            quoted[1..quoted.len() - 1].to_owned()
        }),
        select(vec![
            "\\u0000",
            "\\ud83d\\ude00",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\n",
            "\\r",
            "\\t",
            "\\u00e9",
            "é",
            "\u{10ffff}",
        ])
        .prop_map(str::to_owned),
    ];
    // Rarely, so that most documents stay readable as a `Value` too: lone surrogates, which
    // only `RawValue` accepts. Invalid escapes come from the mutations (`JSON_TOKENS`).
    let surrogate = select(vec!["\\ud800", "\\udc00"]).prop_map(str::to_owned);
    let piece = prop_oneof![300 => valid, 1 => surrogate];
    vec(piece, 0..6).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(KEYS).prop_map(|k| serde_json::to_string(k).unwrap()),
        1 => json_string(),
    ]
}

fn json_number() -> impl Strategy<Value = String> {
    // Numbers out of f64's range are valid JSON that `Value` refuses; they are rare here so
    // that most documents can be compared with `Value` (the mutations splice more in).
    let huge = prop_oneof![
        "-?[1-9][0-9]{300,400}",
        "-?[0-9][.][0-9]{1,40}[eE][+-]?[0-9]{4,12}",
        select(vec!["1e999999", "-1e-999999", "1.8e308"]).prop_map(str::to_owned),
    ];
    prop_oneof![
        40 => any::<i64>().prop_map(|n| n.to_string()),
        20 => any::<u64>().prop_map(|n| n.to_string()),
        30 => any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
        20 => "-?(0|[1-9][0-9]{0,30})([.][0-9]{1,30})?([eE][+-]?[0-9]{1,2})?",
        5 => select(vec!["-0", "18446744073709551616", "-9223372036854775809", "1E+2", "-0.0e-0"])
            .prop_map(str::to_owned),
        1 => huge,
    ]
}

fn json_ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just(""),
        1 => select(vec![" ", "\n", "\t", "\r\n", "  \n\t "]),
    ]
}

/// JSON text: valid syntax, with numbers out of any range and the odd lone surrogate.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        select(vec!["null", "true", "false"]).prop_map(str::to_owned),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec((json_ws(), inner.clone()), 0..8).prop_map(|items| {
                let items: Vec<String> =
                    items.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                format!("[{}]", items.join(","))
            }),
            vec((json_key(), json_ws(), inner), 0..8).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, w, v)| format!("{k}:{w}{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A reply-like JSON object, or deep nesting around the recursion limit.
fn json_envelope() -> impl Strategy<Value = Bytes> {
    let members = vec((json_ws(), json_key(), json_ws(), json_text()), 0..10).prop_map(|m| {
        let m: Vec<String> = m
            .into_iter()
            .map(|(w1, k, w2, v)| format!("{w1}{k}{w2}:{v}"))
            .collect();
        Bytes(format!("{{{}}}", m.join(",")).into_bytes())
    });
    let nested = (100usize..300, select(vec!["[", "{\"a\":"]), any::<bool>()).prop_map(
        |(depth, open, closed)| {
            let close = if open == "[" { "]" } else { "}" };
            let mut s = format!("{{\"data\":{}", open.repeat(depth));
            if closed {
                s.push_str(&close.repeat(depth));
                s.push('}');
            }
            Bytes(s.into_bytes())
        },
    );
    prop_oneof![
        8 => members,
        1 => nested,
        1 => json_text().prop_map(|t| Bytes(t.into_bytes())),
    ]
}

/// A JSON value as a raw value, for `Envelope::set`.
fn raw_json() -> impl Strategy<Value = Box<RawValue>> {
    json_text().prop_filter_map("not valid JSON", |t| RawValue::from_string(t).ok())
}

// ---------------------------------------------------------------------------------------------
// Target: envelope.

#[derive(Debug, Clone)]
enum EnvOp {
    Set(String, Box<RawValue>),
    Remove(String),
    Get(String),
}

#[derive(Debug, Clone)]
struct EnvelopeCase {
    body: Bytes,
    ops: Vec<EnvOp>,
}

impl CorpusBytes for EnvelopeCase {
    fn corpus_bytes(&self) -> Vec<u8> {
        self.body.0.clone()
    }
}

fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(KEYS).prop_map(str::to_owned), 1 => any::<String>()]
}

fn env_op() -> impl Strategy<Value = EnvOp> {
    prop_oneof![
        (any_key(), raw_json()).prop_map(|(k, v)| EnvOp::Set(k, v)),
        any_key().prop_map(EnvOp::Remove),
        any_key().prop_map(EnvOp::Get),
    ]
}

/// The operations replayed on every envelope corpus file.
fn corpus_env_ops() -> Vec<EnvOp> {
    let raw = |t: &str| RawValue::from_string(t.to_owned()).unwrap();
    vec![
        EnvOp::Get("data".into()),
        EnvOp::Set("data".into(), raw(r#"{"Irn":"x","n":[1,2.5,null]}"#)),
        EnvOp::Remove("rek".into()),
        EnvOp::Remove("hmac".into()),
        EnvOp::Set("\"\\\u{0}é".into(), raw("\"\\u0000\"")),
        EnvOp::Get("Status".into()),
    ]
}

/// The text of member `key`, if any.
fn raw_text(e: &Envelope<'_>, key: &str) -> Option<String> {
    e.raw(key).map(str::to_owned)
}

/// The members serde_json reads from an object body, in order (names decoded, values as raw
/// text): the oracle gstgate's own scanner must agree with.
fn serde_members(body: &[u8]) -> Option<Vec<(String, String)>> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                out.push((k, v.get().to_owned()));
            }
            Ok(out)
        }
    }
    struct Object(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Object {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Members).map(Object)
        }
    }
    serde_json::from_slice::<Object>(body).ok().map(|o| o.0)
}

/// gstgate's JSON scanner accepts exactly what serde_json accepts (in UTF-8 text), and reads
/// an object's members as serde_json does.
fn check_scanner(body: &[u8]) -> Result<(), TestCaseError> {
    // serde_json's `IgnoredAny` pass does not check UTF-8 inside strings; JSON text must be
    // UTF-8 (RFC 8259 §8.1), and gstgate refuses it anywhere.
    prop_assert_eq!(
        json::validate(body).is_ok(),
        serde_json::from_slice::<IgnoredAny>(body).is_ok() && std::str::from_utf8(body).is_ok(),
        "json::validate disagrees with serde_json"
    );
    if let Ok(text) = std::str::from_utf8(body) {
        prop_assert_eq!(
            json::Json::parse(text.to_owned())
                .ok()
                .map(|j| j.get().to_owned()),
            RawValue::from_string(text.to_owned())
                .ok()
                .map(|r| r.get().to_owned()),
            "Json::parse disagrees with RawValue::from_string"
        );
    }
    let theirs = serde_members(body);
    prop_assert_eq!(
        Envelope::parse(body).is_some(),
        theirs.is_some(),
        "Envelope::parse disagrees with serde_json"
    );
    if let (Ok(ours), Some(theirs)) = (json::members(body), theirs) {
        for m in &ours {
            // `plain`: a string whose text is exactly the bytes between its quotes.
            let decoded = serde_json::from_slice::<String>(m.value).ok();
            let inner = m.value.get(1..m.value.len().saturating_sub(1));
            let exact = matches!((&decoded, inner), (Some(d), Some(i)) if d.as_bytes() == i);
            prop_assert!(!m.plain || exact, "a plain member is not its own text");
            prop_assert!(
                m.plain || !exact || m.value.contains(&b'\\'),
                "a string without escape is not marked plain"
            );
        }
        let ours: Vec<(String, Vec<u8>)> = ours
            .iter()
            .map(|m| {
                let name = if m.escaped {
                    serde_json::from_str(&format!("\"{}\"", m.name)).unwrap_or_default()
                } else {
                    m.name.to_owned()
                };
                (name, m.value.to_vec())
            })
            .collect();
        let theirs: Vec<(String, Vec<u8>)> = theirs
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        prop_assert_eq!(ours, theirs, "members differ");
    }
    Ok(())
}

fn check_envelope(case: &EnvelopeCase) -> Result<(), TestCaseError> {
    let body = &case.body.0;
    check_scanner(body)?;
    let as_value = serde_json::from_slice::<Value>(body);
    let Some(mut env) = Envelope::parse(body) else {
        note("not an envelope");
        // serde_json reads this body as an object, so the envelope parser must too.
        prop_assert!(
            !matches!(as_value, Ok(Value::Object(_))),
            "a JSON object was not read as an envelope"
        );
        return Ok(());
    };
    let keys: Vec<String> = match &as_value {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        Ok(_) => return Err(TestCaseError::fail("an envelope parsed from a non-object")),
        // Envelopes take numbers `Value` cannot hold (1e999) and lone surrogates: no keys to
        // compare, the round trip below still runs.
        Err(_) => {
            note("envelope serde_json's Value refuses");
            Vec::new()
        }
    };
    note("envelope");
    for k in &keys {
        prop_assert!(env.raw(k).is_some(), "member {k:?} is missing");
        prop_assert!(
            env.get::<Value>(k).is_some(),
            "member {k:?} does not deserialise"
        );
    }
    let out = env.to_vec();
    let again = Envelope::parse(&out);
    prop_assert!(
        again.is_some(),
        "to_vec output does not parse: {:?}",
        Bytes(out.clone())
    );
    let again = again.unwrap();
    prop_assert_eq!(
        Bytes(again.to_vec()),
        Bytes(out.clone()),
        "to_vec is not stable"
    );
    for k in &keys {
        prop_assert_eq!(
            raw_text(&again, k),
            raw_text(&env, k),
            "member {:?} changed",
            k
        );
    }

    let mut touched = Vec::new();
    for op in &case.ops {
        match op {
            EnvOp::Set(k, v) => {
                env.set(k, v.clone());
                prop_assert_eq!(raw_text(&env, k), Some(v.get().to_owned()));
                prop_assert!(
                    env.get::<IgnoredAny>(k).is_some(),
                    "{k:?} does not read back"
                );
                touched.push(k.clone());
            }
            EnvOp::Remove(k) => {
                env.remove(k);
                prop_assert!(env.raw(k).is_none(), "{k:?} survived remove");
                touched.push(k.clone());
            }
            EnvOp::Get(k) => {
                let value = env.get::<Value>(k);
                prop_assert!(value.is_none() || env.raw(k).is_some());
                let _ = env.get::<String>(k);
                let _ = env.get::<i64>(k);
            }
        }
    }
    let out = env.to_vec();
    let again = Envelope::parse(&out);
    prop_assert!(
        again.is_some(),
        "to_vec after edits does not parse: {:?}",
        Bytes(out.clone())
    );
    let again = again.unwrap();
    for k in touched.iter().chain(&keys) {
        prop_assert_eq!(
            raw_text(&again, k),
            raw_text(&env, k),
            "member {:?} changed",
            k
        );
    }
    Ok(())
}

#[test]
fn envelope() {
    let files = corpus("envelope");
    replay("envelope", &files, |body| {
        check_envelope(&EnvelopeCase {
            body: Bytes(body.to_vec()),
            ops: corpus_env_ops(),
        })
    });
    let bodies = prop_oneof![json_envelope(), mutated(seeds(&files), JSON_TOKENS)];
    let strategy = (bodies, vec(env_op(), 0..6)).prop_map(|(body, ops)| EnvelopeCase { body, ops });
    fuzz("envelope", strategy, |case| check_envelope(&case));
}

// ---------------------------------------------------------------------------------------------
// Targets: sealed_reply and sealed_roundtrip.

/// The session key the sealed corpus files are built with (and half of the generated cases use,
/// so that mutated seeds get past the `rek` unwrap).
const CORPUS_SEK: [u8; 32] = *b"gstgate-fuzz-corpus-session-key!";
/// The response key inside the sealed corpus files.
const CORPUS_REK: [u8; 32] = *b"gstgate-fuzz-corpus-reply-key-!!";

fn key(bytes: &[u8; 32]) -> AesKey {
    AesKey::from_slice(bytes).expect("32 bytes")
}

fn key_bytes() -> impl Strategy<Value = [u8; 32]> {
    prop_oneof![Just(CORPUS_SEK), any::<[u8; 32]>()]
}

fn layers() -> impl Strategy<Value = Layers> {
    prop_oneof![Just(Layers::Json), Just(Layers::Base64Json)]
}

/// A sealed reply the test builds the way the upstream does: `data` = B64(AES(REK, JSON)) or,
/// for GSTN, B64(AES(REK, B64(JSON))); `rek` = B64(AES(SEK, REK)); `hmac` =
/// B64(HMAC-SHA256(REK, B64(JSON))).
fn sealed_parts(sek: &AesKey, rek: &AesKey, payload: &[u8], layers: Layers) -> [String; 3] {
    let encoded = b64_encode(payload);
    let data = match layers {
        Layers::Json => rek.encrypt_b64(payload),
        Layers::Base64Json => rek.encrypt_b64(encoded.as_bytes()),
    };
    [
        sek.encrypt_b64(rek.as_bytes()),
        data,
        rek.hmac_b64(encoded.as_bytes()),
    ]
}

/// What `data` in a reply should open to: the payload without JSON's surrounding whitespace,
/// or `None` when the payload is not a JSON text (then the reply must be refused).
fn expected_data(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    serde_json::from_str::<IgnoredAny>(text).ok()?;
    RawValue::from_string(text.to_owned())
        .ok()
        .map(|v| v.get().to_owned())
}

/// One part of a generated sealed reply.
#[derive(Debug, Clone)]
enum Part {
    /// As the upstream makes it.
    Valid,
    /// Valid, with whitespace around it (`b64_decode` trims it).
    Padded,
    /// Absent.
    Missing,
    /// Valid text cut short.
    Truncated(Index),
    /// Another JSON type: number, object, array, null.
    NotString(String),
    /// Arbitrary base64-ish text.
    Garbage(String),
    /// `rek`: a key of this many bytes; `data`/`hmac`: made with the SEK instead of the REK.
    WrongKey(usize),
    /// `data`: the other layering; `hmac`: over the raw JSON instead of its base64 text.
    WrongLayout,
}

impl Part {
    fn sound(&self) -> bool {
        matches!(self, Part::Valid | Part::Padded)
    }
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        6 => Just(Part::Valid),
        1 => Just(Part::Padded),
        1 => Just(Part::Missing),
        1 => any::<Index>().prop_map(Part::Truncated),
        1 => prop_oneof![json_number(), json_text()].prop_map(Part::NotString),
        1 => "[A-Za-z0-9+/= \\-_]{0,100}".prop_map(Part::Garbage),
        1 => (0usize..80).prop_map(Part::WrongKey),
        1 => Just(Part::WrongLayout),
    ]
}

/// A generated sealed reply: rendered with the case's key, so its valid parts are valid.
#[derive(Debug, Clone)]
struct Recipe {
    payload: Bytes,
    rek: Part,
    data: Part,
    hmac: Part,
    /// Other members and their order among `rek`, `data`, `hmac` (positions 0, 1, 2).
    extra: Vec<(String, String)>,
    order: Vec<usize>,
}

fn json_payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => json_text().prop_map(|t| Bytes(t.into_bytes())),
        1 => vec(any::<u8>(), 0..64).prop_map(Bytes),
    ]
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let extra_key = select(vec!["status", "Status", "error", "info", "InfoDtls", "x"]);
    (
        json_payload(),
        part(),
        part(),
        part(),
        vec((extra_key.prop_map(str::to_owned), json_text()), 0..4),
    )
        .prop_flat_map(|(payload, rek, data, hmac, extra)| {
            let order: Vec<usize> = (0..extra.len() + 3).collect();
            (
                Just((payload, rek, data, hmac, extra)),
                Just(order).prop_shuffle(),
            )
        })
        .prop_map(|((payload, rek, data, hmac, extra), order)| Recipe {
            payload,
            rek,
            data,
            hmac,
            extra,
            order,
        })
}

impl Recipe {
    /// The reply body under `sek` and `layers`.
    fn render(&self, sek: &AesKey, layers: Layers) -> Vec<u8> {
        let rek = key(&CORPUS_REK);
        let payload = &self.payload.0;
        let [rek_text, _, hmac_text] = sealed_parts(sek, &rek, payload, layers);
        // Without `rek` it is an ordinary reply: `data` is encrypted with the SEK.
        let (data_key, other_key) = match self.rek {
            Part::Missing => (sek, &rek),
            _ => (&rek, sek),
        };
        let data_text = sealed_parts(sek, data_key, payload, layers)[1].clone();
        let other_layers = match layers {
            Layers::Json => Layers::Base64Json,
            Layers::Base64Json => Layers::Json,
        };
        let encoded = b64_encode(payload);
        let value = |part: &Part, valid: &str, wrong_key: String, wrong_layout: String| {
            let text = match part {
                Part::Valid => valid.to_owned(),
                Part::Padded => format!(" \n{valid}\t "),
                Part::Missing => return None,
                Part::Truncated(i) => valid[..i.index(valid.len())].to_owned(),
                Part::NotString(json) => return Some(json.clone()),
                Part::Garbage(g) => g.clone(),
                Part::WrongKey(_) => wrong_key,
                Part::WrongLayout => wrong_layout,
            };
            Some(serde_json::to_string(&text).unwrap())
        };
        let wrong_len = match self.rek {
            Part::WrongKey(n) => n + usize::from(n >= 32),
            _ => 0,
        };
        let members = [
            (
                "rek",
                value(
                    &self.rek,
                    &rek_text,
                    sek.encrypt_b64(&vec![7u8; wrong_len]),
                    rek.encrypt_b64(rek.as_bytes()),
                ),
            ),
            (
                "data",
                value(
                    &self.data,
                    &data_text,
                    sealed_parts(sek, other_key, payload, layers)[1].clone(),
                    sealed_parts(sek, data_key, payload, other_layers)[1].clone(),
                ),
            ),
            (
                "hmac",
                value(
                    &self.hmac,
                    &hmac_text,
                    sek.hmac_b64(encoded.as_bytes()),
                    rek.hmac_b64(payload),
                ),
            ),
        ];
        let mut out = Vec::new();
        for &i in &self.order {
            let member = match i {
                0..=2 => match &members[i] {
                    (k, Some(v)) => format!("\"{k}\":{v}"),
                    (_, None) => continue,
                },
                _ => {
                    let (k, v) = &self.extra[i - 3];
                    format!("\"{k}\":{v}")
                }
            };
            out.push(member);
        }
        format!("{{{}}}", out.join(",")).into_bytes()
    }
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Bytes(Bytes),
    Recipe(Recipe),
}

#[derive(Debug, Clone)]
struct SealedCase {
    sek: [u8; 32],
    layers: Layers,
    body: ReplyBody,
}

impl SealedCase {
    fn bytes(&self) -> Vec<u8> {
        match &self.body {
            ReplyBody::Bytes(b) => b.0.clone(),
            ReplyBody::Recipe(r) => r.render(&key(&self.sek), self.layers),
        }
    }
}

impl CorpusBytes for SealedCase {
    fn corpus_bytes(&self) -> Vec<u8> {
        self.bytes()
    }
}

fn is_bad_response(e: &GatewayError) -> bool {
    matches!(e, GatewayError::UpstreamBadResponse(_))
}

/// `open_reply` on an arbitrary body; `seal_request` on the same body as a caller's request.
fn check_sealed(case: &SealedCase) -> Result<(), TestCaseError> {
    let sek = key(&case.sek);
    let layers = case.layers;
    let body = case.bytes();

    if let Some(mut env) = Envelope::parse(&body) {
        let had_data = env.get::<String>("data").is_some();
        let sealed = env.get::<String>("rek").is_some();
        let before = env.to_vec();
        match open_reply(&mut env, &sek, layers) {
            Ok(()) if !had_data => {
                note("reply without data");
                prop_assert_eq!(Bytes(env.to_vec()), Bytes(before), "no data, yet changed");
            }
            Ok(()) => {
                note(if sealed {
                    "sealed reply opened"
                } else {
                    "reply opened"
                });
                let out = env.to_vec();
                prop_assert!(Envelope::parse(&out).is_some(), "opened reply is not JSON");
                prop_assert!(env.get::<IgnoredAny>("data").is_some(), "data is not JSON");
                if sealed {
                    prop_assert!(env.raw("rek").is_none() && env.raw("hmac").is_none());
                }
            }
            Err(e) => {
                note(if sealed {
                    "sealed reply refused"
                } else {
                    "reply refused"
                });
                prop_assert!(is_bad_response(&e), "unexpected error {e:?}");
            }
        }
        if let ReplyBody::Recipe(r) = &case.body {
            check_recipe_outcome(r, &sek, layers, &body)?;
        }
    }

    for hmac in [false, true] {
        match seal_request(&body, &sek, layers, hmac) {
            Ok(out) => {
                note("request sealed");
                check_sealed_request(&body, &out, &sek, layers, hmac)?;
            }
            Err(e) => prop_assert!(
                matches!(e, GatewayError::BodyInvalid(_)),
                "unexpected error {e:?}"
            ),
        }
    }
    Ok(())
}

/// What a generated sealed reply must open to: its payload when every part is sound, an
/// error when a part of a sealed reply is corrupt.
fn check_recipe_outcome(
    r: &Recipe,
    sek: &AesKey,
    layers: Layers,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let mut env = Envelope::parse(body).expect("rendered recipes are JSON");
    let result = open_reply(&mut env, sek, layers);
    if matches!(r.rek, Part::Missing) && r.data.sound() {
        // An unsealed reply opens with the SEK (and carries no integrity check to assert).
        note("recipe: unsealed");
        match (expected_data(&r.payload.0), result) {
            (Some(want), Ok(())) => prop_assert_eq!(raw_text(&env, "data"), Some(want)),
            (None, Err(_)) => {}
            (want, got) => prop_assert!(false, "unsealed reply: wanted {want:?}, got {got:?}"),
        }
        return Ok(());
    }
    let string = |p: &Part| !matches!(p, Part::Missing | Part::NotString(_));
    if !string(&r.rek) || !string(&r.data) {
        // Not a sealed reply (or nothing to open): `check_sealed` covered it.
        return Ok(());
    }
    if r.rek.sound() && r.data.sound() && r.hmac.sound() {
        note("recipe: sound");
        match (expected_data(&r.payload.0), result) {
            (Some(want), Ok(())) => {
                prop_assert_eq!(raw_text(&env, "data"), Some(want));
            }
            (None, Err(_)) => {}
            (want, got) => prop_assert!(false, "sound reply: wanted {want:?}, got {got:?}"),
        }
    } else {
        note("recipe: corrupt part");
        prop_assert!(
            result.is_err(),
            "a sealed reply with a corrupt part opened: {:?}",
            raw_text(&env, "data")
        );
    }
    Ok(())
}

/// A request `seal_request` accepted keeps its other members, carries `data` encrypted with
/// the SEK, and opens again (as an unsealed reply) to the caller's `data`.
fn check_sealed_request(
    body: &[u8],
    out: &[u8],
    sek: &AesKey,
    layers: Layers,
    hmac: bool,
) -> Result<(), TestCaseError> {
    let input = Envelope::parse(body).expect("seal_request accepted it");
    let want = raw_text(&input, "data").expect("seal_request needs data");
    let env = Envelope::parse(out);
    prop_assert!(env.is_some(), "sealed request is not JSON");
    let mut env = env.unwrap();
    prop_assert_eq!(env.get::<String>("action"), input.get::<String>("action"));
    let data = env.get::<String>("data");
    prop_assert!(data.is_some(), "sealed data is not a string");
    let inner = sek.decrypt_b64(&data.unwrap());
    prop_assert!(inner.is_ok(), "sealed data does not decrypt");
    let inner = inner.unwrap();
    if hmac && layers == Layers::Base64Json {
        let mac = env.get::<String>("hmac").unwrap_or_default();
        prop_assert!(sek.verify_hmac_b64(&inner, &mac).is_ok(), "request hmac");
    }
    if env.get::<String>("rek").is_none() {
        let opened = open_reply(&mut env, sek, layers);
        prop_assert!(opened.is_ok(), "sealed request does not open: {opened:?}");
        prop_assert_eq!(raw_text(&env, "data"), Some(want));
    }
    Ok(())
}

const SEALED_TOKENS: &[&[u8]] = JSON_TOKENS;

/// A caller's request for `seal_request`: `action`, a `data` object or array (or not), and
/// other members, `hmac` and `rek` among them.
fn json_request() -> impl Strategy<Value = Bytes> {
    let action = prop_oneof![
        3 => select(vec!["GENEWAYBILL", "CANEWB", "RETSAVE", ""]).prop_map(|a| format!("\"{a}\"")),
        1 => json_string(),
        1 => json_number(),
    ];
    let data = prop_oneof![
        2 => json_text().prop_map(|t| format!("{{\"v\":{t}}}")),
        2 => json_text().prop_map(|t| format!("[{t}]")),
        1 => json_text(),
    ];
    let extra = vec(
        (
            select(vec!["hmac", "rek", "status", "data", "action"]),
            json_text(),
        ),
        0..3,
    );
    (action, data, extra).prop_map(|(action, data, extra)| {
        let mut members = vec![format!("\"action\":{action}"), format!("\"data\":{data}")];
        members.extend(extra.into_iter().map(|(k, v)| format!("\"{k}\":{v}")));
        Bytes(format!("{{{}}}", members.join(",")).into_bytes())
    })
}

#[test]
fn sealed_reply() {
    let files = corpus("sealed_reply");
    replay("sealed_reply", &files, |body| {
        for layers in [Layers::Json, Layers::Base64Json] {
            check_sealed(&SealedCase {
                sek: CORPUS_SEK,
                layers,
                body: ReplyBody::Bytes(Bytes(body.to_vec())),
            })?;
        }
        Ok(())
    });
    let bodies = prop_oneof![
        2 => recipe().prop_map(ReplyBody::Recipe),
        2 => mutated(seeds(&files), SEALED_TOKENS).prop_map(ReplyBody::Bytes),
        1 => json_envelope().prop_map(ReplyBody::Bytes),
        1 => json_request().prop_map(ReplyBody::Bytes),
    ];
    let strategy = (key_bytes(), layers(), bodies).prop_map(|(sek, layers, body)| SealedCase {
        sek,
        layers,
        body,
    });
    fuzz("sealed_reply", strategy, |case| check_sealed(&case));
}

/// Where to change one byte of a valid sealed reply.
#[derive(Debug, Clone)]
enum Tamper {
    /// Inside the string value of `rek` (0), `data` (1) or `hmac` (2): must be refused.
    Part(usize, Index, u8),
    /// Anywhere in the body: refused, or the same data, or nothing opened.
    Anywhere(Index, u8),
}

#[derive(Debug, Clone)]
struct RoundTripCase {
    sek: [u8; 32],
    rek: [u8; 32],
    layers: Layers,
    payload: Bytes,
    tamper: Tamper,
}

impl CorpusBytes for RoundTripCase {
    fn corpus_bytes(&self) -> Vec<u8> {
        self.payload.0.clone()
    }
}

fn check_roundtrip(case: &RoundTripCase) -> Result<(), TestCaseError> {
    let (sek, rek) = (key(&case.sek), key(&case.rek));
    let payload = &case.payload.0;
    let want = expected_data(payload);
    let parts = sealed_parts(&sek, &rek, payload, case.layers);
    let body = format!(
        r#"{{"status":"1","rek":"{}","data":"{}","hmac":"{}","info":null}}"#,
        parts[0], parts[1], parts[2]
    );

    // Untouched: opens to exactly the payload, or is refused when the payload is not JSON.
    let mut env = Envelope::parse(body.as_bytes()).expect("a built reply is JSON");
    match (&want, open_reply(&mut env, &sek, case.layers)) {
        (Some(want), Ok(())) => {
            note("payload opened");
            prop_assert_eq!(raw_text(&env, "data"), Some(want.clone()));
            prop_assert!(env.raw("rek").is_none() && env.raw("hmac").is_none());
            prop_assert_eq!(env.get::<String>("status"), Some("1".to_owned()));
        }
        (None, Err(e)) => {
            note("non-JSON payload refused");
            prop_assert!(is_bad_response(&e));
        }
        (want, got) => prop_assert!(false, "wanted {want:?}, got {got:?}"),
    }

    // With a different key it is refused.
    let other = key(&{
        let mut k = case.sek;
        k[0] ^= 1;
        k
    });
    let mut env = Envelope::parse(body.as_bytes()).unwrap();
    prop_assert!(
        open_reply(&mut env, &other, case.layers).is_err(),
        "opened with another SEK"
    );

    // One byte changed.
    let mut tampered = body.clone().into_bytes();
    let strict = match &case.tamper {
        Tamper::Part(which, at, byte) => {
            let text = &parts[*which];
            let start = body.find(text.as_str()).expect("part in body");
            let pos = start + at.index(text.len());
            tampered[pos] = if tampered[pos] == *byte {
                byte ^ 0x20
            } else {
                *byte
            };
            true
        }
        Tamper::Anywhere(at, byte) => {
            let pos = at.index(tampered.len());
            tampered[pos] = if tampered[pos] == *byte {
                byte ^ 0x20
            } else {
                *byte
            };
            false
        }
    };
    if let Some(mut env) = Envelope::parse(&tampered) {
        let had_data = env.get::<String>("data").is_some();
        let result = open_reply(&mut env, &sek, case.layers);
        note(match (strict, &result) {
            (true, _) => "tampered part refused",
            (false, Ok(())) => "tampered elsewhere, opened",
            (false, Err(_)) => "tampered elsewhere, refused",
        });
        if strict {
            prop_assert!(
                result.is_err(),
                "a tampered sealed reply opened: {:?}",
                Bytes(tampered.clone())
            );
        } else if result.is_ok() && had_data {
            prop_assert_eq!(
                raw_text(&env, "data"),
                want,
                "tampered reply opened differently"
            );
        }
    }

    // seal_request and open_reply are inverse for the same key.
    let request = format!(
        r#"{{"action":"GENEWAYBILL","data":{}}}"#,
        String::from_utf8_lossy(payload)
    );
    for hmac in [false, true] {
        if let Ok(out) = seal_request(request.as_bytes(), &sek, case.layers, hmac) {
            check_sealed_request(request.as_bytes(), &out, &sek, case.layers, hmac)?;
        }
    }
    Ok(())
}

#[test]
fn sealed_roundtrip() {
    let files = corpus("sealed_roundtrip");
    // Fixed positions to tamper with in the corpus phase.
    let mut runner = TestRunner::deterministic();
    let positions: Vec<Index> = (0..3)
        .map(|_| any::<Index>().new_tree(&mut runner).unwrap().current())
        .collect();
    replay("sealed_roundtrip", &files, |payload| {
        for layers in [Layers::Json, Layers::Base64Json] {
            for (which, &at) in positions.iter().enumerate() {
                check_roundtrip(&RoundTripCase {
                    sek: CORPUS_SEK,
                    rek: CORPUS_REK,
                    layers,
                    payload: Bytes(payload.to_vec()),
                    tamper: Tamper::Part(which, at, b'A'),
                })?;
            }
        }
        Ok(())
    });
    let payloads = prop_oneof![
        2 => json_payload(),
        1 => mutated(seeds(&files), JSON_TOKENS),
    ];
    let tamper = prop_oneof![
        3 => (0usize..3, any::<Index>(), any::<u8>()).prop_map(|(w, i, b)| Tamper::Part(w, i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Tamper::Anywhere(i, b)),
    ];
    let strategy = (key_bytes(), any::<[u8; 32]>(), layers(), payloads, tamper).prop_map(
        |(sek, rek, layers, payload, tamper)| RoundTripCase {
            sek,
            rek,
            layers,
            payload,
            tamper,
        },
    );
    fuzz("sealed_roundtrip", strategy, |case| check_roundtrip(&case));
}

// ---------------------------------------------------------------------------------------------
// Target: crypto.

const CRYPTO_TOKENS: &[&[u8]] = &[
    b"=",
    b"==",
    b"A",
    b"/",
    b"+",
    b"-",
    b"_",
    b" ",
    b"\n",
    b"\r\n",
    b"\xc2\xa0",
    b"\x00",
    b"\xff",
    b"AAAA",
    b"QR==",
    b"-----BEGIN PUBLIC KEY-----\n",
    b"-----BEGIN RSA PUBLIC KEY-----\n",
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END PUBLIC KEY-----\n",
    b"-----END CERTIFICATE-----\n",
    b"\x30\x82\xff\xff",
    b"\x30\x80",
    b"\x02\x81\x00",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
];

/// Tokens spliced into the DER of key and certificate seeds: long and indefinite lengths,
/// small INTEGERs, empty BIT STRINGs, the RSA algorithm identifier.
const DER_TOKENS: &[&[u8]] = &[
    b"\x30\x82\xff\xff",
    b"\x30\x80",
    b"\x30\x00",
    b"\x81\xff",
    b"\x84\xff\xff\xff\xff",
    b"\x02\x01\x00",
    b"\x02\x01\x03",
    b"\x02\x81\x81\x00",
    b"\x03\x01\x00",
    b"\x05\x00",
    b"\x00",
    b"\xff",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
];

/// The DER inside the key and certificate seeds, edited at the byte level, then given to the
/// parser as DER or wrapped in PEM again: the edits reach the ASN.1 decoders, which a
/// mutation of PEM text rarely does.
fn der_mutated(files: &[(String, Vec<u8>)]) -> BoxedStrategy<Bytes> {
    let ders: Vec<(Option<String>, Vec<u8>)> = files
        .iter()
        .filter_map(|(name, bytes)| {
            if name.ends_with(".der") {
                return Some((None, bytes.clone()));
            }
            let text = std::str::from_utf8(bytes).ok()?;
            let label = text.split("-----BEGIN ").nth(1)?.split("-----").next()?;
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            Some((Some(label.to_owned()), b64_decode(&body).ok()?))
        })
        .collect();
    assert!(
        !ders.is_empty(),
        "the crypto corpus has no keys or certificates"
    );
    (select(ders), vec(mutation(), 1..4), any::<bool>())
        .prop_map(|((label, der), mutations, as_pem)| {
            let der = apply(&der, &mutations, DER_TOKENS);
            match label {
                Some(label) if as_pem => {
                    let body = b64_encode(&der);
                    let lines: Vec<&str> = body
                        .as_bytes()
                        .chunks(64)
                        .map(|c| std::str::from_utf8(c).unwrap())
                        .collect();
                    let pem = format!(
                        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                        lines.join("\n")
                    );
                    Bytes(pem.into_bytes())
                }
                _ => Bytes(der),
            }
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum CryptoInput {
    /// Used as text (lossily) by the base64 decoders and as bytes by the key parser.
    Bytes(Bytes),
    /// `key.encrypt_b64(plain)`, then edited: ciphertexts near valid ones.
    Cipher(Bytes, Vec<Mutation>),
}

#[derive(Debug, Clone)]
struct CryptoCase {
    key: [u8; 32],
    input: CryptoInput,
}

impl CryptoCase {
    fn bytes(&self) -> Vec<u8> {
        match &self.input {
            CryptoInput::Bytes(b) => b.0.clone(),
            CryptoInput::Cipher(plain, mutations) => {
                let text = key(&self.key).encrypt_b64(&plain.0);
                apply(text.as_bytes(), mutations, CRYPTO_TOKENS)
            }
        }
    }
}

impl CorpusBytes for CryptoCase {
    fn corpus_bytes(&self) -> Vec<u8> {
        self.bytes()
    }
}

fn check_crypto(case: &CryptoCase) -> Result<(), TestCaseError> {
    let k = key(&case.key);
    let bytes = case.bytes();
    let text = String::from_utf8_lossy(&bytes);

    let decoded = b64_decode(&text);
    note(if decoded.is_ok() {
        "base64"
    } else {
        "not base64"
    });
    // The vector engine accepts and refuses exactly what the scalar `base64` crate's standard
    // engine (which it replaced) does, and encodes the same text.
    let scalar = STANDARD.decode(text.trim()).ok();
    prop_assert_eq!(decoded.as_ref().ok(), scalar.as_ref());
    prop_assert_eq!(b64_encode(&bytes), STANDARD.encode(&bytes));
    if let Ok(d) = &decoded {
        // Standard base64 decodes canonical text only: encoding gives the text back.
        prop_assert_eq!(b64_encode(d), text.trim().to_owned());
    }
    match k.decrypt_b64(&text) {
        Ok(plain) => {
            note("decrypts");
            // ECB with PKCS#7 padding is a bijection: encrypting gives the ciphertext back.
            prop_assert_eq!(Some(k.encrypt(&plain)), decoded.as_ref().ok().cloned());
        }
        Err(_) => {
            if let Ok(d) = &decoded {
                prop_assert!(k.decrypt(d).is_err(), "decrypt_b64 and decrypt disagree");
            }
        }
    }
    match k.unwrap_key(&text) {
        Ok(inner) => {
            note("unwraps a key");
            prop_assert_eq!(k.decrypt_b64(&text).ok(), Some(inner.as_bytes().to_vec()));
        }
        Err(_) => {
            if let Ok(plain) = k.decrypt_b64(&text) {
                prop_assert_ne!(plain.len(), 32, "a 32-byte key was not unwrapped");
            }
        }
    }
    // The input as an HMAC (it matches only if it is the right one) and as a message.
    let mac = k.hmac_b64(&bytes);
    prop_assert!(k.verify_hmac_b64(&bytes, &mac).is_ok());
    if k.verify_hmac_b64(&bytes, &text).is_ok() {
        prop_assert_eq!(decoded.ok(), b64_decode(&mac).ok());
    }
    let half = bytes.len() / 2;
    let _ = k.verify_hmac_b64(&bytes[..half], &String::from_utf8_lossy(&bytes[half..]));

    if let Ok(public) = PublicKey::from_pem_or_cert(&bytes) {
        note("public key");
        let max = public.max_plaintext();
        let _ = public.encrypt(&vec![0x5a; max.min(64)]);
        prop_assert!(public.encrypt(&vec![0; max + 1]).is_err());
        if let Ok(pem) = public.to_pem() {
            let again = PublicKey::from_pem_or_cert(pem.as_bytes());
            prop_assert!(again.is_ok(), "its own PEM does not parse");
            prop_assert_eq!(again.unwrap().to_pem().ok(), Some(pem));
        }
    }
    Ok(())
}

#[test]
fn crypto() {
    let files = corpus("crypto");
    // The key forms NIC and GSTN ship must keep parsing: refusing garbage is not enough.
    for name in [
        "public_key.pem",
        "rsa_public_key.pem",
        "certificate.pem",
        "certificate.der",
    ] {
        let (_, bytes) = files.iter().find(|(n, _)| n == name).expect(name);
        let parsed = PublicKey::from_pem_or_cert(bytes);
        assert!(parsed.is_ok(), "corpus/crypto/{name}: {parsed:?}");
    }
    replay("crypto", &files, |bytes| {
        check_crypto(&CryptoCase {
            key: CORPUS_SEK,
            input: CryptoInput::Bytes(Bytes(bytes.to_vec())),
        })
    });
    let inputs = prop_oneof![
        2 => mutated(seeds(&files), CRYPTO_TOKENS).prop_map(CryptoInput::Bytes),
        2 => der_mutated(&files).prop_map(CryptoInput::Bytes),
        1 => "[A-Za-z0-9+/=\\-_ \\n\\t]{0,120}".prop_map(|s| CryptoInput::Bytes(Bytes(s.into_bytes()))),
        1 => vec(any::<u8>(), 0..200).prop_map(|b| CryptoInput::Bytes(Bytes(b))),
        // Long enough for every block size of the vector code, and its tail.
        1 => (vec(any::<u8>(), 0..700), vec(mutation(), 0..3))
            .prop_map(|(plain, m)| CryptoInput::Cipher(Bytes(plain), m)),
        2 => (vec(any::<u8>(), 0..64), vec(mutation(), 0..4))
            .prop_map(|(plain, m)| CryptoInput::Cipher(Bytes(plain), m)),
    ];
    let strategy = (key_bytes(), inputs).prop_map(|(key, input)| CryptoCase { key, input });
    fuzz("crypto", strategy, |case| check_crypto(&case));
}

// ---------------------------------------------------------------------------------------------
// Target: config.

const CONFIG_TOKENS: &[&[u8]] = &[
    b"=",
    b"\"",
    b"'",
    b"\"\"\"",
    b"'''",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b",",
    b".",
    b"#",
    b"\n",
    b"\r",
    b"\\",
    b"\\u0000",
    b"\\U0010FFFF",
    b"\\uD800",
    b"\x00",
    b"${",
    b"}",
    b"${}",
    b"${A",
    b"$$",
    b"${${CARGO_PKG_NAME}}",
    b"${CARGO_PKG_NAME}",
    b"${GSTGATE_FUZZ_UNSET_VARIABLE}",
    b"99999999999h",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-1",
    b"1e400",
    b"inf",
    b"nan",
    b"999999999999999999999999999999999999999999",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
    b"\xff",
    b"[[upstream]]\n",
    b"[[credential]]\n",
    b"[server]\n",
];

fn quoted(s: String) -> String {
    toml::Value::String(s).to_string()
}

/// Durations, huge and odd.
fn toml_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9]{1,40} ?(ns|us|ms|s|m|min|h|d|w|M|y|sec|hours|)".prop_map(quoted),
        2 => select(vec![
            "99999999999h", "18446744073709551615s", "18446744073709551616ns", "584542046091y",
            "1y 1y 1y 1y", "0s", "0ns", "1ns", "-1s", " 5m ", "5", "", "1h 1h", "1.5h", "6h",
            "30d", "31d", "1m", "59s", "99ms", "100ms", "1h ${CARGO_PKG_NAME}", "${PATH}",
        ])
        .prop_map(|s| quoted(s.to_owned())),
    ]
}

/// Strings: interpolation forms, values some fields accept, arbitrary unicode.
fn toml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec(
            select(vec![
                "${", "}", "${}", "${A", "$", "$$", "${${CARGO_PKG_NAME}}", "${CARGO_PKG_NAME}",
                "${GSTGATE_FUZZ_UNSET_VARIABLE}", "${PATH}", "${ A }", "${é}", "abc", "h", "10",
                "/", "http://", "127.0.0.1:", "0",
            ]),
            0..6,
        )
        .prop_map(|p| quoted(p.concat())),
        2 => select(vec![
            "memory", "redis", "einvoice", "ewaybill", "gstn", "gateway", "passthrough", "enforce",
            "warn", "http://[::1]:0", "http://u:p@h", "https://", "http://h/?q", "ftp://h", "/",
            "", "0.0.0.0:0", "[::]:65535", "127.0.0.1:65536", "27aapfu0939f1zv",
            "27AAPFU0939F1ZX", " 27AAPFU0939F1ZV ", "a\nb", "short",
        ])
        .prop_map(|s| quoted(s.to_owned())),
        // NUL and other controls included (TOML escapes them).
        2 => any::<String>().prop_map(quoted),
    ]
}

/// Integers and what is not quite one.
fn toml_int() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec![
            "0", "-1", "1", "4", "5", "6", "4294967295", "4294967296", "18446744073709551615",
            "18446744073709551616", "9223372036854775807", "-9223372036854775808",
            "99999999999999999999999", "1e400", "inf", "-nan", "0x10", "1_000", "1.5",
        ])
        .prop_map(str::to_owned),
        2 => (0u32..8).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{15,60}",
    ]
}

fn toml_array() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "[]",
            "[\"\"]",
            "[1]",
            "[\"/a/\", \"/a/\"]",
            "[\"a/\"]",
            "[\"27AAPFU0939F1ZV\"]",
            "[\"*\"]",
            "[\"e\"]",
            "[\"e\", \"e\"]",
            "[\"nope\"]",
            "[[\"/\"]]",
        ])
        .prop_map(str::to_owned),
        vec(toml_string(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

fn toml_map() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "{}",
            "{ txn = \"t\" }",
            "{ \"x y\" = \"v\" }",
            "{ a = \"\\n\" }",
            "{ gstin = 1 }",
            "{ nope = \"x\" }",
        ])
        .prop_map(str::to_owned),
        vec(
            (select(vec!["txn", "gstin", "k", "\"\""]), toml_string()),
            0..3
        )
        .prop_map(|kv| {
            let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", kv.join(", "))
        }),
    ]
}

/// TOML that is no plain value of a field: other types, broken syntax.
fn toml_other() -> impl Strategy<Value = String> {
    select(vec![
        "true",
        "1979-05-27T07:32:00Z",
        "'''a\nb'''",
        "\"\"\"\n\"\"\"",
        "\"\\uD800\"",
        "\"\\u0000\"",
        "\"a\u{0}b\"",
        "\"unterminated",
        "",
        "=",
        "[",
        "{",
    ])
    .prop_map(str::to_owned)
}

/// A value of any type.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        toml_duration(),
        toml_string(),
        toml_int(),
        toml_array(),
        toml_map(),
        toml_other(),
    ]
}

/// The kind of a template value (0 duration, 1 string, 2 integer, 3 array, 4 table), to
/// replace it with a hostile value of the same kind.
fn toml_kind_of(value: &str) -> usize {
    let inner = value.trim_matches('"');
    let duration = value.starts_with('"')
        && inner.starts_with(|c: char| c.is_ascii_digit())
        && inner.ends_with(|c: char| c.is_ascii_alphabetic())
        && inner.bytes().all(|b| b.is_ascii_alphanumeric());
    match value.as_bytes().first() {
        _ if duration => 0,
        Some(b'"') => 1,
        Some(b'[') => 3,
        Some(b'{') => 4,
        _ => 2,
    }
}

/// A small valid configuration, as (table header, [(key, value)]).
fn config_template() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "[server]",
            vec![
                ("listen", "\"127.0.0.1:0\""),
                ("admin_listen", "\"127.0.0.1:0\""),
                ("admin_token", "\"fuzz-admin-token-0123456789\""),
                ("max_body_bytes", "1024"),
                ("max_header_bytes", "4096"),
                ("request_timeout", "\"60s\""),
                ("header_read_timeout", "\"10s\""),
                ("shutdown_grace", "\"1s\""),
            ],
        ),
        ("[store]", vec![("backend", "\"memory\"")]),
        (
            "[[upstream]]",
            vec![
                ("name", "\"e\""),
                ("api", "\"ewaybill\""),
                ("base_url", "\"http://127.0.0.1:1\""),
                ("routes", "[\"/ewaybillapi/\"]"),
                ("auth_path", "\"/ewaybillapi/v1.03/auth\""),
                ("public_key", "\"k.pem\""),
                ("encryption", "\"gateway\""),
                ("client_id", "\"id\""),
                ("client_secret", "\"${CARGO_PKG_NAME}\""),
                ("refresh_before", "\"10m\""),
                ("gstin_checksum", "\"warn\""),
                ("timeout", "\"30s\""),
                ("connect_timeout", "\"5s\""),
                ("token_lifetime", "\"6h\""),
                ("max_logins", "4"),
                ("login_window", "\"15m\""),
                ("session_idle_ttl", "\"7d\""),
                ("max_response_bytes", "65536"),
                ("ip_usr", "\"203.0.113.10\""),
                ("headers", "{ \"Ocp-Apim-Subscription-Key\" = \"k$$\" }"),
                ("header_names", "{ txn = \"x-txn\" }"),
            ],
        ),
        (
            "[[upstream]]",
            vec![
                ("name", "\"g\""),
                ("api", "\"gstn\""),
                ("base_url", "\"https://gsp.example.com/gstn\""),
                ("routes", "[\"/taxpayerapi/\"]"),
                ("auth_path", "\"/taxpayerapi/v1.0/authenticate\""),
                ("public_key", "\"g.cer\""),
                ("client_id", "\"id\""),
                ("client_secret", "\"s\""),
            ],
        ),
        (
            "[[credential]]",
            vec![
                ("gstin", "\"27AAPFU0939F1ZV\""),
                ("username", "\"u\""),
                ("password", "\"p\""),
                ("upstreams", "[\"e\", \"g\"]"),
                ("session_lifetime", "\"30d\""),
            ],
        ),
        (
            "[alerts]",
            vec![
                ("webhook_url", "\"http://127.0.0.1:9/hook\""),
                ("otp_warning", "\"48h\""),
                ("check_interval", "\"1m\""),
            ],
        ),
        (
            "[[client]]",
            vec![
                ("name", "\"c\""),
                (
                    "api_key_sha256",
                    "\"a52782e3a2d4dd2f95f640b9abfb3b2a6b8e722c65f55be830f6e5f619f7f873\"",
                ),
                ("gstins", "[\"27AAPFU0939F1ZV\", \"*\"]"),
            ],
        ),
        (
            "[simulator]",
            vec![
                ("listen", "\"127.0.0.1:0\""),
                ("key_file", "\"sim.pem\""),
                ("public_key_out", "\"sim-public.pem\""),
                ("token_ttl", "\"6h\""),
                ("force_window", "\"10m\""),
                ("fixed_otp", "\"575757\""),
            ],
        ),
    ]
}

/// What happens to one line of the template.
#[derive(Debug, Clone)]
enum Edit {
    /// A hostile value of the line's kind (duration, string, integer, array, table).
    Typed([String; 5]),
    /// A value of any kind.
    Value(String),
    Drop,
    Twice,
    /// The line goes, with its whole table if it is the first of an optional one.
    DropTable,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        9 => (toml_duration(), toml_string(), toml_int(), toml_array(), toml_map())
            .prop_map(|(d, s, i, a, m)| Edit::Typed([d, s, i, a, m])),
        3 => toml_value().prop_map(Edit::Value),
        2 => Just(Edit::Drop),
        1 => Just(Edit::Twice),
        1 => Just(Edit::DropTable),
    ]
}

/// The template with zero to two lines edited (a hostile value, dropped, repeated) and
/// sometimes a stray line at the end: mostly close to valid, so validation is reached.
fn structured_config() -> impl Strategy<Value = Bytes> {
    let stray = prop_oneof![
        12 => Just(String::new()),
        1 => (select(vec!["unknown", "server.listen", "\"quoted key\"", "a.b.c", ""]), toml_value())
            .prop_map(|(k, v)| format!("{k} = {v}\n")),
        1 => select(vec!["[server]\n", "[[upstream]]\n", "[upstream]\n", "[[server]]\n", "[\n"])
            .prop_map(str::to_owned),
    ];
    (vec((any::<Index>(), edit()), 0..3), stray).prop_map(|(edits, stray)| {
        let template = config_template();
        let lines: usize = template.iter().map(|(_, kv)| kv.len()).sum();
        let edits: Vec<(usize, Edit)> = edits
            .into_iter()
            .map(|(i, e)| (i.index(lines), e))
            .collect();
        let mut text = String::new();
        let mut line = 0;
        for (t, (header, kv)) in template.into_iter().enumerate() {
            // `[server]` and the two upstreams (tables 0, 2, 3) are needed, `[store]` and
            // later tables are optional.
            let optional = t == 1 || t > 3;
            let drop_table = optional
                && edits
                    .iter()
                    .any(|(at, e)| *at == line && matches!(e, Edit::DropTable));
            if !drop_table {
                text.push_str(header);
                text.push('\n');
            }
            for (k, v) in kv {
                let edit = edits
                    .iter()
                    .rev()
                    .find(|(at, _)| *at == line)
                    .map(|(_, e)| e);
                line += 1;
                if drop_table {
                    continue;
                }
                match edit {
                    None => text.push_str(&format!("{k} = {v}\n")),
                    Some(Edit::Typed(values)) => {
                        text.push_str(&format!("{k} = {}\n", values[toml_kind_of(v)]));
                    }
                    Some(Edit::Value(hostile)) => text.push_str(&format!("{k} = {hostile}\n")),
                    Some(Edit::Drop | Edit::DropTable) => {}
                    Some(Edit::Twice) => text.push_str(&format!("{k} = {v}\n{k} = {v}\n")),
                }
            }
        }
        text.push_str(&stray);
        Bytes(text.into_bytes())
    })
}

fn check_config(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    let path = Path::new("fuzz.toml");

    // Without `${` there is nothing to look up: only `$$` becomes `$`.
    let interpolated = interpolate(&text);
    if !text.contains("${") {
        prop_assert_eq!(interpolated, Ok(text.replace("$$", "$")));
    } else if let Err(message) = interpolated {
        prop_assert!(
            message.contains("${") || message.contains("environment variable"),
            "interpolation error without a cause: {message}"
        );
    }

    match Config::parse(&text, path) {
        Ok(c) => {
            note("config ok");
            // What validation promises the rest of the gateway.
            prop_assert!(!c.upstreams.is_empty());
            prop_assert!(c.server.max_body_bytes > 0);
            for d in [
                c.server.request_timeout,
                c.server.header_read_timeout,
                c.server.shutdown_grace,
            ] {
                prop_assert!(!d.is_zero() && d <= config::MAX_TIMEOUT);
            }
            for u in &c.upstreams {
                prop_assert!(!u.routes.is_empty());
                prop_assert!(u.routes.iter().all(|r| r.starts_with('/')));
                prop_assert!(u.auth_path.starts_with('/'));
                prop_assert!(u.max_logins >= 1);
                prop_assert!(!u.timeout.is_zero() && u.timeout <= config::MAX_TIMEOUT);
                prop_assert!(u.refresh_before <= config::MAX_TOKEN_LIFETIME);
                prop_assert!(u.login_window <= config::MAX_TOKEN_LIFETIME);
                prop_assert!(u.session_idle_ttl <= config::MAX_SESSION_LIFETIME);
                prop_assert!(u
                    .token_lifetime
                    .is_none_or(|l| l <= config::MAX_TOKEN_LIFETIME));
            }
            for cred in &c.credentials {
                prop_assert!(!cred.upstreams.is_empty());
                let portal = config::MIN_SESSION_LIFETIME..=config::MAX_SESSION_LIFETIME;
                prop_assert!(
                    cred.session_lifetime.is_none_or(|l| portal.contains(&l)),
                    "session_lifetime out of range"
                );
            }
            let _ = c.warnings();
            let _ = format!("{c:?}");
        }
        Err(e) => {
            note(match e {
                ConfigError::Invalid { .. } => "config invalid",
                _ => "config refused by the parser (syntax, type, variable, duration)",
            });
            prop_assert!(
                matches!(e, ConfigError::Parse { .. } | ConfigError::Invalid { .. }),
                "unexpected error {e:?}"
            );
            prop_assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
        }
    }
    Ok(())
}

#[test]
fn config() {
    let files = corpus("config");
    replay("config", &files, check_config);
    let strategy = prop_oneof![
        3 => structured_config(),
        2 => mutated(seeds(&files), CONFIG_TOKENS),
    ];
    fuzz("config", strategy, |b| check_config(&b.0));
}

// ---------------------------------------------------------------------------------------------
// Target: path, the normaliser every caller path passes before routing.

/// Tokens spliced into path seeds: every spelling of a separator, a dot and an escape.
const PATH_TOKENS: &[&[u8]] = &[
    b".",
    b"..",
    b"/",
    b"//",
    b"\\",
    b"%",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%2F",
    b"%5c",
    b"%5C",
    b"%25",
    b"%00",
    b";",
    b"?",
    b"&",
    b"=",
    b"+",
    b"%c0%ae",
    b"%u002e",
    b"v1.04",
    b"auth",
    b"gstin=",
    b"%67stin=",
    b"\xff",
    b"\xc0\xae",
    b" ",
];

/// Paths assembled from hostile and ordinary pieces, optionally with a query.
fn structured_path() -> impl Strategy<Value = Bytes> {
    let piece = select(vec![
        "/", "a", "v1.03", "Invoice", "auth", "-", "_", "%41", "%2e", "%2E", ".", "..", "\\",
        "%5c", "%2f", ";", "%25", "%", "%2", "x.", "~", ":", "%00", "%c0%ae",
    ]);
    let query = prop_oneof![
        Just(String::new()),
        vec(
            select(vec![
                "gstin=",
                "GSTIN=",
                "%67stin=",
                "27AAPFU0939F1ZV",
                "&",
                "+",
                "%32",
                "%"
            ]),
            0..6
        )
        .prop_map(|p| format!("?{}", p.concat())),
    ];
    (vec(piece, 0..10), query)
        .prop_map(|(pieces, query)| Bytes(format!("/{}{query}", pieces.concat()).into_bytes()))
}

fn check_path(bytes: &[u8]) -> Result<(), TestCaseError> {
    use gstgate::path::{canonical, CallerPath};
    let text = String::from_utf8_lossy(bytes);
    let (raw, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    let Ok(path) = canonical(raw) else {
        note("refused");
        return Ok(());
    };
    note("accepted");
    prop_assert!(path.starts_with('/'), "{path:?}");
    let again = canonical(&path);
    prop_assert_eq!(again.as_deref(), Ok(path.as_str()), "not idempotent");
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        if s.is_empty() {
            prop_assert!(i == segments.len() - 1, "{path:?}: empty segment inside");
            continue;
        }
        prop_assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "{path:?}"
        );
        prop_assert!(
            !s.bytes().all(|b| b == b'.') && !s.ends_with('.'),
            "{path:?}"
        );
    }
    if !raw.contains('%') {
        prop_assert_eq!(&path, raw, "a path without escapes changed");
    }
    // What the upstream gets, base path + this path, is a URI whose path is exactly that:
    // nothing on the way resolves it to anything else.
    let uri: http::Uri = format!("http://gsp.example/gus/nic{path}")
        .parse()
        .map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))?;
    prop_assert_eq!(uri.path(), format!("/gus/nic{path}"));
    let caller = CallerPath::parse(raw, query).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(caller.path(), path.as_str());
    for value in caller.query_values("gstin") {
        note(if value.is_empty() {
            "empty gstin"
        } else {
            "gstin"
        });
    }
    for pattern in ["/eivital/v1.04/auth", "/taxpayerapi/v1.0/authenticate"] {
        if caller.matches_loosely(pattern) {
            note("auth path");
            prop_assert!(path
                .to_ascii_lowercase()
                .trim_end_matches('/')
                .ends_with(pattern.rsplit('/').next().unwrap_or_default()));
        }
    }
    Ok(())
}

#[test]
fn path() {
    let files = corpus("path");
    replay("path", &files, check_path);
    let strategy = prop_oneof![
        3 => structured_path(),
        2 => mutated(seeds(&files), PATH_TOKENS),
    ];
    fuzz("path", strategy, |b| check_path(&b.0));
}

// ---------------------------------------------------------------------------------------------
// Target: otp_body, the admin `POST …/otp` body.

/// OTP bodies: the right shape with near-miss values, and other JSON.
fn structured_otp_body() -> impl Strategy<Value = Bytes> {
    let value = prop_oneof![
        "[0-9]{6}".prop_map(|d| format!("\"{d}\"")),
        "[0-9 \\n+\\-a]{0,8}".prop_map(|d| format!("\"{d}\"")),
        "[0-9]{1,8}",
        Just("null".to_owned()),
        Just("[\"575757\"]".to_owned()),
        Just("\"\\u0035\\u0037\\u0035\\u0037\\u0035\\u0037\"".to_owned()),
    ];
    let extra = prop_oneof![Just(""), Just(",\"x\":1"), Just(",\"otp\":\"575757\"")];
    (json_ws(), value, extra, json_ws())
        .prop_map(|(a, v, x, b)| Bytes(format!("{a}{{\"otp\":{v}{x}}}{b}").into_bytes()))
}

fn check_otp_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    use secrecy::ExposeSecret as _;
    match gstgate::admin::parse_otp_body(bytes) {
        Ok(otp) => {
            note("accepted");
            let otp = otp.expose_secret();
            prop_assert!(
                otp.len() == 6 && otp.bytes().all(|b| b.is_ascii_digit()),
                "{otp:?}"
            );
            let value: Value = serde_json::from_slice(bytes)
                .map_err(|e| TestCaseError::fail(format!("accepted a non-JSON body: {e}")))?;
            let object = value
                .as_object()
                .ok_or_else(|| TestCaseError::fail("accepted a body that is not an object"))?;
            prop_assert_eq!(object.len(), 1);
            prop_assert_eq!(object.get("otp").and_then(Value::as_str), Some(otp));
        }
        Err(e) => {
            note(e.code());
            prop_assert_eq!(e.status().as_u16(), 400, "{}", e);
        }
    }
    Ok(())
}

#[test]
fn otp_body() {
    let files = corpus("otp_body");
    replay("otp_body", &files, check_otp_body);
    let strategy = prop_oneof![
        3 => structured_otp_body(),
        2 => mutated(seeds(&files), JSON_TOKENS),
    ];
    fuzz("otp_body", strategy, |b| check_otp_body(&b.0));
}
