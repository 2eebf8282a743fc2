//! The WebSocket door: the checks an upgrade must pass and the handshake. The session
//! that serves the connection's ops is [`crate::session`]'s; the connection underneath
//! (frames, socket, queue, rate limit) is [`crate::connection`]'s.

pub mod handshake;
pub mod upgrade;
