//! What berthd (`crates/agent`) and the `berth` command (`crates/cli`) share about the user's
//! machine, so the two never disagree: where berthd's socket, data and settings live by default
//! ([`paths`]), and registry credentials in the OS keyring ([`credentials`]).
//!
//! No process logic here: the CLI does not link the agent and the agent does not link the CLI.

pub mod credentials;
pub mod paths;
