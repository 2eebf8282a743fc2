//! The Redis stream commands of ingest, as small typed builders: each struct names its
//! parameters, produces the argument list, and says where its key sits so that a
//! cluster routes it to the stream's shard. Which command to send when is the reader's
//! (`reader.rs`); reading entries out of the replies is `streams/entry.rs`'s.

use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

/// One command and its arguments.
pub(super) trait StreamCommand {
    /// The command's name, the position of its key and whether it blocks.
    fn command(&self) -> CustomCommand;
    fn args(&self) -> Vec<Value>;
}

/// Sends a command on `client` (a `with_options` view of one works too), routed on a
/// cluster to the shard of its key.
pub(super) async fn send<C: ClientLike, R: FromValue>(
    client: &C,
    command: impl StreamCommand,
) -> Result<R, Error> {
    let args = command.args();
    client.custom(routed(command.command(), &args), args).await
}

/// The command with its key's slot as a `ClusterHash::Custom`. fred 10 routes a custom
/// command by its `cluster_hash` only when that is a `Custom` slot: any other kind is
/// read as `FirstKey`, the first string argument, which for `XREADGROUP` (`GROUP`),
/// `XGROUP` (`CREATE`, `DELCONSUMER`) and `XINFO` (`CONSUMERS`, `GROUPS`) is a word of
/// the command, so on a Redis Cluster they went to whichever shard owns that word's
/// slot, were answered `MOVED`, and failed (the clients make one attempt).
fn routed(mut command: CustomCommand, args: &[Value]) -> CustomCommand {
    if let Some(slot) = command.cluster_hash.hash(args) {
        command.cluster_hash = ClusterHash::Custom(slot);
    }
    command
}

fn named(name: &'static str, key_at: usize, blocking: bool) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Offset(key_at), blocking)
}

fn text(s: &str) -> Value {
    Value::from(s)
}

/// Milliseconds, written as Redis reads them in a command.
fn millis(d: Duration) -> Value {
    Value::from((d.as_millis() as u64).to_string())
}

/// `XREADGROUP GROUP <group> <consumer> COUNT <count> [BLOCK <ms>] STREAMS <stream> <from>`:
/// `from` an id for this consumer's own pending entries, `>` for new ones.
pub(super) struct ReadGroup<'a> {
    pub group: &'a str,
    pub consumer: &'a str,
    pub count: u32,
    /// Wait up to this long for new entries. Such a read blocks its connection, so it
    /// goes on a connection of its own.
    pub block: Option<Duration>,
    pub stream: &'a str,
    pub from: &'a str,
}

impl StreamCommand for ReadGroup<'_> {
    fn command(&self) -> CustomCommand {
        // The stream follows `GROUP g c COUNT n [BLOCK ms] STREAMS`.
        match self.block {
            Some(_) => named("XREADGROUP", 8, true),
            None => named("XREADGROUP", 6, false),
        }
    }

    fn args(&self) -> Vec<Value> {
        let mut args = vec![
            text("GROUP"),
            text(self.group),
            text(self.consumer),
            text("COUNT"),
            Value::from(self.count.to_string()),
        ];
        if let Some(block) = self.block {
            args.push(text("BLOCK"));
            args.push(millis(block));
        }
        args.extend([text("STREAMS"), text(self.stream), text(self.from)]);
        args
    }
}

/// `XAUTOCLAIM <stream> <group> <consumer> <min_idle> <cursor> COUNT <count>`: entries
/// pending on any consumer for at least `min_idle` become this consumer's.
pub(super) struct AutoClaim<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub min_idle: Duration,
    pub cursor: &'a str,
    pub count: u32,
}

impl StreamCommand for AutoClaim<'_> {
    fn command(&self) -> CustomCommand {
        named("XAUTOCLAIM", 0, false)
    }

    fn args(&self) -> Vec<Value> {
        vec![
            text(self.stream),
            text(self.group),
            text(self.consumer),
            millis(self.min_idle),
            text(self.cursor),
            text("COUNT"),
            Value::from(self.count.to_string()),
        ]
    }
}

/// `XACK <stream> <group> <id>…`.
pub(super) struct Ack<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub ids: &'a [String],
}

impl StreamCommand for Ack<'_> {
    fn command(&self) -> CustomCommand {
        named("XACK", 0, false)
    }

    fn args(&self) -> Vec<Value> {
        let mut args = Vec::with_capacity(self.ids.len() + 2);
        args.push(text(self.stream));
        args.push(text(self.group));
        args.extend(self.ids.iter().map(|id| text(id)));
        args
    }
}

