//! Unit tests of `chit`.
use super::*;

const DIGEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn chit_text(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn parse_str(text: &str) -> Result<Chit, ChitError> {
    Chit::parse(text.as_bytes())
}

fn message(text: &str) -> String {
    match parse_str(text) {
        Ok(chit) => panic!("{text:?} parsed as {chit:?}"),
        Err(error) => error.to_string(),
    }
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

fn path(text: &str) -> DeliveryPath {
    DeliveryPath::parse(text).unwrap()
}

// ---- Digest ----

#[test]
fn digest_accepts_64_hex_digits_in_any_case() {
    let lower = Digest::parse_hex(DIGEST).unwrap();
    let upper = Digest::parse_hex(&DIGEST.to_uppercase()).unwrap();
    let mixed: String = DIGEST
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    assert_eq!(lower, upper);
    assert_eq!(lower, Digest::parse_hex(&mixed).unwrap());
    assert_eq!(lower.to_hex(), DIGEST);
    assert_eq!(upper.to_string(), DIGEST);
    assert_eq!(lower.as_bytes()[0], 0xe3);
    assert_eq!(lower.as_bytes()[31], 0x55);
}

#[test]
fn digest_bytes_round_trip() {
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(37);
    }
    let digest = Digest::from_bytes(bytes);
    assert_eq!(digest.as_bytes(), &bytes);
    assert_eq!(Digest::parse_hex(&digest.to_hex()).unwrap(), digest);
    assert_eq!(hex::decode(digest.to_hex()).unwrap(), bytes);
}

#[test]
fn digest_formats() {
    let digest: Digest = DIGEST.parse().unwrap();
    assert_eq!(format!("{digest}"), DIGEST);
    assert_eq!(format!("{digest:?}"), format!("Digest({DIGEST})"));
    assert!(Digest::from_bytes([0; 32]) < Digest::from_bytes([1; 32]));
}

#[test]
fn digest_rejections() {
    let cases: &[(String, DigestError, &str)] = &[
        (
            String::new(),
            DigestError::WrongLength { characters: 0 },
            "digest must be 64 hex digits, got 0 characters",
        ),
        (
            DIGEST[..63].to_owned(),
            DigestError::WrongLength { characters: 63 },
            "digest must be 64 hex digits, got 63 characters",
        ),
        (
            format!("{DIGEST}0"),
            DigestError::WrongLength { characters: 65 },
            "digest must be 64 hex digits, got 65 characters",
        ),
        (
            format!(" {}", &DIGEST[1..]),
            DigestError::NotHex {
                character: ' ',
                position: 1,
            },
            "digest must be 64 hex digits, found ' ' at character 1",
        ),
        (
            format!("{}g", &DIGEST[..63]),
            DigestError::NotHex {
                character: 'g',
                position: 64,
            },
            "digest must be 64 hex digits, found 'g' at character 64",
        ),
        (
            format!("{}é", &DIGEST[..63]),
            DigestError::NotHex {
                character: 'é',
                position: 64,
            },
            "digest must be 64 hex digits, found 'é' at character 64",
        ),
        (
            format!("0x{}", &DIGEST[2..]),
            DigestError::NotHex {
                character: 'x',
                position: 2,
            },
            "digest must be 64 hex digits, found 'x' at character 2",
        ),
        (
            format!("{}\u{1}", &DIGEST[..63]),
            DigestError::NotHex {
                character: '\u{1}',
                position: 64,
            },
            "digest must be 64 hex digits, found '\\u{1}' at character 64",
        ),
        (
            "+".repeat(64),
            DigestError::NotHex {
                character: '+',
                position: 1,
            },
            "digest must be 64 hex digits, found '+' at character 1",
        ),
    ];
    for (text, error, message) in cases {
        let got = Digest::parse_hex(text).unwrap_err();
        assert_eq!(&got, error, "{text:?}");
        assert_eq!(got.to_string(), *message, "{text:?}");
        assert_eq!(text.parse::<Digest>().unwrap_err(), *error);
    }
}

// ---- DeliveryPath ----

#[test]
fn path_accepts() {
    let component_255 = "c".repeat(255);
    let long_path = format!(
        "{}/{}/{}/{}/e",
        "a".repeat(255),
        "b".repeat(255),
        "c".repeat(255),
        "d".repeat(254)
    );
    assert_eq!(long_path.len(), 1024);
    let cases: Vec<&str> = vec![
        "a",
        "make-4.4.tar.gz",
        "gnu/make-4.4.tar.gz",
        "a/b/c/d/e/f",
        "with space/and more spaces.txt",
        "a /b",
        "a/ b",
        "...",
        "..a",
        "a..",
        ".hidden",
        "a/.hidden",
        "#not-a-comment",
        "a/# error: inside is fine",
        "~user/file",
        "ünïcödé/文件.tar.xz",
        "per%cent/q?uery#frag",
        "C:/windows-looking",
        "trailing.dot.",
        // Near chitd's temporary names, but not one: a directory of that
        // form (the sweep removes files only), no digits, a suffix after.
        ".d.chitd-1.2/file",
        ".x.chitd-",
        ".x.chitd-1.2.bak",
        "x.chitd-1.2",
        "\u{80}c1-control-is-not-ascii",
        &component_255,
        &long_path,
    ];
    for text in cases {
        let parsed = DeliveryPath::parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
        assert_eq!(parsed.as_str(), text);
        assert_eq!(parsed.to_string(), text);
    }
}

#[test]
fn path_rejections() {
    let long_component = "x".repeat(256);
    let long_path = format!(
        "{}/{}/{}/{}/e",
        "a".repeat(255),
        "b".repeat(255),
        "c".repeat(255),
        "d".repeat(255)
    );
    let long_path_excerpt = format!("{}…", &long_path[..80]);
    let p = |text: &str| text.to_owned();
    let cases: Vec<(&str, PathError, String)> = vec![
        ("", PathError::Empty, "path is empty".into()),
        (" a", PathError::SurroundingSpace { path: p(" a") }, r#"path " a" begins or ends with a space, which a chit line cannot keep"#.into()),
        ("a ", PathError::SurroundingSpace { path: p("a ") }, r#"path "a " begins or ends with a space, which a chit line cannot keep"#.into()),
        ("# error: x", PathError::ErrorLinePrefix { path: p("# error: x") }, r##"path "# error: x" begins with "# error:", which marks the error lines of failed chits"##.into()),
        ("a\0b", PathError::Nul { path: p("a\0b") }, r#"path "a\0b" contains a NUL byte"#.into()),
        ("a\nb", PathError::ControlCharacter { path: p("a\nb"), code: 10 }, r#"path "a\nb" contains the control character U+000A; control characters (line breaks among them) are not allowed in paths"#.into()),
        ("a\rb", PathError::ControlCharacter { path: p("a\rb"), code: 13 }, r#"path "a\rb" contains the control character U+000D; control characters (line breaks among them) are not allowed in paths"#.into()),
        ("a\tb", PathError::ControlCharacter { path: p("a\tb"), code: 9 }, r#"path "a\tb" contains the control character U+0009; control characters (line breaks among them) are not allowed in paths"#.into()),
        ("a\u{1b}[31m", PathError::ControlCharacter { path: p("a\u{1b}[31m"), code: 0x1b }, r#"path "a\u{1b}[31m" contains the control character U+001B; control characters (line breaks among them) are not allowed in paths"#.into()),
        ("a\u{7f}", PathError::ControlCharacter { path: p("a\u{7f}"), code: 0x7f }, r#"path "a\u{7f}" contains the control character U+007F; control characters (line breaks among them) are not allowed in paths"#.into()),
        ("a\\b", PathError::Backslash { path: p("a\\b") }, r#"path "a\\b" contains a backslash; directories are separated by "/""#.into()),
        ("..\\x", PathError::Backslash { path: p("..\\x") }, r#"path "..\\x" contains a backslash; directories are separated by "/""#.into()),
        ("/etc/passwd", PathError::Absolute { path: p("/etc/passwd") }, r#"path "/etc/passwd" is absolute; it must be relative to the delivery directory"#.into()),
        ("/", PathError::Absolute { path: p("/") }, r#"path "/" is absolute; it must be relative to the delivery directory"#.into()),
        ("//a", PathError::Absolute { path: p("//a") }, r#"path "//a" is absolute; it must be relative to the delivery directory"#.into()),
        ("a/", PathError::TrailingSlash { path: p("a/") }, r#"path "a/" ends with "/"; it must name a file"#.into()),
        ("a/b//", PathError::TrailingSlash { path: p("a/b//") }, r#"path "a/b//" ends with "/"; it must name a file"#.into()),
        ("a//b", PathError::EmptyComponent { path: p("a//b") }, r#"path "a//b" has an empty component ("//")"#.into()),
        (".", PathError::DotComponent { path: p(".") }, r#"path "." has a "." component"#.into()),
        ("./a", PathError::DotComponent { path: p("./a") }, r#"path "./a" has a "." component"#.into()),
        ("a/./b", PathError::DotComponent { path: p("a/./b") }, r#"path "a/./b" has a "." component"#.into()),
        ("a/.", PathError::DotComponent { path: p("a/.") }, r#"path "a/." has a "." component"#.into()),
        ("..", PathError::DotDotComponent { path: p("..") }, r#"path ".." has a ".." component"#.into()),
        ("../x", PathError::DotDotComponent { path: p("../x") }, r#"path "../x" has a ".." component"#.into()),
        ("a/../../x", PathError::DotDotComponent { path: p("a/../../x") }, r#"path "a/../../x" has a ".." component"#.into()),
        ("a/..", PathError::DotDotComponent { path: p("a/..") }, r#"path "a/.." has a ".." component"#.into()),
        (&long_component, PathError::ComponentTooLong { path: format!("{}…", "x".repeat(80)), bytes: 256 }, format!("path \"{}…\" has a component of 256 bytes; the limit is 255", "x".repeat(80))),
        (".x.chitd-1.2", PathError::TemporaryName { path: p(".x.chitd-1.2") }, r#"path ".x.chitd-1.2" names a file like chitd's temporary files (".<name>.chitd-<pid>.<n>"), which chitd removes from delivery directories when it starts"#.into()),
        ("sub/.bar.txt.chitd-99999.1", PathError::TemporaryName { path: p("sub/.bar.txt.chitd-99999.1") }, r#"path "sub/.bar.txt.chitd-99999.1" names a file like chitd's temporary files (".<name>.chitd-<pid>.<n>"), which chitd removes from delivery directories when it starts"#.into()),
        (&long_path, PathError::TooLong { path: long_path_excerpt.clone(), bytes: 1025 }, format!("path \"{long_path_excerpt}\" is 1025 bytes; the limit is 1024")),
    ];
    for (text, error, message) in cases {
        let got = DeliveryPath::parse(text).unwrap_err();
        assert_eq!(got, error, "{text:?}");
        assert_eq!(got.to_string(), message, "{text:?}");
    }
}

#[test]
fn path_component_limit_counts_bytes_not_characters() {
    // 128 two-byte characters: 256 bytes.
    let text = format!("dir/{}", "é".repeat(128));
    let error = DeliveryPath::parse(&text).unwrap_err();
    assert!(
        matches!(error, PathError::ComponentTooLong { bytes: 256, .. }),
        "{error:?}"
    );
    assert!(DeliveryPath::parse(&format!("dir/{}", "é".repeat(127))).is_ok());
}

#[test]
fn path_error_quotes_at_most_80_characters() {
    let text = format!("{}/{}", "é".repeat(200), "x".repeat(300));
    let message = DeliveryPath::parse(&text).unwrap_err().to_string();
    assert!(message.chars().count() < 200, "{message}");
    assert!(
        message.contains(&format!("\"{}…\"", "é".repeat(80))),
        "{message}"
    );
}

#[test]
fn path_components() {
    let cases: &[(&str, &[&str], &str, &[&str])] = &[
        ("a", &["a"], "a", &[]),
        ("a/b", &["a", "b"], "b", &["a"]),
        (
            "gnu/make/make-4.4.tar.gz",
            &["gnu", "make", "make-4.4.tar.gz"],
            "make-4.4.tar.gz",
            &["gnu", "make"],
        ),
    ];
    for (text, components, file_name, parents) in cases {
        let parsed = path(text);
        assert_eq!(parsed.components().collect::<Vec<_>>(), *components);
        assert_eq!(parsed.file_name(), *file_name);
        assert_eq!(parsed.parent_components().collect::<Vec<_>>(), *parents);
    }
}

#[test]
fn path_under_base_url() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "https://mirror.example/distfiles",
            "gnu/make-4.4.tar.gz",
            "https://mirror.example/distfiles/gnu/make-4.4.tar.gz",
        ),
        (
            "https://mirror.example/distfiles/",
            "gnu/make-4.4.tar.gz",
            "https://mirror.example/distfiles/gnu/make-4.4.tar.gz",
        ),
        (
            "https://mirror.example/distfiles//",
            "a",
            "https://mirror.example/distfiles/a",
        ),
        ("https://mirror.example", "a", "https://mirror.example/a"),
        ("https://mirror.example/", "a", "https://mirror.example/a"),
        (
            "https://mirror.example/d?q=1#frag",
            "a",
            "https://mirror.example/d/a",
        ),
        (
            "https://user:pw@mirror.example:8443/d",
            "a",
            "https://user:pw@mirror.example:8443/d/a",
        ),
        ("http://m/d", "a b/c d", "http://m/d/a%20b/c%20d"),
        ("http://m/d", "Az09-._~", "http://m/d/Az09-._~"),
        ("http://m/d", "q?x#y%z", "http://m/d/q%3Fx%23y%25z"),
        ("http://m/d", "%2e%2E/x", "http://m/d/%252e%252E/x"),
        (
            "http://m/d",
            "a+b=c&d;e,f:g@h!i$j'k(l)m*n",
            "http://m/d/a%2Bb%3Dc%26d%3Be%2Cf%3Ag%40h%21i%24j%27k%28l%29m%2An",
        ),
        ("http://m/d", "ü/文", "http://m/d/%C3%BC/%E6%96%87"),
        ("http://m/d", "...", "http://m/d/..."),
        ("http://m/d", "..a/b..", "http://m/d/..a/b.."),
        ("http://m/d", "#x", "http://m/d/%23x"),
        (
            "file:///srv/mirror",
            "gnu/make.tar",
            "file:///srv/mirror/gnu/make.tar",
        ),
        ("file:///srv/mirror/", "C:/x", "file:///srv/mirror/C%3A/x"),
        ("file:///", "C|", "file:///C%7C"),
    ];
    for (base, text, expected) in cases {
        let joined = path(text).under(&url(base));
        assert_eq!(joined.as_str(), *expected, "{base} + {text}");
        assert_eq!(url(joined.as_str()), joined, "reparse {joined}");
    }
}

// ---- Chit::parse: accepted ----

#[test]
fn parses_minimal_chit() {
    let chit = parse_str(&chit_text(&[DIGEST, "0", "empty-file"])).unwrap();
    assert_eq!(chit.digest, Digest::parse_hex(DIGEST).unwrap());
    assert_eq!(chit.size, 0);
    assert_eq!(chit.path, path("empty-file"));
    assert!(chit.urls.is_empty());
}

#[test]
fn parses_chit_with_urls_and_comments() {
    let text = chit_text(&[
        &DIGEST.to_uppercase(),
        "2263125",
        "gnu/make-4.4.tar.gz",
        "https://ftp.gnu.org/gnu/make/make-4.4.tar.gz",
        "",
        "# a comment",
        "   # an indented comment",
        "\t",
        "http://mirror.example:8080/make-4.4.tar.gz?x=1",
        "#no space comment",
        "# error: earlier failure",
    ]);
    let chit = parse_str(&text).unwrap();
    assert_eq!(chit.size, 2_263_125);
    assert_eq!(chit.path.as_str(), "gnu/make-4.4.tar.gz");
    assert_eq!(
        chit.urls,
        vec![
            url("https://ftp.gnu.org/gnu/make/make-4.4.tar.gz"),
            url("http://mirror.example:8080/make-4.4.tar.gz?x=1"),
        ]
    );
}

#[test]
fn line_ends_whitespace_and_bom_do_not_matter() {
    let expected = parse_str(&chit_text(&[DIGEST, "42", "a/b c", "https://h/x"])).unwrap();
    let variants = [
        format!("{DIGEST}\n42\na/b c\nhttps://h/x"),
        format!("{DIGEST}\r\n42\r\na/b c\r\nhttps://h/x\r\n"),
        format!("{DIGEST}\r\n42\na/b c\r\nhttps://h/x"),
        format!("  {DIGEST}\t\n\t42  \n  a/b c \r\n  https://h/x  \n"),
        format!("{DIGEST} \r\n42\x0c\r\na/b c\r\r\nhttps://h/x\r\n\r\n\r\n"),
        format!("\u{feff}{DIGEST}\n42\na/b c\nhttps://h/x\n"),
        format!("{DIGEST}\n0042\na/b c\n\n#\nhttps://h/x\n# trailing comment"),
    ];
    for text in &variants {
        assert_eq!(parse_str(text).as_ref(), Ok(&expected), "{text:?}");
    }
}

#[test]
fn size_accepts_leading_zeros_and_the_u64_range() {
    let cases: &[(&str, u64)] = &[
        ("0", 0),
        ("000", 0),
        ("007", 7),
        ("18446744073709551615", u64::MAX),
        ("0000000000000000000000000018446744073709551615", u64::MAX),
    ];
    for (text, size) in cases {
        let chit = parse_str(&chit_text(&[DIGEST, text, "f"])).unwrap();
        assert_eq!(chit.size, *size, "{text}");
    }
}

#[test]
fn path_line_may_start_with_hash() {
    let chit = parse_str(&chit_text(&[DIGEST, "1", "#include/x.h"])).unwrap();
    assert_eq!(chit.path.as_str(), "#include/x.h");
}

#[test]
fn url_normalization_is_kept_stable() {
    let chit = parse_str(&chit_text(&[
        DIGEST,
        "1",
        "f",
        "HTTPS://Example.COM:443/a/../b c",
    ]))
    .unwrap();
    assert_eq!(chit.urls[0].as_str(), "https://example.com/b%20c");
}

// ---- Chit::parse: rejected ----

#[test]
fn rejection_messages() {
    let long = "z".repeat(300);
    let cases: Vec<(String, String)> = vec![
        (String::new(), "chit has no line 1 (sha256 digest)".into()),
        (chit_text(&[DIGEST]), "chit has no line 2 (size)".into()),
        (format!("{DIGEST}\n5"), "chit has no line 3 (path)".into()),
        (chit_text(&[DIGEST, "5"]), "chit has no line 3 (path)".into()),
        ("\n".into(), "line 1 is empty; expected the sha256 digest".into()),
        (chit_text(&["   ", "5", "f"]), "line 1 is empty; expected the sha256 digest".into()),
        (chit_text(&[DIGEST, "", "f"]), "line 2 is empty; expected the size".into()),
        (chit_text(&[DIGEST, "5", " \t "]), "line 3 is empty; expected the path".into()),
        (chit_text(&[DIGEST, "5", "", "f"]), "line 3 is empty; expected the path".into()),
        (chit_text(&["# comment", DIGEST, "5", "f"]), "line 1 is a comment; expected the sha256 digest (comments may follow line 3 only)".into()),
        (chit_text(&[DIGEST, "  # size", "5", "f"]), "line 2 is a comment; expected the size (comments may follow line 3 only)".into()),
        (chit_text(&["# error: chit has no line 1 (sha256 digest)"]), "chit has no line 1 (sha256 digest); in its place is an \"# error:\" line from an earlier attempt".into()),
        (chit_text(&[DIGEST, "5", "# error: x"]), "chit has no line 3 (path); in its place is an \"# error:\" line from an earlier attempt".into()),
        (chit_text(&[&DIGEST[1..], "5", "f"]), "line 1: digest must be 64 hex digits, got 63 characters".into()),
        (chit_text(&[&format!("sha256:{DIGEST}"), "5", "f"]), "line 1: digest must be 64 hex digits, got 71 characters".into()),
        (chit_text(&[&format!("{}Z", &DIGEST[1..]), "5", "f"]), "line 1: digest must be 64 hex digits, found 'Z' at character 64".into()),
        (chit_text(&[DIGEST, "-5", "f"]), "line 2: size \"-5\" is not a decimal byte count (no sign allowed)".into()),
        (chit_text(&[DIGEST, "+5", "f"]), "line 2: size \"+5\" is not a decimal byte count (no sign allowed)".into()),
        (chit_text(&[DIGEST, "-0", "f"]), "line 2: size \"-0\" is not a decimal byte count (no sign allowed)".into()),
        (chit_text(&[DIGEST, "5 MB", "f"]), "line 2: size \"5 MB\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "0x10", "f"]), "line 2: size \"0x10\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "1_000", "f"]), "line 2: size \"1_000\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "1e3", "f"]), "line 2: size \"1e3\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "1.5", "f"]), "line 2: size \"1.5\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "١٢٣", "f"]), "line 2: size \"١٢٣\" is not a decimal byte count (only the digits 0-9 are allowed)".into()),
        (chit_text(&[DIGEST, "18446744073709551616", "f"]), "line 2: size \"18446744073709551616\" does not fit in 64 bits; the largest size is 18446744073709551615 bytes".into()),
        (chit_text(&[DIGEST, "99999999999999999999999", "f"]), "line 2: size \"99999999999999999999999\" does not fit in 64 bits; the largest size is 18446744073709551615 bytes".into()),
        (chit_text(&[DIGEST, "5", "../x"]), "line 3: path \"../x\" has a \"..\" component".into()),
        (chit_text(&[DIGEST, "5", "/etc/passwd"]), "line 3: path \"/etc/passwd\" is absolute; it must be relative to the delivery directory".into()),
        (chit_text(&[DIGEST, "5", "a//b"]), "line 3: path \"a//b\" has an empty component (\"//\")".into()),
        (chit_text(&[DIGEST, "5", "a/"]), "line 3: path \"a/\" ends with \"/\"; it must name a file".into()),
        (chit_text(&[DIGEST, "5", "a\u{0}b"]), "line 3: path \"a\\0b\" contains a NUL byte".into()),
        (chit_text(&[DIGEST, "5", "a\\b"]), "line 3: path \"a\\\\b\" contains a backslash; directories are separated by \"/\"".into()),
        (chit_text(&[DIGEST, "5", "a\rb"]), "line 3: path \"a\\rb\" contains the control character U+000D; control characters (line breaks among them) are not allowed in paths".into()),
        (chit_text(&[DIGEST, "5", "f", "ftp://h/x"]), "line 4: URL \"ftp://h/x\" has scheme \"ftp\"; only http and https are fetched".into()),
        (chit_text(&[DIGEST, "5", "f", "", "# c", "https://ok/x", "ftp://h/x"]), "line 7: URL \"ftp://h/x\" has scheme \"ftp\"; only http and https are fetched".into()),
        (chit_text(&[DIGEST, "5", "f", "file:///srv/x"]), "line 4: URL \"file:///srv/x\" has scheme \"file\"; only http and https are fetched (file:// is allowed for configured mirrors only)".into()),
        (chit_text(&[DIGEST, "5", "f", "ftp://user:secret@h/x"]), "line 4: URL \"ftp://***@h/x\" has scheme \"ftp\"; only http and https are fetched".into()),
        (chit_text(&[DIGEST, "5", "f", "data:text/plain,hi"]), "line 4: URL \"data:text/plain,hi\" has scheme \"data\"; only http and https are fetched".into()),
        (chit_text(&[DIGEST, "5", "f", "mailto:a@b"]), "line 4: URL \"mailto:a@b\" has scheme \"mailto\"; only http and https are fetched".into()),
        (chit_text(&[DIGEST, "5", "f", "example.com/x"]), "line 4: URL \"example.com/x\" is not a valid absolute URL: relative URL without a base".into()),
        (chit_text(&[DIGEST, "5", "f", "/x/y"]), "line 4: URL \"/x/y\" is not a valid absolute URL: relative URL without a base".into()),
        (chit_text(&[DIGEST, "5", "f", "http://"]), "line 4: URL \"http://\" is not a valid absolute URL: empty host".into()),
        (chit_text(&[DIGEST, "5", "f", "http://h:99999/x"]), "line 4: URL \"http://h:99999/x\" is not a valid absolute URL: invalid port number".into()),
        (chit_text(&[DIGEST, "5", "f", "http://user:secret@h:99999/x"]), "line 4: URL \"http://***@h:99999/x\" is not a valid absolute URL: invalid port number".into()),
        (chit_text(&[DIGEST, "5", "f", "http://[::1/x"]), "line 4: URL \"http://[::1/x\" is not a valid absolute URL: invalid IPv6 address".into()),
        (chit_text(&[DIGEST, "5", "f", &long]), format!("line 4: URL \"{}…\" is not a valid absolute URL: relative URL without a base", "z".repeat(80))),
    ];
    for (text, expected) in &cases {
        assert_eq!(&message(text), expected, "{text:?}");
    }
}

#[test]
fn rejection_variants_and_lines() {
    let cases: Vec<(String, ChitError, Option<usize>)> = vec![
        (
            String::new(),
            ChitError::MissingLine {
                field: HeaderField::Digest,
            },
            Some(1),
        ),
        (
            chit_text(&[DIGEST, ""]),
            ChitError::EmptyLine {
                field: HeaderField::Size,
            },
            Some(2),
        ),
        (
            chit_text(&[DIGEST, "#"]),
            ChitError::CommentInHeader {
                field: HeaderField::Size,
            },
            Some(2),
        ),
        (
            chit_text(&[DIGEST, "1", "# error: x"]),
            ChitError::ErrorLineInHeader {
                field: HeaderField::Path,
            },
            Some(3),
        ),
        (
            chit_text(&["x"]),
            ChitError::Digest(DigestError::WrongLength { characters: 1 }),
            Some(1),
        ),
        (
            chit_text(&[DIGEST, "-1", "f"]),
            ChitError::SizeSigned { text: "-1".into() },
            Some(2),
        ),
        (
            chit_text(&[DIGEST, "1k", "f"]),
            ChitError::SizeNotDecimal { text: "1k".into() },
            Some(2),
        ),
        (
            chit_text(&[DIGEST, "99999999999999999999", "f"]),
            ChitError::SizeOverflow {
                text: "99999999999999999999".into(),
            },
            Some(2),
        ),
        (
            chit_text(&[DIGEST, "1", "a/"]),
            ChitError::Path(PathError::TrailingSlash { path: "a/".into() }),
            Some(3),
        ),
        (
            chit_text(&[DIGEST, "1", "f", "x"]),
            ChitError::UrlUnparseable {
                line: 4,
                url: "x".into(),
                problem: url::ParseError::RelativeUrlWithoutBase,
            },
            Some(4),
        ),
        (
            chit_text(&[DIGEST, "1", "f", "", "gopher://h/"]),
            ChitError::UnsupportedScheme {
                line: 5,
                url: "gopher://h/".into(),
                scheme: "gopher".into(),
            },
            Some(5),
        ),
        (
            "x".repeat(MAX_CHIT_BYTES + 1),
            ChitError::TooLarge {
                bytes: MAX_CHIT_BYTES + 1,
            },
            None,
        ),
    ];
    for (text, error, line) in cases {
        let got = parse_str(&text).unwrap_err();
        assert_eq!(got, error, "{text:?}");
        assert_eq!(got.line(), line, "{text:?}");
    }
}

#[test]
fn size_limit_is_checked_first_and_is_inclusive() {
    let head = chit_text(&[DIGEST, "1", "f"]);
    let mut text = head.clone();
    text.push('#');
    while text.len() < MAX_CHIT_BYTES - 1 {
        text.push('x');
    }
    text.push('\n');
    assert_eq!(text.len(), MAX_CHIT_BYTES);
    assert!(parse_str(&text).is_ok());

    text.push('\n');
    assert_eq!(message(&text), "chit is 65537 bytes; the limit is 65536");

    let mut bytes = vec![0xff; 70000];
    assert_eq!(
        Chit::parse(&bytes).unwrap_err().to_string(),
        "chit is 70000 bytes; the limit is 65536"
    );
    bytes.truncate(10);
    assert_eq!(
        Chit::parse(&bytes).unwrap_err(),
        ChitError::NotUtf8 { line: 1 }
    );
}

#[test]
fn invalid_utf8_names_the_first_bad_line() {
    let cases: Vec<(Vec<u8>, usize)> = vec![
        (b"\xff".to_vec(), 1),
        ([DIGEST.as_bytes(), b"\n\xc3"].concat(), 2),
        ([DIGEST.as_bytes(), b"\n12\xff\n"].concat(), 2),
        ([DIGEST.as_bytes(), b"\n1\nf\n\n# \xe2\x82\n"].concat(), 5),
        (
            [DIGEST.as_bytes(), b"\r\n1\r\nf\xc0\xaf\r\nhttp://h/\xff\n"].concat(),
            3,
        ),
        (
            [DIGEST.as_bytes(), b"\n1\nf\nhttp://h/\xed\xa0\x80\n"].concat(),
            4,
        ),
    ];
    for (bytes, line) in cases {
        let error = Chit::parse(&bytes).unwrap_err();
        assert_eq!(error, ChitError::NotUtf8 { line }, "{bytes:?}");
        assert_eq!(error.to_string(), format!("line {line}: not valid UTF-8"));
    }
}

#[test]
fn error_messages_quote_bad_lines_briefly_and_visibly() {
    let long_size = format!("-{}", "9".repeat(5000));
    let message = message(&chit_text(&[DIGEST, &long_size, "f"]));
    assert!(message.len() < 200, "{message}");
    assert!(
        message.contains(&format!("\"-{}…\"", "9".repeat(79))),
        "{message}"
    );

    let message = self::message(&chit_text(&[DIGEST, "1\u{1b}[2J", "f"]));
    assert_eq!(
        message,
        "line 2: size \"1\\u{1b}[2J\" is not a decimal byte count (only the digits 0-9 are allowed)"
    );
    assert!(!message.chars().any(char::is_control));
}

// ---- render and the round trip ----

#[test]
fn render_is_canonical() {
    let text = format!(
        "  {}\r\n007\r\n a/b c \r\n# comment\r\n\r\nHTTPS://H/x\r\nhttp://h:80/y",
        DIGEST.to_uppercase()
    );
    let chit = parse_str(&text).unwrap();
    assert_eq!(
        chit.render(),
        format!("{DIGEST}\n7\na/b c\nhttps://h/x\nhttp://h/y\n")
    );
    assert_eq!(parse_str(&chit.render()).unwrap(), chit);
}

#[test]
fn render_round_trips() {
    let chits = [
        chit_text(&[DIGEST, "0", "f"]),
        chit_text(&[
            DIGEST,
            "18446744073709551615",
            "#a/ b /c",
            "https://u:p@h/x?q#f",
            "http://[::1]:8080/",
        ]),
        chit_text(&[
            DIGEST,
            "1",
            "ünï/文件",
            "https://xn--nxasmq6b.example/é",
            "http://1.2.3.4/%zz",
        ]),
    ];
    for text in &chits {
        let chit = parse_str(text).unwrap();
        assert_eq!(parse_str(&chit.render()).unwrap(), chit, "{text:?}");
    }
}

#[test]
fn built_chit_round_trips() {
    let chit = Chit {
        digest: Digest::from_bytes([0xab; 32]),
        size: 12,
        path: path("dir/file name"),
        urls: vec![url("https://example.com/a b")],
    };
    assert_eq!(parse_str(&chit.render()).unwrap(), chit);
}

// ---- error lines and retries ----

#[test]
fn error_line_is_one_capped_line() {
    assert_eq!(
        error_line("404 from https://h/x"),
        "# error: 404 from https://h/x\n"
    );
    assert_eq!(error_line(""), "# error: \n");
    assert_eq!(
        error_line("a\nb\r\nc\td\u{0}e\u{7f}f\u{85}g\u{2028}h"),
        "# error: a b  c d e f g h\n"
    );

    let exact = "x".repeat(MAX_REASON_BYTES);
    assert_eq!(error_line(&exact), format!("# error: {exact}\n"));

    let long = "é".repeat(3000); // 6000 bytes
    let line = error_line(&long);
    let reason = line
        .strip_prefix("# error: ")
        .unwrap()
        .strip_suffix('\n')
        .unwrap();
    assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
    assert!(reason.len() >= MAX_REASON_BYTES - 4);
    assert!(reason.ends_with("é…"));
    assert_eq!(line.matches('\n').count(), 1);

    let long = format!("{}{}", "x".repeat(3996), "文文");
    let reason = error_line(&long);
    assert_eq!(reason, format!("# error: {}…\n", "x".repeat(3996)));
}

#[test]
fn with_error_line_appends_a_new_last_line() {
    assert_eq!(with_error_line(b"", "r"), b"# error: r\n");
    assert_eq!(with_error_line(b"a\n", "r"), b"a\n# error: r\n");
    assert_eq!(with_error_line(b"a", "r"), b"a\n# error: r\n");
    assert_eq!(with_error_line(b"a\r\n", "r"), b"a\r\n# error: r\n");
    assert_eq!(with_error_line(b"a\r", "r"), b"a\r\n# error: r\n");
}

#[test]
fn retried_chit_parses_the_same() {
    let good = [
        chit_text(&[DIGEST, "5", "f"]),
        chit_text(&[DIGEST, "5", "f", "https://h/x", "# c"]),
        format!("{DIGEST}\r\n5\r\nf\r\nhttps://h/x"),
        format!("{DIGEST}\n5\nf"),
    ];
    for text in &good {
        let chit = parse_str(text).unwrap();
        let mut bytes = text.as_bytes().to_vec();
        for attempt in 0..3 {
            bytes = with_error_line(
                &bytes,
                &format!("attempt {attempt}: 404 from https://h/x\nmore"),
            );
            assert_eq!(
                Chit::parse(&bytes).unwrap(),
                chit,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

#[test]
fn retried_bad_chit_fails_the_same_way() {
    let bad = [
        String::new(),
        chit_text(&[DIGEST]),
        format!("{DIGEST}\n5"),
        chit_text(&[DIGEST, "5", "../x"]),
        chit_text(&[DIGEST, "-5", "f"]),
        chit_text(&[DIGEST, "5", "f", "ftp://h/x"]),
        format!("{DIGEST}\n5\nf\nftp://h/x"),
    ];
    for text in &bad {
        let first = parse_str(text).unwrap_err();
        let once = with_error_line(text.as_bytes(), &first.to_string());
        let second = Chit::parse(&once).unwrap_err();
        assert_eq!(second.line(), first.line(), "{text:?}");
        let twice = with_error_line(&once, &second.to_string());
        let third = Chit::parse(&twice).unwrap_err();
        assert_eq!(third, second, "{text:?}");
        if !matches!(first, ChitError::MissingLine { .. }) {
            assert_eq!(second, first, "{text:?}");
        }
    }
}

// ---- redaction ----

#[test]
fn redact_url_hides_credentials() {
    let cases: &[(&str, &str)] = &[
        ("https://host/x", "https://host/x"),
        ("https://user:secret@host/x", "https://***@host/x"),
        ("https://token@host/x", "https://***@host/x"),
        ("https://:secret@host/x", "https://***@host/x"),
        (
            "http://u:p@host:8080/x?q=1#f",
            "http://***@host:8080/x?q=1#f",
        ),
        ("file:///srv/mirror", "file:///srv/mirror"),
        ("ftp://u:p@h/", "ftp://***@h/"),
    ];
    for (text, expected) in cases {
        let redacted = redact_url(&url(text));
        assert_eq!(redacted, *expected, "{text}");
        assert!(!redacted.contains("secret"));
    }
}

#[test]
fn redact_url_hides_secret_query_parameters() {
    let cases: &[(&str, &str)] = &[
        (
            "https://h/x?access_token=hidden1&page=2",
            "https://h/x?access_token=***&page=2",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=hidden2&X-Amz-Date=20260101T000000Z&X-Amz-Expires=300\
             &X-Amz-Security-Token=hidden3&X-Amz-SignedHeaders=host&X-Amz-Signature=hidden4",
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=***&X-Amz-Date=20260101T000000Z&X-Amz-Expires=300\
             &X-Amz-Security-Token=***&X-Amz-SignedHeaders=***&X-Amz-Signature=***",
        ),
        (
            "https://storage.googleapis.com/b/o?GoogleAccessId=hidden5&Expires=1700000000\
             &Signature=hidden6",
            "https://storage.googleapis.com/b/o?GoogleAccessId=***&Expires=1700000000\
             &Signature=***",
        ),
        (
            "https://h/x?sig=hidden7&se=2026&API_KEY=hidden8&Password=hidden9",
            "https://h/x?sig=***&se=2026&API_KEY=***&Password=***",
        ),
        (
            "https://h/x?passwd=hidden10&auth=hidden11&credentials=hidden12&sessionid=hidden13",
            "https://h/x?passwd=***&auth=***&credentials=***&sessionid=***",
        ),
        // GitHub's release-asset redirect: its JWT is the access.
        (
            "https://release-assets.githubusercontent.com/a/b?sp=r&sig=hidden17&jwt=hidden18\
             &filename=x.tar.gz&response-content-type=application%2Foctet-stream",
            "https://release-assets.githubusercontent.com/a/b?sp=r&sig=***&jwt=***\
             &filename=x.tar.gz&response-content-type=application%2Foctet-stream",
        ),
        (
            "https://h/cb?code=hidden19&assertion=hidden20&state=abc",
            "https://h/cb?code=***&assertion=***&state=abc",
        ),
        // Percent-encoded names, `+` for spaces, in the fragment too.
        (
            "https://h/x?access%5Ftoken=hidden14&client+secret=hidden15#id_token=hidden16",
            "https://h/x?access%5Ftoken=***&client+secret=***#id_token=***",
        ),
        // With credentials as well; empty values and bare words as they are.
        (
            "https://u:hidden17@h/x?token=hidden18&token=&flag&q=token",
            "https://***@h/x?token=***&token=&flag&q=token",
        ),
        ("https://h/x?q=1&expires=5", "https://h/x?q=1&expires=5"),
        ("https://h/x?", "https://h/x?"),
    ];
    for (text, expected) in cases {
        let redacted = redact_url(&url(text));
        assert_eq!(redacted, *expected, "{text}");
        assert!(!redacted.contains("hidden"), "{redacted}");
    }
}

#[test]
fn redact_unparsed_url_hides_what_looks_like_credentials() {
    let cases: &[(&str, &str)] = &[
        ("http://u:secret@h:99999/x", "http://***@h:99999/x"),
        ("http://u:secret@a@h/x@y", "http://***@h/x@y"),
        ("http://h/x@y", "http://h/x@y"),
        ("http://h?x@y", "http://h?x@y"),
        ("http://u@h", "http://***@h"),
        ("no scheme@h", "no scheme@h"),
        ("", ""),
        (
            "http://u:secret@h:99999/x?access_token=secret&q=1#sig=secret",
            "http://***@h:99999/x?access_token=***&q=1#sig=***",
        ),
        (
            "http://[::1/x?X-Amz-Signature=secret&X-Amz-Expires=60",
            "http://[::1/x?X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("/relative?token=secret", "/relative?token=***"),
        ("ht?tp://u:secret@h", "ht?tp://***@h"),
        ("http://h#a#token=secret", "http://h#a#token=***"),
    ];
    for (text, expected) in cases {
        assert_eq!(redact_unparsed_url(text), *expected, "{text}");
    }
}

#[test]
fn excerpt_caps_at_80_characters() {
    assert_eq!(excerpt(""), "");
    assert_eq!(excerpt(&"a".repeat(80)), "a".repeat(80));
    assert_eq!(excerpt(&"a".repeat(81)), format!("{}…", "a".repeat(80)));
    assert_eq!(excerpt(&"文".repeat(100)), format!("{}…", "文".repeat(80)));
}

// ---- a small deterministic fuzz, so CI checks the round trip without cargo-fuzz ----

#[test]
fn mutated_chits_never_panic_and_round_trip() {
    let seeds = [
        chit_text(&[
            DIGEST,
            "123",
            "a/b.tar.gz",
            "https://u:p@h.example:8080/x?y#z",
            "# c",
        ]),
        format!("{DIGEST}\r\n0\r\n#x/ y\r\nhttp://[::1]/%41\r\n\r\nhttp://xn--bcher-kva.example/"),
    ];
    let alphabet: &[&str] = &[
        "", "\n", "\r", " ", "\t", "/", ".", "..", "#", "# error:", "\\", "\0", "%", "%2e", "@",
        ":", "?", "[", "]", "é", "文", "\u{feff}", "\u{85}", "0", "9", "-", "+", "a", "F",
        "http://", "file:",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut text = seeds[next(seeds.len())].clone();
        for _ in 0..1 + next(3) {
            let mut at = next(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + next(4)).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(at..end, alphabet[next(alphabet.len())]);
        }
        if let Ok(chit) = parse_str(&text) {
            accepted += 1;
            assert_eq!(parse_str(&chit.render()).as_ref(), Ok(&chit), "{text:?}");
        }
    }
    assert!(accepted > 1000, "only {accepted} mutants parsed");
}

#[test]
fn sources_are_the_urls_then_each_mirror_under_the_path_each_once() {
    let chit = Chit {
        digest: Digest::from_bytes([1; 32]),
        size: 1,
        path: path("gnu/make 4.tar.gz"),
        urls: vec![
            url("http://a.example/x?x=secret"),
            url("https://m.example/d/gnu/make%204.tar.gz"),
            url("http://a.example/x?x=secret"),
        ],
    };
    let mirrors = [url("https://m.example/d/"), url("file:///srv/m")];
    assert_eq!(
        chit.sources(&mirrors),
        [
            url("http://a.example/x?x=secret"),
            url("https://m.example/d/gnu/make%204.tar.gz"),
            url("file:///srv/m/gnu/make%204.tar.gz"),
        ]
    );
    assert_eq!(chit.sources(&[]), chit.urls[..2]);
}
