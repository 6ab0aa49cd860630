//! The kernel command line: space-separated `key=value` words (a bare `key` has an empty
//! value). The loaders give it as bytes; invalid UTF-8 is treated as an empty line.

/// Iterates over the `(key, value)` words of a command line.
pub fn words(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_ascii_whitespace().map(|word| word.split_once('=').unwrap_or((word, "")))
}

/// The value of the last `key=...` word, if any (later words override earlier ones).
pub fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    words(line).filter(|(k, _)| *k == key).map(|(_, v)| v).last()
}

/// Whether `key` is set to a true value (`1`, `true`, `yes`, `on`, or a bare `key`).
pub fn flag(line: &str, key: &str) -> bool {
    matches!(value(line, key), Some("" | "1" | "true" | "yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_word_wins_and_missing_key_is_none() {
        let line = "exit=0 fault=pagefault  exit=1 quiet";
        assert_eq!(value(line, "exit"), Some("1"));
        assert_eq!(value(line, "fault"), Some("pagefault"));
        assert_eq!(value(line, "quiet"), Some(""));
        assert_eq!(value(line, "guest"), None);
    }

    #[test]
    fn flags_accept_common_true_spellings_only() {
        assert!(flag("exit=1", "exit"));
        assert!(flag("exit", "exit"));
        assert!(flag("exit=yes", "exit"));
        assert!(!flag("exit=0", "exit"));
        assert!(!flag("exits=1", "exit"));
        assert!(!flag("", "exit"));
    }
}
