//! Event streams (PROTOCOL §5): microservices' Redis Streams into channels
//! ([`ingest`]), with the entry mapping in [`entry`]. The other direction, client
//! publishes out to backends, is the `upstream` branch of the session's publish
//! (`ws/session.rs`), appended by the backplane (`append_upstream`).

pub mod entry;
pub mod ingest;
