//! One client connection below the protocol: the frames the node writes (RFC 6455),
//! the socket it shares between its reader and the fan-out, its bounded outgoing
//! queue, and its message rate limit. Nothing here knows channels, sessions or the
//! backplane; the hub above hands frames to an [`outbox::Outbox`], and the WebSocket
//! door (`ws/`) reads through a [`socket::ReadHalf`]. On the HTTP streaming transports
//! the socket is a response body instead ([`stream_sink::StreamSink`]).

pub mod frame;
pub mod http_slot;
pub mod outbox;
pub mod rate;
pub mod socket;
pub mod stream_sink;
