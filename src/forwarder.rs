//! A standby replica's gRPC port: while another replica holds the state's writer lease
//! (PostgreSQL backend), every request reaching this one is forwarded, as it is, to the
//! owner's registered address ([`crate::store::postgres`] keeps it in the lease row), and the
//! owner's answer (headers, messages, trailers) comes back. So any replica behind one address
//! answers; when the owner is gone, requests get UNAVAILABLE until this replica (or another)
//! takes the lease and serves them itself.
//!
//! A plaintext port ([`Forwarding::Requests`]) forwards request by request: one upstream
//! HTTP/2 connection per client connection (made again when the owner changes or it closes);
//! requests are streamed both ways. A TLS port ([`Forwarding::Connections`]) cannot read the
//! requests, so it passes each client connection's bytes through, as they are, to the owner's
//! port: TLS (and client certificates) run end to end between the client and the owner, so
//! replicas behind one address must present certificates valid for that address. A
//! passed-through connection ends when the owner goes away (clients reconnect, and reach the
//! new owner); a connection arriving while nobody holds the lease is closed at once.
//! Cost: one extra hop (a few hundred microseconds on a local network).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use crate::store::postgres::OwnerAddress;

/// How a standby's port forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Plaintext gRPC: each request to the owner now (the connection follows the owner).
    Requests,
    /// TLS: each connection's bytes to the owner at the time it was accepted.
    Connections,
}

/// The running forwarder; dropping it (or [`Forwarder::stop`]) closes the port and every
/// forwarded connection.
pub struct Forwarder {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// Listen on `listen` and forward to whatever `owner` names.
    pub async fn start(
        listen: SocketAddr,
        owner: OwnerAddress,
        forwarding: Forwarding,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        tracing::info!(%listen, ?forwarding, "standby: forwarding to the lease holder");
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let owner = owner.clone();
                match forwarding {
                    Forwarding::Requests => connections.spawn(serve_connection(stream, owner)),
                    Forwarding::Connections => connections.spawn(pass_through(stream, owner)),
                };
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { task: Some(task) })
    }

    /// Close the port and the forwarded connections (before this replica binds it to serve).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

type Reply = Response<Either<Incoming, Empty<Bytes>>>;

/// The upstream connection a client connection's requests go over: to the owner named now,
/// made again when the owner changes or the connection closed.
type Upstream = Arc<tokio::sync::Mutex<Option<(String, SendRequest<Incoming>)>>>;

/// A sender to the current owner, reusing the connection's upstream while it still fits.
async fn upstream_for(
    owner: &OwnerAddress,
    upstream: &Upstream,
) -> Result<(String, SendRequest<Incoming>), String> {
    let Some(address) = owner.lock().expect("owner lock poisoned").clone() else {
        return Err("no replica holds the state's writer lease yet".into());
    };
    let mut cached = upstream.lock().await;
    if let Some((cached_address, sender)) = cached.as_ref()
        && *cached_address == address
        && !sender.is_closed()
    {
        return Ok((address, sender.clone()));
    }
    let sender = connect(&address)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    *cached = Some((address.clone(), sender.clone()));
    Ok((address, sender))
}

/// Forward one client connection's requests to the owner.
async fn serve_connection(stream: TcpStream, owner: OwnerAddress) {
    let upstream: Upstream = Arc::default();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (owner, upstream) = (owner.clone(), upstream.clone());
        async move {
            let reply: Reply = match upstream_for(&owner, &upstream).await {
                Ok((address, mut sender)) => {
                    let (mut parts, body) = request.into_parts();
                    let path = parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    match format!("http://{address}{path}").parse() {
                        Ok(uri) => {
                            parts.uri = uri;
                            match sender.send_request(Request::from_parts(parts, body)).await {
                                Ok(response) => response.map(Either::Left),
                                Err(error) => {
                                    unavailable(&format!("forwarding to {address}: {error}"))
                                }
                            }
                        }
                        Err(_) => unavailable("bad owner address"),
                    }
                }
                Err(reason) => unavailable(&format!("the owner cannot be reached: {reason}")),
            };
            Ok::<_, Infallible>(reply)
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Pass one client connection's bytes through to the owner named now, both ways, until
/// either side closes; closed at once when nobody holds the lease or the owner is unreachable.
async fn pass_through(mut stream: TcpStream, owner: OwnerAddress) {
    let Some(address) = owner.lock().expect("owner lock poisoned").clone() else {
        return;
    };
    match TcpStream::connect(&address).await {
        Ok(mut upstream) => {
            let _ = stream.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        }
        Err(error) => tracing::debug!(%address, %error, "standby: owner unreachable"),
    }
}

/// An HTTP/2 connection to the owner, driven by a task.
async fn connect(address: &str) -> Result<SendRequest<Incoming>, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A trailers-only gRPC answer: UNAVAILABLE with `reason` (clients retry it).
fn unavailable(reason: &str) -> Reply {
    let message: String = format!("standby replica: {reason}")
        .bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .header("grpc-message", message)
        .body(Either::Right(Empty::new()))
        .expect("a valid response")
}
