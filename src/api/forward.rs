//! Requests for a router that another replica owns (PostgreSQL backend) are forwarded to
//! that replica over gRPC, as they came (message, metadata, deadline, admin token), and its
//! answer returned as it is. So every replica behind one address answers every router.
//!
//! A forwarded request carries [`FORWARDED`] and is never forwarded again: a replica that
//! receives one for a router it does not own (ownership moved meanwhile) answers
//! UNAVAILABLE, and the client's retry starts over. One lazily connected channel per peer
//! address, kept; TLS to peers when the gRPC port has TLS (`[server.tls]` `peer_ca_path`,
//! `peer_domain`; the replica's own certificate is its client certificate).
//! Cost: one extra hop (a few hundred microseconds on a local network).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use crate::service::Service;
use crate::telemetry::metric;
use crate::tls::TlsConfig;

/// Metadata key that marks a forwarded request.
pub const FORWARDED: &str = "laser-forwarded";

/// How long a peer may take to connect.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a peer may take to answer a keep-alive ping: half a lease, within these bounds.
/// A paused or cut-off owner thus fails the requests forwarded to it (UNAVAILABLE) within
/// about a lease — by when another replica takes its routers over — instead of holding them
/// until the caller's deadline; a busy owner still answers pings (its connection tasks run
/// beside the work).
const PING_TIMEOUT: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

/// The channels to the other replicas.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientTlsConfig>,
    /// How long an owner may leave a keep-alive ping unanswered.
    ping_timeout: Duration,
    /// Largest message in either direction (limits.max_message_bytes).
    pub max_message_bytes: usize,
}

impl Peers {
    /// Peers reached in plaintext, or with TLS as `tls` says (the gRPC port's settings); an
    /// owner that stops answering is given up after about half a `lease`.
    pub fn new(
        tls: Option<&TlsConfig>,
        max_message_bytes: usize,
        lease: Duration,
    ) -> std::io::Result<Self> {
        let tls = match tls {
            None => None,
            Some(tls) => {
                let ca_path = tls.peer_ca_path.as_ref().or(tls.client_ca_path.as_ref());
                let mut config = ClientTlsConfig::new().with_webpki_roots();
                if let Some(domain) = &tls.peer_domain {
                    config = config.domain_name(domain.clone());
                }
                if let Some(path) = ca_path {
                    config = config.ca_certificate(Certificate::from_pem(std::fs::read(path)?));
                }
                let identity = Identity::from_pem(
                    std::fs::read(&tls.cert_path)?,
                    std::fs::read(&tls.key_path)?,
                );
                Some(config.identity(identity))
            }
        };
        Ok(Self {
            channels: Mutex::new(HashMap::new()),
            tls,
            ping_timeout: (lease / 2).clamp(PING_TIMEOUT.0, PING_TIMEOUT.1),
            max_message_bytes,
        })
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("peer channels lock poisoned");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let invalid = |e: tonic::transport::Error| {
            Status::unavailable(format!(
                "the router's owner registered the address {address:?}, which cannot be reached: {e}"
            ))
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(invalid)?
            .tcp_nodelay(true)
            .connect_timeout(PEER_TIMEOUT)
            // A paused or cut-off owner fails the requests forwarded to it instead of
            // holding them past its lease.
            .http2_keep_alive_interval(self.ping_timeout)
            .keep_alive_timeout(self.ping_timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Send `request` to the replica at `address` with `call` (a client method), marked
    /// forwarded.
    pub async fn forward<T, R, F, Fut>(
        &self,
        rpc: &'static str,
        address: &str,
        request: Request<T>,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let channel = self.channel(address)?;
        let (mut metadata, _, message) = request.into_parts();
        metadata.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        let request = Request::from_parts(metadata, Default::default(), message);
        metrics::counter!(metric::REQUESTS_FORWARDED, "rpc" => rpc).increment(1);
        tracing::debug!(rpc, %address, "forwarded to the router's owner");
        call(channel, request)
            .await
            .map_err(|status| relayed(status, address))
    }
}

/// The status a forwarder answers for a forwarded call that failed. The owner's own answers
/// pass as they are; a failure of the hop itself — the owner died or its connection broke
/// (tonic's `UNKNOWN "transport error"`, `CANCELLED "operation was canceled"`) — is
/// UNAVAILABLE: the request may not have been applied, and retrying it (keyed feedback
/// included) is safe; the client's deadline running out on the hop (`CANCELLED "Timeout
/// expired"`) is DEADLINE_EXCEEDED.
fn relayed(status: Status, address: &str) -> Status {
    use std::error::Error;
    use tonic::Code;
    match status.code() {
        Code::Cancelled if status.message() == "Timeout expired" => Status::deadline_exceeded(
            format!("the deadline passed while the router's owner at {address} was answering"),
        ),
        Code::Unknown | Code::Cancelled
            if status.source().is_some()
                || matches!(
                    status.message(),
                    "transport error" | "operation was canceled" | "h2 protocol error"
                ) =>
        {
            Status::unavailable(format!(
                "the router's owner at {address} did not answer ({}: {}); retry: the router moves to another replica",
                status.code().description(),
                status.message()
            ))
        }
        _ => status,
    }
}

/// The address of the replica that owns `router`, when a request for it should go there:
/// another replica owns it and the request was not forwarded already. Takes the router
/// over when nobody owns it.
pub async fn owner_elsewhere(
    service: &Service,
    router: &str,
    metadata: &MetadataMap,
) -> Result<Option<String>, Status> {
    if metadata.contains_key(FORWARDED) {
        return Ok(None);
    }
    Ok(service.router_served_elsewhere(router).await?)
}

/// In a handler of `$this` (with `service` and `peers`): when another replica owns
/// `$router`, forward `$request` there with `$client::$method` and return its answer.
macro_rules! forward_to_owner {
    ($this:expr, $rpc:literal, $request:ident, $router:expr, $client:ident :: $method:ident) => {
        if let Some(owner) =
            $crate::api::forward::owner_elsewhere(&$this.service, $router, $request.metadata())
                .await?
        {
            let max = $this.peers.max_message_bytes;
            return $this
                .peers
                .forward($rpc, &owner, $request, |channel, request| async move {
                    $client::new(channel)
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max)
                        .$method(request)
                        .await
                })
                .await;
        }
    };
}
pub(crate) use forward_to_owner;

#[cfg(test)]
mod tests {
    use super::relayed;
    use tonic::{Code, Status};

    #[test]
    fn a_broken_hop_is_unavailable_and_the_owners_answers_pass() {
        let relayed = |status| relayed(status, "10.0.0.7:50051");
        assert_eq!(
            relayed(Status::unknown("transport error")).code(),
            Code::Unavailable
        );
        assert_eq!(
            relayed(Status::cancelled("operation was canceled")).code(),
            Code::Unavailable
        );
        assert_eq!(
            relayed(Status::cancelled("Timeout expired")).code(),
            Code::DeadlineExceeded
        );
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(relayed(broken).code(), Code::Unavailable);
        for answer in [
            Status::not_found("router \"x\" not found"),
            Status::invalid_argument("queries[0].context: ..."),
            Status::unavailable("this replica no longer owns router"),
            Status::aborted("retry"),
        ] {
            let code = answer.code();
            assert_eq!(relayed(answer).code(), code);
        }
    }
}
