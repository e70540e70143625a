use std::fmt;

/// A workflow or agents file that cannot run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// File name as given by the user.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field at fault, as a path (`steps[2].needs`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}
