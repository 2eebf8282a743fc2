//! Redis key and pub/sub channel names of PROTOCOL §4, all under the configured
//! prefix. The `{channel}` hash tag keeps a channel's keys on one cluster shard, so its
//! scripts can touch them together. What is stored under each name is the scripts'.

/// Redis key names of PROTOCOL §4.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:ch", self.prefix)
    }
    pub fn stream(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:idem:{key}", self.prefix)
    }
    pub fn upstream(&self, ns: &str) -> String {
        format!("{}:upstream:{ns}", self.prefix)
    }
    /// The presence hash, its expiry sorted set and the user-count hash.
    pub fn presence(&self, channel: &str) -> Vec<String> {
        vec![
            format!("{}:{{{channel}}}:presence", self.prefix),
            format!("{}:{{{channel}}}:presence:exp", self.prefix),
            format!("{}:{{{channel}}}:presence:users", self.prefix),
        ]
    }
    /// A node's probe channel of one shard (`topology.rs`). No Herald channel has this
    /// name: it lacks the `{…}:ch` shape.
    pub fn probe(&self, tag: &str) -> String {
        format!("{}:probe:{{{tag}}}", self.prefix)
    }
    /// The node channel of node `id` (PROTOCOL §4): what other nodes send it. The id
    /// is the hash tag, so on a cluster it has a slot of its own.
    pub fn node(&self, id: &str) -> String {
        format!("{}:node:{{{id}}}", self.prefix)
    }
    /// Whether a pub/sub channel name is a node channel.
    pub fn is_node(&self, pubsub: &str) -> bool {
        pubsub
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(":node:{") && rest.ends_with('}'))
    }
    /// The tag of a probe channel name, if it is one of ours.
    pub fn probe_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":probe:{")?
            .strip_suffix('}')
    }
    /// The Herald channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:ch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_protocol() {
        let k = Keys::new("herald");
        assert_eq!(k.pubsub("chat:1"), "herald:{chat:1}:ch");
        assert_eq!(k.stream("chat:1"), "herald:{chat:1}:stream");
        assert_eq!(k.meta("chat:1"), "herald:{chat:1}:meta");
        assert_eq!(k.channel_of("herald:{chat:1}:ch"), Some("chat:1"));
        assert_eq!(k.channel_of("other:{chat:1}:ch"), None);
        assert_eq!(k.channel_of("herald:{chat:1}:stream"), None);
    }
}
