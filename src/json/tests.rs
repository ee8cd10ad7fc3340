//! The scanner's own cases; tests/fuzz.rs compares it with serde_json at random.

use super::*;

fn ok(text: &str) -> bool {
    validate(text.as_bytes()).is_ok()
}

#[test]
fn accepts_what_json_allows() {
    for text in [
        "0",
        "-0",
        "1.5e+3",
        "-12.0E-01",
        "true",
        " null ",
        "\"\"",
        "\"a\\u00e9\\n\"",
        "[]",
        "[1, [2, {}], {\"a\": [true]}]",
        "{\"a\":{\"b\":{\"c\":[]}}}",
        "\"é✓\"",
    ] {
        assert!(ok(text), "{text:?}");
    }
}

#[test]
fn refuses_what_json_does_not() {
    for text in [
        "",
        " ",
        "01",
        "-",
        "1.",
        "1e",
        "+1",
        ".5",
        "tru",
        "nul",
        "True",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{1:2}",
        "[1 2]",
        "[}",
        "{]",
        "\"\\x\"",
        "\"\\u12G4\"",
        "\"a\u{1}b\"",
        "\"open",
        "[",
        "{",
        "{\"a\":",
        "1 2",
        "\u{feff}1",
        "NaN",
        "[1]]",
    ] {
        assert!(!ok(text), "{text:?}");
    }
    assert!(validate(b"\"\xff\"").is_err());
}

#[test]
fn strings_longer_than_a_step_are_scanned_to_their_end() {
    for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
        for at in 0..len {
            let mut inner = vec![b'a'; len];
            inner[at] = b'"';
            let text = [b"\"".as_slice(), &inner, b"\""].concat();
            // An early quote leaves the rest outside the string: invalid unless nothing
            // follows but the final quote... which makes another string start: invalid.
            assert!(validate(&text).is_err(), "len {len} quote at {at}");
            inner[at] = 1;
            let text = [b"\"".as_slice(), &inner, b"\""].concat();
            assert!(validate(&text).is_err(), "len {len} control at {at}");
        }
        let text = format!("\"{}\"", "é".repeat(len));
        assert!(ok(&text), "len {len}");
    }
}

