//! Herald: a real-time WebSocket fan-out gateway.
//!
//! The path of a message, file by file:
//!
//! 1. A publish arrives over HTTP ([`api`]) or as a WebSocket op ([`ws::session`]);
//!    [`publish`] hands it to the [`backplane`].
//! 2. The backplane ([`backplane::memory`] in one process, [`backplane::redis`] across
//!    a fleet) encodes the `message` frame once and carries it to every node, the
//!    publishing node included: there is one path and so one order per channel.
//!    Durable channels get their offset in the same atomic step (`publish.lua`).
//! 3. Each node's backplane reader validates the payload once and gives the shared
//!    bytes to the node's [`inbound`], which hands them to the [`hub`]; the hub appends
//!    them to the bounded queue of every local subscriber ([`connection::outbox`]). A
//!    full queue closes that one client (4008).
//! 4. Right after, still on the reader's thread, each idle connection gets the frame
//!    (framed once per message) with one `write` ([`connection::socket`],
//!    [`connection::frame`]); a socket whose kernel buffer is full gets a writer task
//!    until its queue is empty, and writes everything queued at once. The HTTP side
//!    ([`listener`]) hands the raw socket over at the upgrade ([`ws::handshake`]).
//!
//! Around that path: [`subscriptions`] keeps the node subscribed on the backplane
//! exactly where it has local interest and makes `subscribe` a barrier;
//! [`recovery`] and [`gaps`] make durable channels loss-free; [`shutdown`] drains.
//!
//! The modules form seven layers, and none uses a layer above its own: foundations
//! ([`error`], [`metrics`], [`protocol`], [`config`]), the [`connection`], the core
//! ([`hub`], the [`backplane`] contract, [`auth`], [`tokens`]), the engines, the
//! services ([`state`], [`inbound`], [`subscriptions`], …), the doors ([`api`], [`ws`])
//! and the wiring ([`server`], [`listener`]). docs/ARCHITECTURE.md draws them, says
//! where a change belongs, and numbers the design decisions the code cites;
//! `tests/layers.rs` keeps the layers honest.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod backplane;
pub mod config;
pub mod connection;
pub mod error;
pub mod gaps;
pub mod history;
pub mod hub;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod recovery;
pub mod relay;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod streams;
pub mod subscriptions;
pub mod tokens;
pub mod transports;
pub mod ws;
