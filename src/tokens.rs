//! Connection tokens (JWT, PROTOCOL §2): which keys and algorithms this node
//! accepts, and the [`Identity`] a valid token gives a session.

use crate::auth::Identity;
use crate::config::Config;

/// A token that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this node accepts no tokens (no JWT key is configured)")]
    NoKey,
}

/// The node's token policy.
pub struct Tokens {
    required: bool,
}

impl Tokens {
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            required: config.auth.require_token.unwrap_or(false),
        })
    }

    /// True when an upgrade without a token is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The identity of an upgrade: anonymous without a token; a sent token must be valid.
    pub fn verify_optional(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        match token {
            None => Ok(Identity::default()),
            Some(_) => Err(TokenError::NoKey),
        }
    }
}
