//! berth-dockerfile: the Dockerfile as Docker's classic builder reads it.
//!
//! * [`parse`]: parser directives (`# escape=`, `# syntax=` ignored), comments, line
//!   continuations, instructions with their `--flags` and JSON or shell-form arguments.
//! * [`expand`]: Docker's word processing (`$VAR`, `${VAR:-default}`, quotes, the escape
//!   character), used for every instruction the builder expands.
//! * [`ignore`]: `.dockerignore` patterns, exceptions and `**`.
//! * [`config`]: what CMD, ENV, LABEL, … do to an image's `config` object (shared by `docker
//!   build` and `docker commit --change`).
//!
//! Pure functions over strings and JSON: both berthd (which reads the FROM lines to pull what is
//! missing) and the core (which builds) use it.

pub mod config;
pub mod expand;
pub mod ignore;
pub mod parse;
pub mod stages;

pub use config::{apply, ConfigError, ConfigState};
pub use expand::{expand_word, expand_words, ExpandError};
pub use ignore::IgnoreRules;
pub use parse::{parse, Args, Dockerfile, Instruction, ParseError};
