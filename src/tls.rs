//! TLS settings of the server's ports (the config file's `[server.tls]`): the certificate
//! and key both ports serve, the client CA that makes client certificates required, and
//! what replicas trust when forwarding to each other. Plain data; the gRPC port (`app`),
//! the HTTP port (`http_listener`) and peer forwarding (`api::forward`) read the files.

use std::path::PathBuf;

use serde::Deserialize;

/// TLS (rustls) for the gRPC port. Paths are PEM files, relative to the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_path: Option<PathBuf>,
    /// Replicas (PostgreSQL): the CA that signed the other replicas' certificates, trusted
    /// when forwarding a request to a router's owner (default: `client_ca_path`, else the
    /// public web roots).
    #[serde(default)]
    pub peer_ca_path: Option<PathBuf>,
    /// Replicas: the name the other replicas' certificates carry (default: the host of the
    /// owner's registered address).
    #[serde(default)]
    pub peer_domain: Option<String>,
}
