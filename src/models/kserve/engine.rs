//! The endpoints serving one remote model and the protocol's calls on them. Channels are
//! lazy (a down engine does not fail construction; tonic reconnects on the next call);
//! every call carries the auth header and a timeout (`grpc-timeout` for the engine, and a
//! local timer for an engine that does not answer at all).

use std::time::Duration;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint as ChannelEndpoint};

use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest,
};
use crate::models::kserve::spec::KserveV2Spec;
use crate::models::remote::{CallError, EndpointSet};

/// Largest message accepted from or sent to an engine.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The endpoints of one remote model and its name there.
pub(super) struct Engine {
    pub(super) endpoints: EndpointSet<GrpcInferenceServiceClient<Channel>>,
    model_name: String,
    model_version: String,
    auth: Option<(AsciiMetadataKey, AsciiMetadataValue)>,
    pub(super) timeout: Duration,
}

impl Engine {
    /// Lazy channels to every endpoint (needs the tokio runtime; connects on first use).
    pub(super) fn connect(spec: &KserveV2Spec) -> Result<Self, String> {
        let auth = match (&spec.auth_header, &spec.auth_value_env) {
            (Some(header), Some(variable)) => {
                let key = AsciiMetadataKey::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        format!("kserve_v2.auth_header {header:?} is not a header name")
                    })?;
                let value = std::env::var(variable).map_err(|_| {
                    format!("kserve_v2.auth_value_env: environment variable {variable} is not set")
                })?;
                let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
                    format!("environment variable {variable} holds no valid header value")
                })?;
                Some((key, value))
            }
            _ => None,
        };
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for url in &spec.endpoints {
            let mut endpoint = ChannelEndpoint::from_shared(url.clone())
                .map_err(|e| format!("endpoint {url:?}: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                let mut tls = ClientTlsConfig::new();
                tls = match &spec.tls_ca {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            format!("kserve_v2.tls_ca: cannot read {}: {e}", path.display())
                        })?;
                        tls.ca_certificate(Certificate::from_pem(pem))
                    }
                    None => tls.with_webpki_roots(),
                };
                if let Some(domain) = &spec.tls_domain {
                    tls = tls.domain_name(domain.clone());
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| format!("endpoint {url:?}: TLS: {e}"))?;
            }
            let client = GrpcInferenceServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            endpoints.push((url.clone(), client));
        }
        Ok(Self {
            endpoints: EndpointSet::new(endpoints),
            model_name: spec.model_name.clone(),
            model_version: spec.model_version.clone(),
            auth,
            timeout: Duration::from_millis(spec.timeout_ms),
        })
    }

    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some((key, value)) = &self.auth {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        request
    }

    /// Run `call` on `endpoint` under `timeout`, mapping failures to [`CallError`].
    async fn call<R>(
        &self,
        endpoint: usize,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R, CallError> {
        let url = self.endpoints.url(endpoint).to_string();
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(call_error(url, &status)),
            Err(_) => Err(CallError::no_answer(url, timeout)),
        }
    }

    /// `ModelReady` of the model on `endpoint`.
    pub(super) async fn ready(&self, endpoint: usize) -> Result<bool, CallError> {
        let mut client = self.endpoints.client(endpoint).clone();
        let request = self.request(
            ModelReadyRequest {
                name: self.model_name.clone(),
                version: self.model_version.clone(),
            },
            self.timeout,
        );
        let answer = self
            .call(endpoint, self.timeout, client.model_ready(request))
            .await?;
        Ok(answer.ready)
    }

    pub(super) async fn metadata(
        &self,
        endpoint: usize,
    ) -> Result<ModelMetadataResponse, CallError> {
        let mut client = self.endpoints.client(endpoint).clone();
        let request = self.request(
            ModelMetadataRequest {
                name: self.model_name.clone(),
                version: self.model_version.clone(),
            },
            self.timeout,
        );
        self.call(endpoint, self.timeout, client.model_metadata(request))
            .await
    }

    /// One ModelInfer of `inputs` asking for `output`.
    pub(super) async fn infer(
        &self,
        endpoint: usize,
        mut message: ModelInferRequest,
        timeout: Duration,
    ) -> Result<ModelInferResponse, CallError> {
        message.model_name = self.model_name.clone();
        message.model_version = self.model_version.clone();
        let mut client = self.endpoints.client(endpoint).clone();
        let request = self.request(message, timeout);
        self.call(endpoint, timeout, client.model_infer(request))
            .await
    }
}

/// A gRPC status from an engine (or from the transport beneath it) as a [`CallError`].
fn call_error(endpoint: String, status: &tonic::Status) -> CallError {
    let message = status.message().to_string();
    let transport = status.code() == tonic::Code::Unavailable
        || (status.code() == tonic::Code::Unknown
            && (message.contains("transport") || message.contains("connect")));
    let reason = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    };
    CallError {
        endpoint,
        reason,
        unreachable: transport,
        // The request's `grpc-timeout` ran out: tonic's own timer on it (CANCELLED "Timeout
        // expired", racing the local one) or the engine's (DEADLINE_EXCEEDED).
        timed_out: matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::call_error;

    #[test]
    fn a_status_saying_the_timeout_ran_out_is_a_timeout_not_an_engine_failure() {
        let url = || "http://engine:8081".to_string();
        for status in [
            tonic::Status::cancelled("Timeout expired"),
            tonic::Status::deadline_exceeded("Deadline Exceeded"),
        ] {
            let error = call_error(url(), &status);
            assert!(error.timed_out && !error.unreachable, "{status:?}");
        }
        let down = call_error(url(), &tonic::Status::unavailable("tcp connect error"));
        assert!(down.unreachable && !down.timed_out);
        let refused = call_error(url(), &tonic::Status::invalid_argument("bad input"));
        assert!(!refused.unreachable && !refused.timed_out);
    }
}
