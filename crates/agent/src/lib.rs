//! berthd, Berth's host agent: serves the Docker Engine API on one owner-only Unix socket,
//! pulls through the registry client on the host, and drives `berth-core` (in the VM, or as a
//! child process on the direct backend) over `berth-proto`.

#![recursion_limit = "256"]

pub mod admin;
pub mod archive;
pub mod core_client;
pub mod credentials;
pub mod daemon;
pub mod docker;
pub mod events;
pub mod names;
pub mod ports;
pub mod pull;
pub mod push;
#[cfg(test)]
mod schema_file;
pub mod settings;
pub mod supervisor;
