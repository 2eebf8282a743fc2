//! Redis over TLS: the rustls client configuration both fred clients use on a
//! `rediss://` URL, built from the `[redis]` TLS keys (docs/CONFIG.md "Redis over
//! TLS"): a CA file whose certificates are trusted besides the system's roots, an
//! optional client certificate and key (mutual TLS), an optional server name checked
//! instead of the URL's host.
//!
//! The files are read and checked once, as the node builds the engine; a file that is
//! missing, unreadable or holds no usable PEM is a [`TlsError`] naming its key, which
//! the wiring turns into a configuration error (exit code 2).

use std::path::Path;
use std::sync::Arc;

use fred::types::config::{HostMapping, TlsConfig, TlsConnector, TlsHostMapping};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The TLS keys of `[redis]`, as configured (paths not yet read).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// `redis.tls_ca_file`.
    pub ca_file: Option<&'a Path>,
    /// `redis.tls_cert_file` (with `key_file`: both or neither).
    pub cert_file: Option<&'a Path>,
    /// `redis.tls_key_file`.
    pub key_file: Option<&'a Path>,
    /// `redis.tls_server_name`.
    pub server_name: Option<&'a str>,
}

/// A TLS key whose value cannot be used: the key (`redis.tls_ca_file`, …) and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    pub key: &'static str,
    pub reason: String,
}

fn error(key: &'static str, reason: impl Into<String>) -> TlsError {
    TlsError {
        key,
        reason: reason.into(),
    }
}

/// The checked TLS settings of the Redis connections.
#[derive(Clone, Debug)]
pub struct RedisTls {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl RedisTls {
    /// Reads and checks the files. None when no TLS key is set: a `rediss://` URL then
    /// keeps fred's own client configuration (the system's roots).
    pub fn load(files: TlsFiles<'_>) -> Result<Option<RedisTls>, TlsError> {
        if files.ca_file.is_none()
            && files.cert_file.is_none()
            && files.key_file.is_none()
            && files.server_name.is_none()
        {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error("redis.tls_ca_file", format!("TLS set-up: {e}")))?
            .with_root_certificates(roots(files.ca_file)?);
        let config = match (files.cert_file, files.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "redis.tls_cert_file")?;
                let key = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| error("redis.tls_key_file", format!("unusable: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(error(
                    "redis.tls_key_file",
                    "redis.tls_cert_file needs its private key",
                ));
            }
            (None, Some(_)) => {
                return Err(error(
                    "redis.tls_cert_file",
                    "redis.tls_key_file needs its certificate",
                ));
            }
        };
        let server_name = match files.server_name {
            Some(name) => {
                ServerName::try_from(name).map_err(|e| {
                    error(
                        "redis.tls_server_name",
                        format!("'{name}' is not a DNS name or an IP address ({e})"),
                    )
                })?;
                Some(name.to_string())
            }
            None => None,
        };
        Ok(Some(RedisTls {
            connector: TlsConnector::from(config),
            server_name,
        }))
    }

    /// Puts this TLS configuration on a fred configuration parsed from a `rediss://`
    /// URL (a URL without TLS is left alone; the configuration refuses that case).
    pub(super) fn apply(&self, config: &mut fred::types::config::Config) {
        if !config.uses_tls() {
            return;
        }
        let hostnames = match &self.server_name {
            Some(name) => TlsHostMapping::Custom(Arc::new(FixedName(name.clone()))),
            None => TlsHostMapping::None,
        };
        config.tls = Some(TlsConfig {
            connector: self.connector.clone(),
            hostnames,
        });
        if let Some(name) = &self.server_name {
            use fred::types::config::ServerConfig;
            let servers: &mut [fred::types::config::Server] = match &mut config.server {
                ServerConfig::Centralized { server } => std::slice::from_mut(server),
                ServerConfig::Clustered { hosts, .. } => hosts,
                ServerConfig::Sentinel { hosts, .. } => hosts,
            };
            for server in servers {
                server.tls_server_name = Some(name.as_str().into());
            }
        }
    }
}

/// `redis.tls_server_name` for every node a cluster names, too.
#[derive(Debug)]
struct FixedName(String);

impl HostMapping for FixedName {
    fn map(&self, _ip: &std::net::IpAddr, _default_host: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

/// The system's roots (as fred's own configuration loads them, `SSL_CERT_FILE`
/// included) and the certificates of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    // A system certificate that cannot be loaded is skipped: the CA file is what a
    // managed Redis with its own CA needs, and fred's check would refuse them all.
    let system = rustls_native_certs::load_native_certs();
    let _ = store.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        for cert in certificates(path, "redis.tls_ca_file")? {
            store.add(cert).map_err(|e| {
                error(
                    "redis.tls_ca_file",
                    format!("{}: not a usable CA certificate: {e}", path.display()),
                )
            })?;
        }
    }
    Ok(store)
}

/// The PEM file of `key`, read whole.
fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, format!("{}: not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "redis.tls_key_file";
    let pem = read(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| error(key, format!("{}: no PEM private key: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_set_keeps_freds_configuration() {
        assert!(RedisTls::load(TlsFiles::default()).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_non_pem_file_names_its_key() {
        let missing = Path::new("/nonexistent/herald-ca.pem");
        let err = RedisTls::load(TlsFiles {
            ca_file: Some(missing),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
        assert!(err.reason.contains("cannot read"), "{err}");

        let dir = std::env::temp_dir().join(format!("herald-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = RedisTls::load(TlsFiles {
            ca_file: Some(&junk),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
        assert!(err.reason.contains("no PEM certificate"), "{err}");
        let err = RedisTls::load(TlsFiles {
            cert_file: Some(&junk),
            key_file: Some(&junk),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_cert_file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let err = RedisTls::load(TlsFiles {
            server_name: Some("not a name"),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_server_name");
    }
}