/// `XPENDING <stream> <group> <start> <end> <count> [<consumer>]`: the extended form,
/// one row `[id, consumer, idle, deliveries]` per pending entry.
pub(super) struct PendingRange<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub start: &'a str,
    pub end: &'a str,
    pub count: u32,
    /// Only the entries pending on this consumer.
    pub consumer: Option<&'a str>,
}

impl StreamCommand for PendingRange<'_> {
    fn command(&self) -> CustomCommand {
        named("XPENDING", 0, false)
    }

    fn args(&self) -> Vec<Value> {
        let mut args = vec![
            text(self.stream),
            text(self.group),
            text(self.start),
            text(self.end),
            Value::from(self.count.to_string()),
        ];
        args.extend(self.consumer.map(text));
        args
    }
}

/// `XGROUP CREATE <stream> <group> <at> MKSTREAM`: the stream is created if missing.
pub(super) struct CreateGroup<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    /// `$` (new entries only), `0` (everything) or an id.
    pub at: &'a str,
}

impl StreamCommand for CreateGroup<'_> {
    fn command(&self) -> CustomCommand {
        named("XGROUP", 1, false)
    }

    fn args(&self) -> Vec<Value> {
        vec![
            text("CREATE"),
            text(self.stream),
            text(self.group),
            text(self.at),
            text("MKSTREAM"),
        ]
    }
}

/// `XGROUP DELCONSUMER <stream> <group> <consumer>`. What the consumer had pending is
/// lost to the group, so callers delete only consumers with nothing pending.
pub(super) struct DeleteConsumer<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
}

impl StreamCommand for DeleteConsumer<'_> {
    fn command(&self) -> CustomCommand {
        named("XGROUP", 1, false)
    }

    fn args(&self) -> Vec<Value> {
        vec![
            text("DELCONSUMER"),
            text(self.stream),
            text(self.group),
            text(self.consumer),
        ]
    }
}

/// `XINFO CONSUMERS <stream> <group>`.
pub(super) struct Consumers<'a> {
    pub stream: &'a str,
    pub group: &'a str,
}

impl StreamCommand for Consumers<'_> {
    fn command(&self) -> CustomCommand {
        named("XINFO", 1, false)
    }

    fn args(&self) -> Vec<Value> {
        vec![text("CONSUMERS"), text(self.stream), text(self.group)]
    }
}

/// `XINFO GROUPS <stream>`.
pub(super) struct Groups<'a> {
    pub stream: &'a str,
}

impl StreamCommand for Groups<'_> {
    fn command(&self) -> CustomCommand {
        named("XINFO", 1, false)
    }

    fn args(&self) -> Vec<Value> {
        vec![text("GROUPS"), text(self.stream)]
    }
}

/// `XADD <dead_letter> * stream <stream> id <id> reason <reason> <field> <value>…`: an
/// entry kept in the dead-letter stream with where it came from and why.
pub(super) struct DeadLetterAdd<'a> {
    pub dead_letter: &'a str,
    pub stream: &'a str,
    pub id: &'a str,
    pub reason: &'a str,
    pub fields: &'a [(String, String)],
}

