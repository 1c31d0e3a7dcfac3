//! How a command ends: an error and the exit code it maps to, and the one
//! line the error is printed as.
//!
//! Every command module returns `Result<(), Failure>`, so this sits below
//! all of them and uses none.

/// An error and the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// A check failed: exit 1.
    pub fn check(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: 1, error: error.into() }
    }

    /// Usage or connection error: exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: 2, error: error.into() }
    }
}

/// Error chains from the server can span lines; keep one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
