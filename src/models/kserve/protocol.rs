//! The Open Inference Protocol as a [`Protocol`] of the remote model: readiness by
//! `ModelReady`, the layout from `ModelMetadata` (checked against the spec), and requests as
//! ModelInfer messages of texts or tokens ([`super::tensors`]).

use std::time::Duration;

use super::engine::Engine;
use super::proto::ModelInferRequest;
use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::tensors::{Layout, layout, read_output, texts_request, tokens_request};
use crate::models::kserve::spec::KserveV2Spec;
use crate::models::remote::input::{Input, texts};
use crate::models::remote::{Answer, Built, CallError, EndpointSet, Limits, Protocol};
use crate::models::{ModelError, RewardModelSpec};

/// One RM on a KServe-v2 engine.
pub struct Kserve {
    spec: RewardModelSpec,
    remote: KserveV2Spec,
    engine: Engine,
    input: Input,
}

impl Kserve {
    /// Load what building requests needs (off the runtime) and make the engine's channels.
    pub async fn connect(spec: &RewardModelSpec) -> Result<Self, ModelError> {
        let name = spec.name.clone();
        let remote = spec
            .remote()
            .cloned()
            .ok_or_else(|| ModelError::InvalidSpec {
                name: name.clone(),
                reason: "not a kserve_v2 model".into(),
            })?;
        let input = Input::load_off_runtime(spec, remote.send).await?;
        let engine =
            Engine::connect(&remote).map_err(|reason| ModelError::InvalidSpec { name, reason })?;
        Ok(Self {
            spec: spec.clone(),
            remote,
            engine,
            input,
        })
    }
}

impl Protocol for Kserve {
    const KIND: &'static str = "kserve_v2";
    type Request = ModelInferRequest;
    type Layout = Layout;
    type Client = GrpcInferenceServiceClient<tonic::transport::Channel>;

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.engine.timeout,
            max_concurrency: self.remote.max_concurrency,
            health_interval: Duration::from_millis(self.remote.health_interval_ms),
            failures_before_unavailable: self.remote.failures_before_unavailable,
        }
    }

    fn endpoints(&self) -> &EndpointSet<Self::Client> {
        &self.engine.endpoints
    }

    fn model_name(&self) -> &str {
        &self.remote.model_name
    }

    async fn probe(&self) -> Result<(), String> {
        let what = format!("model {:?}", self.remote.model_name);
        let reasons = self
            .engine
            .endpoints
            .probe_each(&what, |endpoint| self.engine.ready(endpoint))
            .await;
        match self.engine.endpoints.any_ready() {
            true => Ok(()),
            false => Err(reasons.join("; ")),
        }
    }

    /// Metadata checked against the spec.
    async fn learn_layout(&self, endpoint: usize) -> Result<Layout, ModelError> {
        let name = self.spec.name.clone();
        let metadata =
            self.engine
                .metadata(endpoint)
                .await
                .map_err(|error| ModelError::EngineRefused {
                    name: name.clone(),
                    reason: error.to_string(),
                })?;
        layout(&self.spec, &self.remote, &metadata).map_err(|reason| ModelError::InvalidSpec {
            name,
            reason: format!("{}: {reason}", self.engine.endpoints.url(endpoint)),
        })
    }

    fn max_batch(&self, layout: &Layout) -> usize {
        layout.max_batch
    }

    fn tensor_names(&self, layout: &Layout) -> (Vec<String>, String) {
        let inputs = layout.inputs.iter().map(|i| i.name().to_string()).collect();
        (inputs, layout.output.clone())
    }

    /// Texts in query order; tokenized sequences sorted by length first, so similar lengths
    /// share a request and padding stays low.
    fn requests(
        &self,
        layout: &Layout,
        queries: &[(String, Vec<String>)],
    ) -> Built<ModelInferRequest> {
        let max_batch = layout.max_batch;
        match &self.input {
            Input::Texts { chat } => Built::new(
                queries,
                max_batch,
                |prompt, responses| texts(&self.spec, chat.as_deref(), prompt, responses),
                |_| 0,
                |texts| texts_request(layout, texts.into_iter().cloned().collect()),
            ),
            Input::Tokens { encoder } => Built::new(
                queries,
                max_batch,
                |prompt, responses| encoder.encode(prompt, responses),
                |encoding| encoding.len(),
                |encodings| tokens_request(layout, &encodings, encoder.pad_id()),
            ),
        }
    }

    async fn infer(
        &self,
        endpoint: usize,
        layout: &Layout,
        request: ModelInferRequest,
        rows: usize,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let response = self.engine.infer(endpoint, request, timeout).await?;
        Ok(read_output(&response, &layout.output, rows))
    }
}
