//! Who a connection is, and what the namespace rules let it do.
//!
//! An [`Identity`] comes from the connection token (see [`crate::tokens`]) or is
//! anonymous. [`permits`] is the one place where a [`Rule`] meets an identity and a
//! channel. API keys for `/api/*` are checked here too, in constant time.

use std::time::SystemTime;

use crate::config::Rule;

/// The claims a session runs under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The token's `sub`: None for anonymous sessions (and tokens without `sub`).
    pub user: Option<String>,
    /// Channel names or `*` patterns the token grants.
    pub grants: Vec<String>,
    /// The token's `info` claim, shown in presence.
    pub info: Option<serde_json::Value>,
    /// When the token expires (None: never).
    pub expires: Option<SystemTime>,
}

/// Whether `rule` lets `who` act on `channel`.
pub fn permits(rule: Rule, who: &Identity, channel: &str) -> bool {
    match rule {
        Rule::Nobody => false,
        Rule::Anyone => true,
        Rule::Authenticated => who.user.is_some(),
        Rule::Granted => who.grants.iter().any(|p| glob_match(p, channel)),
    }
}

/// `*` matches any run of characters (`:` included); everything else is literal;
/// the whole name must match; case-sensitive (PROTOCOL §2).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Position after the last `*` seen, and the name position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Compares a presented API key with the configured ones without leaking, through
/// timing, how much of a key matched.
pub fn api_key_matches(presented: &str, keys: &[String]) -> bool {
    let mut found = 0u8;
    for key in keys {
        found |= constant_time_eq(presented.as_bytes(), key.as_bytes()) as u8;
    }
    found == 1
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("user:42:*", "user:42:inbox"));
        assert!(glob_match("user:42:*", "user:42:a:b"));
        assert!(!glob_match("user:42:*", "user:421:inbox"));
        assert!(!glob_match("user:42:*", "user:4"));
        assert!(glob_match("*", "anything:at:all"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(!glob_match("a*c", "abbbcd"));
        assert!(glob_match("chat:room", "chat:room"));
        assert!(!glob_match("chat:room", "chat:room2"));
        assert!(!glob_match("Chat:*", "chat:x"));
        // Only `*` is special.
        assert!(!glob_match("user:?", "user:1"));
        assert!(!glob_match("user:[1]", "user:1"));
        assert!(glob_match("*:*:x", "a:b:c:x"));
    }

    #[test]
    fn rules() {
        let anon = Identity::default();
        let user = Identity {
            user: Some("u1".into()),
            grants: vec!["user:u1:*".into()],
            ..Identity::default()
        };
        assert!(permits(Rule::Anyone, &anon, "c"));
        assert!(!permits(Rule::Nobody, &user, "c"));
        assert!(!permits(Rule::Authenticated, &anon, "c"));
        assert!(permits(Rule::Authenticated, &user, "c"));
        assert!(permits(Rule::Granted, &user, "user:u1:inbox"));
        assert!(!permits(Rule::Granted, &user, "user:u2:inbox"));
    }

    #[test]
    fn api_keys() {
        let keys = vec![
            "k1-aaaaaaaaaaaaaaa".to_string(),
            "k2-bbbbbbbbbbbbbbb".to_string(),
        ];
        assert!(api_key_matches("k2-bbbbbbbbbbbbbbb", &keys));
        assert!(!api_key_matches("k2-bbbbbbbbbbbbbbX", &keys));
        assert!(!api_key_matches("", &keys));
        assert!(!api_key_matches("k1", &keys));
    }
}
