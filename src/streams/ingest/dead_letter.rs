//! The dead-letter stream of one source: where an entry goes when it cannot be
//! published (unmappable, or delivered `max_deliveries` times without success), with
//! its origin and the reason. Acknowledging it afterwards is the reader's.
//!
//! A producer can write unmappable entries as fast as Redis takes them: each is
//! counted and kept in the dead-letter stream with its reason, the log gets a line per
//! burst.

use std::sync::Arc;

use fred::clients::Client;
use fred::prelude::*;
use metrics::Counter;
use tokio_util::sync::CancellationToken;

use super::commands::{self, DeadLetterAdd};
use super::spec::SourceSpec;
use crate::backplane::log_limit::{self, LogLimit};

pub(super) struct DeadLetters {
    client: Client,
    /// The source stream.
    stream: String,
    /// The dead-letter stream.
    to: String,
    log: Arc<LogLimit>,
    counted: Counter,
}

impl DeadLetters {
    /// Also starts the task that writes the log's burst summaries until `shutdown`.
    pub(super) fn start(
        client: Client,
        spec: &SourceSpec,
        counted: Counter,
        shutdown: CancellationToken,
    ) -> Self {
        let log = Arc::new(LogLimit::new(
            format!("entries of stream '{}' dead-lettered", spec.stream),
            log_limit::INTERVAL,
        ));
        tokio::spawn(log.clone().run(shutdown));
        Self {
            client,
            stream: spec.stream.clone(),
            to: spec.dead_letter.clone(),
            log,
            counted,
        }
    }

    /// Appends the entry to the dead-letter stream with a reason.
    pub(super) async fn append(
        &self,
        id: &str,
        fields: &[(String, String)],
        reason: &str,
    ) -> Result<(), Error> {
        if let Some(suppressed) = self.log.admit(reason) {
            tracing::warn!(
                stream = %self.stream,
                id,
                reason = log_limit::clip(reason),
                suppressed,
                "entry dead-lettered"
            );
        }
        let add = DeadLetterAdd {
            dead_letter: &self.to,
            stream: &self.stream,
            id,
            reason,
            fields,
        };
        let _: Value = commands::send(&self.client, add).await?;
        self.counted.increment(1);
        Ok(())
    }
}
