//! Connection tokens (JWT, PROTOCOL §2): which keys and algorithms this node accepts,
//! and the [`Identity`] a valid token gives a session.
//!
//! Only the configured algorithms are accepted, each with its own key: the header's
//! `alg` picks the key, so an HS256 token signed with an RS256 public key is checked
//! against the HS256 secret (or refused when HS256 is not configured), and `none` is
//! never accepted. `exp` and `nbf` are optional and have no leeway; a time the
//! system clock cannot represent makes the token invalid, never a panic.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::Identity;
use crate::config::{AuthConfig, Config, ConfigError};

/// A token that cannot be accepted. Messages are for the client; no secret appears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this node accepts no tokens (no JWT key is configured)")]
    NoKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token algorithm {0} is not accepted by this node")]
    Algorithm(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet ('nbf' is in the future)")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// The node's token policy: accepted algorithms with their keys, and whether an
/// upgrade must carry a token.
pub struct Tokens {
    keys: Vec<(Algorithm, DecodingKey)>,
    required: bool,
}

impl Tokens {
    /// The token policy of `config.auth`: one key per accepted algorithm, loaded now so
    /// that a missing or bad key stops the node at start-up, not at the first upgrade.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let auth = &config.auth;
        let mut keys = Vec::new();
        for name in algorithm_names(auth)? {
            let alg = parse_algorithm(&name)?;
            keys.push((alg, load_key(auth, alg, &name)?));
        }
        let required = auth.require_token.unwrap_or(!keys.is_empty());
        if required && keys.is_empty() {
            return Err(auth_error(
                "auth.require_token",
                "tokens are required but no JWT key is configured".into(),
            ));
        }
        Ok(Self { keys, required })
    }

    /// True when an upgrade without a token is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// True when this node can verify tokens at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The identity of an upgrade: anonymous without a token; a sent token must be valid.
    pub fn verify_optional(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        match token {
            None => Ok(Identity::default()),
            Some(t) => self.verify(t),
        }
    }

    /// Verifies a token and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if self.keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        };
        let mut validation = Validation::new(*alg);
        validation.leeway = 0;
        validation.validate_aud = false;
        // `exp` and `nbf` are optional (PROTOCOL §2); when present they are checked,
        // without leeway (RFC 7519 §4.1.5: not accepted before `nbf`).
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::new();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            _ => TokenError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let expires = match claims.exp {
            None => None,
            // `exp` ≥ 2^63 s overflows `SystemTime`: such a token is invalid, not a panic.
            Some(s) => Some(
                SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(s))
                    .ok_or_else(|| TokenError::Invalid("'exp' is out of range".into()))?,
            ),
        };
        if expires.is_some_and(|e| e <= SystemTime::now()) {
            return Err(TokenError::Expired);
        }
        Ok(Identity {
            user: claims.sub.filter(|s| !s.is_empty()),
            grants: claims.channels.unwrap_or_default(),
            info: claims.info,
            expires,
        })
    }
}

/// A refused `[auth]` key; tokens are checked as the node builds them, with the same
/// error type as the rest of the configuration.
fn auth_error(key: &str, reason: String) -> ConfigError {
    ConfigError {
        source_name: "auth".into(),
        key: key.into(),
        reason,
    }
}

/// The algorithms to accept: as configured, or else HS256 when a secret is set. A
/// public key alone is refused, because it fits more than one algorithm.
fn algorithm_names(auth: &AuthConfig) -> Result<Vec<String>, ConfigError> {
    let mut names = auth.jwt_algorithms.clone();
    if names.is_empty() {
        if auth.jwt_hs256_secret.is_some() {
            names.push("HS256".into());
        }
        if auth.jwt_public_key_file.is_some() {
            return Err(auth_error(
                "auth.jwt_algorithms",
                "say which algorithm the public key is for: [\"RS256\"] or [\"ES256\"]".into(),
            ));
        }
    }
    Ok(names)
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(auth_error(
            "auth.jwt_algorithms",
            format!("'{other}' is not one of HS256, RS256, ES256"),
        )),
    }
}

/// The key of one algorithm (`name` as configured): the HS256 secret, or the public
/// key file read as an RSA or EC key.
fn load_key(auth: &AuthConfig, alg: Algorithm, name: &str) -> Result<DecodingKey, ConfigError> {
    match alg {
        Algorithm::HS256 => hs256_key(auth),
        _ => public_key(auth, alg, name),
    }
}