/// Asserts that the string `inner`, quoted, is judged in each `(before, after)` context as
/// serde_json judges it.
fn judge_string(inner: &[u8], contexts: &[(&[u8], &[u8])]) {
    let string = [b"\"".as_slice(), inner, b"\""].concat();
    for (before, after) in contexts {
        let text = [*before, &string, *after].concat();
        let serde = serde_json::from_slice::<serde_json::Value>(&text).is_ok();
        assert_eq!(
            validate(&text).is_ok(),
            serde,
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
}

/// Short strings take a word-at-a-time path of their own: every length up to three words,
/// with a quote, an escape, a control, DEL, valid and invalid UTF-8 at every position, as a
/// name and as a value, at the text's end and before more text, judged as serde_json judges
/// them.
#[test]
fn short_strings_are_judged_as_serde_json_judges_them() {
    let odd: [&[u8]; 8] = [
        b"\"",
        b"\\n",
        b"\x1f",
        b"\x7f",
        "\u{e9}".as_bytes(),
        b"\xff",
        b"\x80",
        b"\xe2\x9c",
    ];
    let mut checked = 0;
    for len in 0..=24 {
        for at in 0..=len {
            for bytes in odd {
                let mut inner = vec![b'a'; len];
                inner.splice(at..at, bytes.iter().copied());
                judge_string(
                    &inner,
                    &[
                        (b"", b""),
                        (b"[", b"]"),
                        (b"{\"k\":", b", \"next\": [1, 2, 3]}"),
                        (b"{", b": true}"),
                    ],
                );
                checked += 4;
            }
        }
    }
    assert!(checked > 10_000);
}

/// Longer strings take `memchr`'s search and the block loops: lengths around the word, 16-
/// and 64-byte boundaries up to 300 bytes, with one odd byte at every position, and with a
/// byte above ASCII before a control or an escape, judged as serde_json judges them.
#[test]
fn long_strings_are_judged_as_serde_json_judges_them() {
    let odd: [&[u8]; 9] = [
        b"\"",
        b"\\n",
        b"\x1f",
        b"\x00",
        b"\x7f",
        "\u{e9}".as_bytes(),
        b"\xff",
        b"\x80",
        b"\xe2\x9c",
    ];
    let judge = |inner: &[u8]| judge_string(inner, &[(b"", b""), (b"{\"k\":", b", \"n\": 1}")]);
    let mut checked = 0;
    let lengths = [
        33, 40, 47, 48, 49, 63, 64, 65, 79, 80, 81, 95, 96, 97, 111, 112, 113, 127, 128, 129, 143,
        144, 159, 160, 161, 200, 255, 256, 257, 300,
    ];
    for len in lengths {
        for at in 0..=len {
            for bytes in odd {
                let mut inner = vec![b'a'; len];
                inner.splice(at..at, bytes.iter().copied());
                judge(&inner);
                checked += 1;
            }
            // A byte above ASCII at `at`, then a control or an escape further on.
            for later in [b"\x01".as_slice(), b"\\u00e9", b"\\x"] {
                let mut inner = vec![b'a'; len];
                inner.splice(len..len, later.iter().copied());
                inner.splice(at..at, "\u{e9}".bytes());
                judge(&inner);
                let mut inner = vec![b'a'; len];
                inner.splice(len..len, later.iter().copied());
                inner.splice(at..at, [0xffu8]);
                judge(&inner);
                checked += 2;
            }
        }
    }
    assert!(checked > 40_000, "{checked}");
}

#[test]
fn deep_nesting_is_checked_without_recursion() {
    for depth in [127, 128, 129, 300, 100_000] {
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(ok(&text), "depth {depth}");
        let text = format!("{}1{}", "[{\"a\":".repeat(depth), "}]".repeat(depth));
        assert!(ok(&text), "depth {depth}");
        let text = format!("{}{}", "[".repeat(depth), "}".repeat(depth));
        assert!(!ok(&text), "depth {depth}");
    }
}

#[test]
fn members_are_read_in_order_with_their_raw_text() {
    let text = br#" { "Status" : 1 , "Data":{"a": [1]},"N\u0061me":"x", "e": "a\/b" } "#;
    let got = members(text).unwrap();
    assert_eq!(
        got,
        vec![
            Member {
                name: "Status",
                escaped: false,
                value: b"1",
                plain: false,
            },
            Member {
                name: "Data",
                escaped: false,
                value: br#"{"a": [1]}"#,
                plain: false,
            },
            Member {
                name: r"N\u0061me",
                escaped: true,
                value: b"\"x\"",
                plain: true,
            },
            Member {
                name: "e",
                escaped: false,
                value: br#""a\/b""#,
                plain: false,
            },
        ]
    );
    // Beyond ASCII, or a \u escape: plain only without the escape.
    let text = "{\"a\":\"é\",\"b\":\"\\u00e9\"}";
    let plain: Vec<bool> = members(text.as_bytes())
        .unwrap()
        .iter()
        .map(|m| m.plain)
        .collect();
    assert_eq!(plain, [true, false]);
    assert_eq!(members(b"{}").unwrap(), vec![]);
    assert!(members(b"[1]").is_err());
    assert!(members(b"{\"a\":1} x").is_err());
}

#[test]
fn a_kept_value_loses_the_whitespace_around_it() {
    let json = Json::parse(" \n{\"a\": 1}\t\r\n".into()).unwrap();
    assert_eq!(json.get(), "{\"a\": 1}");
    assert_eq!(Json::parse("[]".into()).unwrap().get(), "[]");
    assert!(Json::parse("[] x".into()).is_err());
}

#[test]
fn errors_say_where() {
    let e = validate(b"{\n  \"a\": tru\n}").unwrap_err();
    assert_eq!(e.to_string(), "expected ident at line 2 column 11");
    let e = validate(b"[1,\xff]").unwrap_err();
    assert_eq!(e.to_string(), "expected value at line 1 column 4");
    let e = validate(b"[\"caf\xc3\xa9\xff\"]").unwrap_err();
    assert_eq!(e.to_string(), "invalid UTF-8 at line 1 column 8");
}
