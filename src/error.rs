//! One error type for the library, carrying its kind so the command knows its exit code:
//! bad input (a flag, a config or data file, a checkpoint, a model that does not fit the
//! adapter) is exit 2; a failure at run time (no adapter, a shader the driver rejects, a lost
//! device, I/O, divergence) is exit 1; a run stopped by Ctrl-C is exit 130 (the shell's code
//! for SIGINT).

/// What went wrong, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The caller asked for something that cannot be done: fix the input and run again.
    #[error("{0}")]
    Input(String),
    /// The input was fine but running it failed.
    #[error("{0}")]
    Runtime(String),
    /// Stopped on request (Ctrl-C) at a point it can continue from.
    #[error("{0}")]
    Interrupted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(msg: impl Into<String>) -> Error {
        Error::Input(msg.into())
    }

    pub fn runtime(msg: impl Into<String>) -> Error {
        Error::Runtime(msg.into())
    }

    /// The process exit code for this error: 2 for bad input, 1 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => 2,
            Error::Runtime(_) => 1,
            Error::Interrupted(_) => 130,
        }
    }

    /// The same error with `prefix: ` in front of its message (e.g. the flag it came from).
    pub fn context(self, prefix: impl std::fmt::Display) -> Error {
        match self {
            Error::Input(m) => Error::Input(format!("{prefix}: {m}")),
            Error::Runtime(m) => Error::Runtime(format!("{prefix}: {m}")),
            Error::Interrupted(m) => Error::Interrupted(format!("{prefix}: {m}")),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Input(m) | Error::Runtime(m) | Error::Interrupted(m) => m,
        }
    }
}
