//! aienv's actors, their messages and the domain model. This crate serves no HTTP and keeps no
//! JSON: the `aienv` package wraps it in a REST API, a WebSocket gateway and a CLI. Its only
//! HTTP and JSON are those of engines it drives (Docker through bollard, slurmrestd, runtime
//! plugins' JSON lines) and of project files that detection reads.
//!
//! Pattern shared by every actor: a module `<actor>/` holding the actor, its messages (next to
//! their handlers), its config and its error type; a cloneable `<Actor>Handle` with async
//! methods for callers; events published on the one [`event_bus::EventBus`]; and, for actors
//! that serve frequent reads, an immutable read view published through a `watch` channel and
//! stamped with the sequence number of the event that produced it.

pub mod beneath;
pub mod catalog;
pub mod chunk_frame;
pub mod chunk_parts;
pub mod ci;
pub mod cluster;
pub mod discovery;
pub mod entry_decode;
pub mod event_bus;
pub mod events;
pub mod fsio;
pub mod git;
pub mod identity;
pub mod model;
pub mod msgpack_read;
pub mod packed;
pub mod peer_registry;
pub mod resources;
pub mod runtime_supervisor;
pub mod shutdown;
pub mod snapshot;
pub mod snapshot_delta;
pub mod snapshot_history;
pub mod snapshot_reader;
pub mod snapshot_receive;
pub mod snapshot_writer;
pub mod spill;
pub mod transfer_queue;
pub mod tree;
pub mod uuid_wire;
pub mod workspace_store;
pub mod yaml;

/// A seeded xorshift64 generator for the crate's property tests: failures reproduce.
#[cfg(test)]
pub(crate) fn test_random(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
