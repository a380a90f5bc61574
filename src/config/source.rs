//! The bytes of a pipeline file before templating: bounded reading, UTF-8 with the position of a
//! bad byte, a leading byte-order mark skipped, and control characters refused where they are.
//!
//! The YAML scanner treats a NUL character as the end of its input, so a NUL in a comment used to
//! make the rest of the file vanish silently (`validate`, `explain` and `run` all succeeded
//! without the transforms after it). Reading a file is bounded so that `sluice validate
//! /dev/zero` ends with an error instead of reading until memory runs out.

use std::io::Read;

use super::diag::Pos;

/// Default largest pipeline file `validate`/`run` read: 8 MiB. The pipelines in `pipelines/`
/// are under 10 KiB; a `tests:` section with inline rows can make a file a few MiB. The same
/// bound applies to the text after Jinja rendering.
pub const DEFAULT_MAX_PIPELINE_BYTES: u64 = 8 * 1024 * 1024;

/// The environment variable that raises (or lowers) [`DEFAULT_MAX_PIPELINE_BYTES`].
pub const MAX_PIPELINE_BYTES_ENV: &str = "SLUICE_MAX_PIPELINE_BYTES";

/// A problem with the bytes of a pipeline file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

/// The largest pipeline file read: [`MAX_PIPELINE_BYTES_ENV`] when set to a number, else the
/// default.
pub fn max_pipeline_bytes() -> u64 {
    std::env::var(MAX_PIPELINE_BYTES_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_MAX_PIPELINE_BYTES)
}

/// Reads at most `limit` bytes of `path` (one more is read to detect a larger file), so that a
/// device or a huge file cannot exhaust memory.
///
/// # Errors
/// The file cannot be read, or is larger than `limit`.
pub fn read_bounded(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    let at_start = Pos { line: 1, col: 1 };
    let file = std::fs::File::open(path).map_err(|e| SourceError {
        pos: at_start,
        message: format!("cannot read pipeline file: {e}"),
        hint: None,
    })?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError {
            pos: at_start,
            message: format!("cannot read pipeline file: {e}"),
            hint: None,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large("the pipeline file", limit));
    }
    Ok(bytes)
}

/// The error for a file or rendered text over the limit.
pub fn too_large(what: &str, limit: u64) -> SourceError {
    SourceError {
        pos: Pos { line: 1, col: 1 },
        message: format!("{what} is larger than {limit} bytes"),
        hint: Some(format!(
            "pipeline files are small; if this one really is this large, raise the limit with {MAX_PIPELINE_BYTES_ENV}=BYTES"
        )),
    }
}

/// Turns the bytes of a pipeline file into text: UTF-8 (the position of the first bad byte
/// otherwise), without a leading byte-order mark, and with no control character other than tab,
/// line feed and carriage return (YAML 1.2 §5.1 excludes them; the scanner stops at NUL).
///
/// # Errors
/// The first problem, with its line and column (in characters, as YAML positions are).
pub fn decode(bytes: &[u8]) -> Result<&str, SourceError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            return Err(SourceError {
                pos: end_pos(good),
                message: format!(
                    "the pipeline file is not UTF-8: byte 0x{:02x} at offset {}",
                    bytes[e.valid_up_to()],
                    e.valid_up_to()
                ),
                hint: Some("save the file as UTF-8".into()),
            });
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_controls(text)?;
    Ok(text)
}

/// Refuses control characters (other than tab, LF, CR) with their position.
///
/// # Errors
/// The first control character found.
pub fn check_controls(text: &str) -> Result<(), SourceError> {
    let Some(at) =
        text.find(|c: char| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) && c != '\u{85}')
    else {
        return Ok(());
    };
    let c = text[at..].chars().next().unwrap_or('\0');
    let name = match c {
        '\0' => " (NUL)".to_string(),
        _ => String::new(),
    };
    Err(SourceError {
        pos: end_pos(&text[..at]),
        message: format!(
            "control character U+{:04X}{name} in the pipeline file",
            c as u32
        ),
        hint: Some(
            "YAML does not allow control characters in a file (a YAML reader stops at a NUL and would ignore the rest); remove it, or write it as an escape such as \"\\0\" inside a double-quoted string".into(),
        ),
    })
}

/// The 1-based position just after `prefix` (the position of the next character). Lines end at
/// LF, CR LF or a lone CR, as YAML (and the positions of its parser) count them.
pub fn end_pos(prefix: &str) -> Pos {
    let mut pos = Pos { line: 1, col: 1 };
    let mut chars = prefix.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => {
                pos = Pos {
                    line: pos.line + 1,
                    col: 1,
                }
            }
            _ => pos.col += 1,
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_reported_where_it_is() {
        let err = decode(b"pipeline:\n  # a \0 comment\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 7 });
        assert_eq!(
            err.message,
            "control character U+0000 (NUL) in the pipeline file"
        );
    }

    #[test]
    fn a_bom_is_skipped_and_bad_utf8_has_a_position() {
        assert_eq!(
            decode(b"\xef\xbb\xbfpipeline: []\n").unwrap(),
            "pipeline: []\n"
        );
        let err = decode(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 4 });
        assert!(
            err.message.contains("byte 0xff at offset 8"),
            "{}",
            err.message
        );
    }

    #[test]
    fn lines_end_at_lf_crlf_and_lone_cr() {
        assert_eq!(end_pos("a\r\nb\rc\nde"), Pos { line: 4, col: 3 });
    }

    #[test]
    fn reading_stops_at_the_limit() {
        let err = read_bounded(std::path::Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.message, "the pipeline file is larger than 1024 bytes");
    }
}
