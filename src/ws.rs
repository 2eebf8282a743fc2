//! The WebSocket door: the checks an upgrade must pass, the handshake, and the
//! session that serves one connection's ops. The connection underneath (frames,
//! socket, queue, rate limit) is [`crate::connection`]'s.

pub mod handshake;
pub mod session;
pub mod upgrade;
