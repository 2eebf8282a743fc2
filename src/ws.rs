//! The WebSocket door: upgrade checks, the per-connection session, its outgoing
//! queue and writer, and the per-connection rate limit.

pub mod outbox;
pub mod rate;
pub mod session;
pub mod upgrade;
