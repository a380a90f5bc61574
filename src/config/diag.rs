//! Diagnostics for pipeline files: every problem carries `file:line:col`, a message and a hint.
//!
//! Validation collects all problems of a file before reporting, so one `sluice validate` run shows
//! every error at once (like a compiler), instead of making the user fix them one by one.

use std::fmt;

/// A 1-based position in the (rendered) pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub fn from_span(span: &marked_yaml::Span) -> Self {
        span.start()
            .map(|m| Pos {
                line: m.line(),
                col: m.column(),
            })
            .unwrap_or_default()
    }
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// All problems found in one or more files.
#[derive(Debug, Clone, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file while it is being parsed and checked.
#[derive(Debug)]
pub struct Reporter {
    file: String,
    found: Vec<Diagnostic>,
}

impl Reporter {
    pub fn new(file: impl Into<String>) -> Self {
        Reporter {
            file: file.into(),
            found: Vec::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            pos,
            message: message.into(),
            hint,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// How many problems were reported so far (a parser compares before and after a section).
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Ends collection: `Ok(value)` when nothing was reported.
    pub fn finish<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            self.found
                .sort_by_key(|d| (d.pos.line, d.pos.col, d.message.clone()));
            self.found.dedup();
            Err(Diagnostics(self.found))
        }
    }
}

/// "did you mean" for a misspelled name, by Jaro-Winkler similarity.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&got.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(format!("did you mean `{}`?", best.1))
}

/// A hint that names the closest candidate, or lists all of them when nothing is close.
pub fn suggest(got: &str, candidates: &[&str]) -> String {
    did_you_mean(got, candidates.iter().copied())
        .unwrap_or_else(|| format!("expected one of: {}", candidates.join(", ")))
}