fn hs256_key(auth: &AuthConfig) -> Result<DecodingKey, ConfigError> {
    let secret = auth.jwt_hs256_secret.as_deref().ok_or_else(|| {
        auth_error(
            "auth.jwt_hs256_secret",
            "HS256 needs a secret (HERALD_JWT_HS256_SECRET)".into(),
        )
    })?;
    if secret.len() < 32 {
        return Err(auth_error(
            "auth.jwt_hs256_secret",
            "must be at least 32 bytes".into(),
        ));
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

fn public_key(auth: &AuthConfig, alg: Algorithm, name: &str) -> Result<DecodingKey, ConfigError> {
    let path = auth.jwt_public_key_file.as_ref().ok_or_else(|| {
        auth_error(
            "auth.jwt_public_key_file",
            format!("{name} needs a public key file (PEM)"),
        )
    })?;
    let pem = std::fs::read(path).map_err(|e| {
        auth_error(
            "auth.jwt_public_key_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let parsed = if alg == Algorithm::RS256 {
        DecodingKey::from_rsa_pem(&pem)
    } else {
        DecodingKey::from_ec_pem(&pem)
    };
    parsed.map_err(|e| {
        auth_error(
            "auth.jwt_public_key_file",
            format!("not a {name} public key in PEM: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        let mut cfg = Config::default();
        cfg.auth.jwt_hs256_secret = Some(SECRET.into());
        Tokens::from_config(&cfg).unwrap()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_valid_token_gives_its_identity() {
        let t = sign(
            json!({"sub": "u1", "exp": now() + 60, "channels": ["user:u1:*"], "info": {"n": 1}}),
            SECRET,
        );
        let id = tokens().verify(&t).unwrap();
        assert_eq!(id.user.as_deref(), Some("u1"));
        assert_eq!(id.grants, vec!["user:u1:*"]);
        assert_eq!(id.info, Some(json!({"n": 1})));
        assert!(id.expires.is_some());
        assert!(tokens().required());
    }

    #[test]
    fn no_exp_means_no_expiry() {
        let t = sign(json!({"sub": "u1"}), SECRET);
        assert_eq!(tokens().verify(&t).unwrap().expires, None);
    }

    #[test]
    fn refusals() {
        let tk = tokens();
        assert_eq!(
            tk.verify(&sign(json!({"sub": "u", "exp": now() - 1}), SECRET)),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            tk.verify(&sign(
                json!({"sub": "u"}),
                "another-secret-another-secret-xx"
            )),
            Err(TokenError::Invalid(_))
        ));
        // alg: none, hand-made.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"admin"}"#)
        );
        assert!(tk.verify(&none).is_err());
        assert!(tk.verify("garbage").is_err());
        assert!(tk.verify("").is_err());
    }

    #[test]
    fn out_of_range_exp_is_invalid_not_a_panic() {
        let tk = tokens();
        for exp in [1u64 << 63, u64::MAX, (1 << 63) + 12345] {
            assert!(
                matches!(
                    tk.verify(&sign(json!({"sub": "u", "exp": exp}), SECRET)),
                    Err(TokenError::Invalid(_))
                ),
                "exp {exp}"
            );
        }
        // Far but representable: valid, and the session's timer copes with it.
        let far = tk
            .verify(&sign(json!({"sub": "u", "exp": 1u64 << 40}), SECRET))
            .unwrap();
        assert!(far.expires.is_some());
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let tk = tokens();
        let day = 86_400;
        assert_eq!(
            tk.verify(&sign(json!({"sub": "u", "nbf": now() + day}), SECRET)),
            Err(TokenError::NotYetValid)
        );
        assert!(
            tk.verify(&sign(json!({"sub": "u", "nbf": now() - 1}), SECRET))
                .is_ok()
        );
        // An `nbf` no clock will reach is refused like any future one.
        assert_eq!(
            tk.verify(&sign(json!({"sub": "u", "nbf": u64::MAX}), SECRET)),
            Err(TokenError::NotYetValid)
        );
    }

    fn b64(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &c)| acc | (c as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn bad_config_is_refused() {
        let mut cfg = Config::default();
        cfg.auth.jwt_hs256_secret = Some("short".into());
        assert_eq!(
            Tokens::from_config(&cfg).err().unwrap().key,
            "auth.jwt_hs256_secret"
        );
        let mut cfg = Config::default();
        cfg.auth.jwt_algorithms = vec!["HS512".into()];
        assert_eq!(
            Tokens::from_config(&cfg).err().unwrap().key,
            "auth.jwt_algorithms"
        );
        let mut cfg = Config::default();
        cfg.auth.require_token = Some(true);
        assert_eq!(
            Tokens::from_config(&cfg).err().unwrap().key,
            "auth.require_token"
        );
    }
}
