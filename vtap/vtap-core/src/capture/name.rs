//! Capture names.
//!
//! A capture name becomes a directory (`<state_dir>/captures/<name>/`) and the
//! prefix of every file in it, so it must never be able to leave that
//! directory or mean anything special to a shell or a file system: no path
//! separators, no `..`, not `.`, nothing outside a small ASCII set.

/// Longest accepted capture name, in characters (all ASCII, so also bytes).
pub const MAX_CAPTURE_NAME_LEN: usize = 64;

/// Checks that `name` is a safe capture name: 1 to [`MAX_CAPTURE_NAME_LEN`]
/// characters from `[A-Za-z0-9_.-]`, starting with a letter or digit, with
/// no `..` anywhere (which also excludes `.` and `..` themselves).
///
/// The error says what is wrong, quoting the name, e.g.
/// ``capture name `../x` may only contain letters, digits, '_', '-' and '.'``.
pub fn validate_capture_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("capture name is empty".to_string());
    }
    // Character set first: it is the most fundamental problem (`/`, NUL,
    // non-ASCII) and keeps the quoted name in later messages ASCII.
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "capture name `{}` may only contain letters, digits, '_', '-' and '.' (found {:?})",
            name.escape_debug(),
            bad
        ));
    }
    let len = name.len();
    if len > MAX_CAPTURE_NAME_LEN {
        return Err(format!(
            "capture name `{name}` is longer than {MAX_CAPTURE_NAME_LEN} characters ({len})"
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "capture name `{name}` must start with a letter or digit"
        ));
    }
    if name.contains("..") {
        return Err(format!("capture name `{name}` must not contain `..`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str) -> String {
        validate_capture_name(name).expect_err(name)
    }

    #[test]
    fn accepts_valid_names() {
        for name in [
            "a",
            "Z",
            "0",
            "web",
            "vm-42_tap0",
            "capture.v2",
            "a.b.c",
            "a-",
            "a.",
            "9lives",
            "A_B-C.d",
            &"x".repeat(MAX_CAPTURE_NAME_LEN),
        ] {
            assert_eq!(validate_capture_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(err(""), "capture name is empty");
    }

    #[test]
    fn rejects_path_traversal_and_separators() {
        let e = err("../x");
        assert!(
            e.starts_with("capture name `../x` may only contain letters, digits, '_', '-' and '.'"),
            "{e}"
        );
        let e = err("/abs");
        assert!(e.starts_with("capture name `/abs` may only contain"), "{e}");
        assert!(e.contains("'/'"), "{e}");
        let e = err("a/b");
        assert!(e.starts_with("capture name `a/b` may only contain"), "{e}");
        assert!(err("a\\b").contains("may only contain"));
        assert!(err("a\0b").contains("may only contain"));
        assert!(err("a b").contains("may only contain"));
        assert!(err("a\nb").contains("may only contain"));
        // The quoted name is escaped: a newline does not break the message.
        assert!(!err("a\nb").contains('\n'));
    }

    #[test]
    fn rejects_dots() {
        assert_eq!(
            err("."),
            "capture name `.` must start with a letter or digit"
        );
        assert_eq!(
            err(".."),
            "capture name `..` must start with a letter or digit"
        );
        assert_eq!(
            err(".hidden"),
            "capture name `.hidden` must start with a letter or digit"
        );
        assert_eq!(err("a..b"), "capture name `a..b` must not contain `..`");
        assert_eq!(err("a.."), "capture name `a..` must not contain `..`");
    }

    #[test]
    fn rejects_bad_first_character() {
        assert_eq!(
            err("-x"),
            "capture name `-x` must start with a letter or digit"
        );
        assert_eq!(
            err("_x"),
            "capture name `_x` must start with a letter or digit"
        );
    }

    #[test]
    fn rejects_too_long() {
        let name = "x".repeat(MAX_CAPTURE_NAME_LEN + 1);
        assert_eq!(
            err(&name),
            format!("capture name `{name}` is longer than 64 characters (65)")
        );
        assert!(err(&"y".repeat(1000)).contains("is longer than 64 characters (1000)"));
    }

    #[test]
    fn rejects_unicode() {
        for name in ["café", "ｆｕｌｌ", "a\u{202e}b", "ß", "名前"] {
            let e = err(name);
            assert!(
                e.contains("may only contain letters, digits"),
                "{name}: {e}"
            );
        }
        // 64 non-ASCII characters are still rejected for the characters, and
        // the length check counts bytes only once the set is ASCII.
        assert!(err(&"é".repeat(40)).contains("may only contain"));
    }
}
