//! What the node does with what its backplane receives: the one implementation of
//! [`Inbound`] (docs/ARCHITECTURE.md decision 5). A frame goes to the hub's fan-out; a durable frame the hub cannot
//! place (it does not follow the last delivered offset) and a reader that fell behind
//! are reported for gap filling ([`crate::gaps`]); a message from another node goes
//! to the relay of streaming sessions' frames ([`crate::relay`]).
//!
//! The engines know only the [`Inbound`] contract, so neither the hub nor gap filling
//! is named below the services.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;

use crate::backplane::Inbound;
use crate::gaps::GapReport;
use crate::hub::Hub;
use crate::relay::Relay;

pub struct NodeInbound {
    hub: Arc<Hub>,
    gaps: Arc<GapReport>,
    relay: Arc<Relay>,
}

impl NodeInbound {
    pub fn new(hub: Arc<Hub>, gaps: Arc<GapReport>, relay: Arc<Relay>) -> Self {
        Self { hub, gaps, relay }
    }
}

impl Inbound for NodeInbound {
    fn deliver(
        &self,
        channel: &str,
        frame: &Utf8Bytes,
        seq: Option<(u64, &str)>,
        received: Instant,
    ) {
        if self.hub.dispatch(channel, frame, seq, received).gap {
            self.gaps.channel(channel);
        }
    }

    fn lost_any(&self) {
        self.gaps.everything();
    }

    fn node_message(&self, payload: &[u8]) {
        self.relay.on_node_message(payload);
    }
}
