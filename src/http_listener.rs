//! The HTTP/JSON listener: serves [`crate::api::http`]'s routes over plain HTTP, or over TLS
//! with the gRPC port's certificate (and its client CA, when client certificates are
//! required) so both ports have the same guarantees. Stops accepting when `stop` turns
//! true and lets requests in progress finish. Cost: one task per connection.

use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::tls::TlsConfig;

/// What can go wrong setting the listener up.
#[derive(Debug, thiserror::Error)]
pub enum HttpListenerError {
    #[error("TLS for the HTTP port: {file}: {reason}")]
    Pem { file: String, reason: String },
    #[error("TLS for the HTTP port: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS for the HTTP port: client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// A TLS acceptor from the PEM files of `tls`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, HttpListenerError> {
    let pem = |path: &std::path::Path, reason: String| HttpListenerError::Pem {
        file: path.display().to_string(),
        reason,
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| pem(&tls.cert_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| pem(&tls.key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_path {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| pem(ca, e.to_string()))?
            {
                roots.add(certificate)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `routes` on `listener` (through `tls` when set) until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    routes: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        // Small replies must not wait for the client's delayed ACK.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let served = axum::serve(listener, routes)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP listener failed");
        }
        return;
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    continue;
                }
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (tls, routes) = (tls.clone(), routes.clone());
        // Small replies must not wait for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed on the HTTP port");
                    return;
                }
            };
            let service = TowerToHyperService::new(routes);
            if let Err(error) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}
