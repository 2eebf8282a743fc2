//! The WebSocket door: the handshake and its checks, the per-connection session, the
//! socket it shares, its outgoing queue, the frames the node writes and the
//! per-connection rate limit.

pub mod coalesce;
pub mod frame;
pub mod handshake;
pub mod outbox;
pub mod rate;
pub mod session;
pub mod socket;
pub mod upgrade;
