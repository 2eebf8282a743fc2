//! The doors for clients that cannot use a WebSocket (PROTOCOL §2.5): a session whose
//! server frames stream in an HTTP response (`GET /sse`, `POST /stream`) and whose
//! client frames are posted to `POST /emulation` on any node. The session behind them
//! is the same as on a WebSocket ([`crate::session`]); getting a posted frame to a
//! session on another node is [`crate::relay`]'s.

pub mod emulation;
pub mod stream;
