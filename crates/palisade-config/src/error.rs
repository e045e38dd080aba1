//! Config errors with locations, all reported together.

use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// Where in the structure, e.g. `limits[1].rate`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigErrors {
    /// The file (or `<embedded default>`).
    pub origin: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: ")?,
            (Some(l), None) => write!(f, "{l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in configuration",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}:{e}", self.origin)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors, turning byte offsets into line and column.
pub(crate) struct Collector<'a> {
    src: &'a str,
    pub(crate) errors: Vec<ConfigError>,
    offsets: Vec<usize>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Self {
            src,
            errors: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// Records an error at a byte span (or without a location).
    pub(crate) fn at(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = match &span {
            Some(s) => {
                let (l, c) = line_col(self.src, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.offsets.push(span.map_or(usize::MAX, |s| s.start));
        self.errors.push(ConfigError {
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_col(self.src, offset).0
    }

    /// The errors sorted by position in the file.
    pub(crate) fn finish(self) -> Vec<ConfigError> {
        let mut v: Vec<(usize, ConfigError)> = self.offsets.into_iter().zip(self.errors).collect();
        v.sort_by_key(|(o, _)| *o);
        v.into_iter().map(|(_, e)| e).collect()
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
