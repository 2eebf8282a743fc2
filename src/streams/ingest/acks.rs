//! Acknowledgements of one source: entries done (published, or dead-lettered) are
//! gathered and acknowledged in one `XACK` per batch. Deciding when an entry is done
//! is the reader's (`reader.rs`).
//!
//! Acknowledging late is safe: an entry published but not yet acknowledged when the
//! node stops is processed again and recognised by its idempotency key.

use std::sync::Mutex;

use fred::clients::Client;
use fred::prelude::*;

use super::commands::{self, Ack};

pub(super) struct Acks {
    client: Client,
    stream: String,
    group: String,
    /// Flush once this many are waiting.
    batch: usize,
    /// Entries done but not yet acknowledged (flushed per batch and after each step).
    done: Mutex<Vec<String>>,
}

impl Acks {
    pub(super) fn new(client: Client, stream: &str, group: &str, batch: u32) -> Self {
        Self {
            client,
            stream: stream.to_string(),
            group: group.to_string(),
            batch: batch as usize,
            done: Mutex::default(),
        }
    }

    /// Marks an entry done, and sends the batch when it is full.
    pub(super) async fn ack(&self, id: &str) -> Result<(), Error> {
        let full = {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            done.push(id.to_string());
            done.len() >= self.batch
        };
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Acknowledges every entry marked done. On failure they stay pending in Redis,
    /// and are processed again.
    pub(super) async fn flush(&self) -> Result<(), Error> {
        let ids = std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()));
        if ids.is_empty() {
            return Ok(());
        }
        let ack = Ack {
            stream: &self.stream,
            group: &self.group,
            ids: &ids,
        };
        let _: Value = commands::send(&self.client, ack).await?;
        Ok(())
    }
}