impl StreamCommand for DeadLetterAdd<'_> {
    fn command(&self) -> CustomCommand {
        named("XADD", 0, false)
    }

    fn args(&self) -> Vec<Value> {
        let mut args = Vec::with_capacity(8 + self.fields.len() * 2);
        args.extend([
            text(self.dead_letter),
            text("*"),
            text("stream"),
            text(self.stream),
            text("id"),
            text(self.id),
            text("reason"),
            text(self.reason),
        ]);
        for (k, v) in self.fields {
            // The original fields follow; a field named like ours keeps its value under
            // a prefixed name.
            let name = if matches!(k.as_str(), "stream" | "id" | "reason") {
                format!("field:{k}")
            } else {
                k.clone()
            };
            args.push(Value::from(name));
            args.push(text(v));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &impl StreamCommand) -> Vec<String> {
        c.args().iter().filter_map(|v| v.as_string()).collect()
    }

    /// The key a cluster routes on is the stream (or the dead-letter stream).
    fn key_of(c: &impl StreamCommand) -> String {
        let ClusterHash::Offset(at) = c.command().cluster_hash else {
            panic!("not routed by an offset");
        };
        words(c)[at].clone()
    }

    #[test]
    fn reads_name_their_stream_where_the_key_is() {
        let pending = ReadGroup {
            group: "g",
            consumer: "n1",
            count: 10,
            block: None,
            stream: "s",
            from: "0",
        };
        assert_eq!(
            words(&pending),
            ["GROUP", "g", "n1", "COUNT", "10", "STREAMS", "s", "0"]
        );
        assert_eq!(key_of(&pending), "s");
        assert!(!pending.command().blocking);
        let new = ReadGroup {
            block: Some(Duration::from_millis(1500)),
            from: ">",
            ..pending
        };
        assert_eq!(
            words(&new),
            [
                "GROUP", "g", "n1", "COUNT", "10", "BLOCK", "1500", "STREAMS", "s", ">"
            ]
        );
        assert_eq!(key_of(&new), "s");
        assert!(new.command().blocking);
    }

    #[test]
    fn group_commands_route_on_the_stream() {
        let claim = AutoClaim {
            stream: "s",
            group: "g",
            consumer: "n1",
            min_idle: Duration::from_secs(30),
            cursor: "0-0",
            count: 5,
        };
        assert_eq!(
            words(&claim),
            ["s", "g", "n1", "30000", "0-0", "COUNT", "5"]
        );
        let ids = ["1-0".to_string(), "2-0".to_string()];
        let ack = Ack {
            stream: "s",
            group: "g",
            ids: &ids,
        };
        assert_eq!(words(&ack), ["s", "g", "1-0", "2-0"]);
        let mine = PendingRange {
            stream: "s",
            group: "g",
            start: "-",
            end: "+",
            count: 1,
            consumer: Some("n1"),
        };
        assert_eq!(words(&mine), ["s", "g", "-", "+", "1", "n1"]);
        let one = PendingRange {
            start: "1-0",
            end: "1-0",
            consumer: None,
            ..mine
        };
        assert_eq!(words(&one), ["s", "g", "1-0", "1-0", "1"]);
        let create = CreateGroup {
            stream: "s",
            group: "g",
            at: "$",
        };
        assert_eq!(words(&create), ["CREATE", "s", "g", "$", "MKSTREAM"]);
        let delete = DeleteConsumer {
            stream: "s",
            group: "g",
            consumer: "n2",
        };
        assert_eq!(words(&delete), ["DELCONSUMER", "s", "g", "n2"]);
        let consumers = Consumers {
            stream: "s",
            group: "g",
        };
        assert_eq!(words(&consumers), ["CONSUMERS", "s", "g"]);
        let groups = Groups { stream: "s" };
        assert_eq!(words(&groups), ["GROUPS", "s"]);
        for key in [
            key_of(&claim),
            key_of(&ack),
            key_of(&mine),
            key_of(&one),
            key_of(&create),
            key_of(&delete),
            key_of(&consumers),
            key_of(&groups),
        ] {
            assert_eq!(key, "s");
        }
    }

    /// What `send` hands fred: the slot of the stream itself, for every command.
    #[test]
    fn commands_are_sent_with_the_slot_of_their_stream() {
        let stream = "orders.events";
        let slot = fred::util::redis_keyslot(stream.as_bytes());
        let ids = ["1-0".to_string()];
        let commands: Vec<(CustomCommand, Vec<Value>)> = {
            fn both(c: impl StreamCommand) -> (CustomCommand, Vec<Value>) {
                (c.command(), c.args())
            }
            vec![
                both(ReadGroup {
                    group: "g",
                    consumer: "n1",
                    count: 10,
                    block: Some(Duration::from_millis(100)),
                    stream,
                    from: ">",
                }),
                both(ReadGroup {
                    group: "g",
                    consumer: "n1",
                    count: 10,
                    block: None,
                    stream,
                    from: "0",
                }),
                both(CreateGroup {
                    stream,
                    group: "g",
                    at: "$",
                }),
                both(DeleteConsumer {
                    stream,
                    group: "g",
                    consumer: "n2",
                }),
                both(Consumers { stream, group: "g" }),
                both(Groups { stream }),
                both(Ack {
                    stream,
                    group: "g",
                    ids: &ids,
                }),
            ]
        };
        for (command, args) in commands {
            // The first string is a word of the command for most of them: fred would
            // route by it if it were not given the slot.
            let name = command.cmd.to_string();
            let sent = routed(command, &args);
            assert_eq!(sent.cluster_hash, ClusterHash::Custom(slot), "{name}");
        }
    }

    #[test]
    fn dead_letters_keep_the_fields_apart_from_ours() {
        let fields = [
            ("customer".to_string(), "7".to_string()),
            ("reason".to_string(), "theirs".to_string()),
        ];
        let add = DeadLetterAdd {
            dead_letter: "s:dead",
            stream: "s",
            id: "1-0",
            reason: "missing field 'x'",
            fields: &fields,
        };
        assert_eq!(
            words(&add),
            [
                "s:dead",
                "*",
                "stream",
                "s",
                "id",
                "1-0",
                "reason",
                "missing field 'x'",
                "customer",
                "7",
                "field:reason",
                "theirs"
            ]
        );
        assert_eq!(key_of(&add), "s:dead");
    }
}
