//! berth-core: Berth's runtime core. In production it runs inside the VM; on a Linux host the
//! `direct` backend runs the same binary as a child of berthd. It owns the content store, the
//! snapshots, image metadata and containers (`container`), and answers `berth-proto` requests.

pub mod build;
pub mod container;
pub mod content;
pub mod digest;
pub mod events;
pub mod images;
pub mod layer;
pub mod meta;
pub mod net;
pub mod server;
pub mod snapshot;
pub mod unpack;
pub mod volume;
