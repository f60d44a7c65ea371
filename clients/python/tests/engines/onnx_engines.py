"""Real inference engines serving the repository's ONNX reward models over the Open Inference
Protocol, for the kserve_v2 backend's tests and benchmark (clients/python/engine_tests,
benches/remote_rm.py).

- `OnnxRewardRuntime`: an MLServer custom runtime (`mlserver start DIR`, model-settings.json
  naming `onnx_engines.OnnxRewardRuntime`).
- `serve_kserve(port, models)`: KServe's Python `ModelServer` with one `kserve.Model` per model
  (`python onnx_engines.py kserve SPEC.json`).

Both run the model with ONNX Runtime. A model takes either texts (one BYTES input; the engine
tokenizes with the model's tokenizer.json, as an engine serving an LLM reward model does) or
the token tensors the ONNX graph declares (`input_ids`, `attention_mask`, ...). The model's
`extra` settings: `model` (ONNX path), `tokenizer` (tokenizer.json, texts mode), `send`
("texts" | "tokens"), `output` (output name), `max_length`, `delay_s` (sleep before
answering: a slow engine).
"""

import asyncio
import json
import sys
from typing import Dict, List

import numpy as np
import onnxruntime as ort


class OnnxScorer:
    """One ONNX model with ONNX Runtime, fed tokens, or texts it tokenizes itself."""

    def __init__(self, extra: Dict):
        self.session = ort.InferenceSession(extra["model"], providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.output = extra["output"]
        self.delay_s = float(extra.get("delay_s", 0.0))
        self.tokenizer = None
        if extra.get("send") == "texts":
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(extra["tokenizer"])
            tokenizer.no_padding()
            tokenizer.enable_truncation(int(extra.get("max_length", 512)), direction="left")
            self.tokenizer = tokenizer
            self.pad_id = next(
                (tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>", "<|pad|>") if tokenizer.token_to_id(t) is not None),
                0,
            )

    def run_texts(self, texts: List[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        longest = max(1, max(len(e.ids) for e in encodings))
        feeds = {}
        for name in self.inputs:
            matrix = np.zeros((len(encodings), longest), dtype=np.int64)
            for row, e in enumerate(encodings):
                values = {
                    "input_ids": e.ids,
                    "attention_mask": e.attention_mask,
                    "token_type_ids": e.type_ids,
                    "position_ids": list(range(len(e.ids))),
                }[name]
                matrix[row, : len(values)] = values
                if name == "input_ids":
                    matrix[row, len(values):] = self.pad_id
            feeds[name] = matrix
        return self.run_tokens(feeds)

    def run_tokens(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        cast = {
            name: value.astype(np.int32 if self.inputs[name] == "tensor(int32)" else np.int64)
            for name, value in feeds.items()
        }
        (value,) = self.session.run([self.output], cast)
        return np.asarray(value, dtype=np.float32)


try:  # MLServer's custom runtime (only where mlserver is installed)
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest, InferenceResponse

    class OnnxRewardRuntime(MLModel):
        async def load(self) -> bool:
            self.scorer = OnnxScorer(dict(self.settings.parameters.extra))
            self.send = self.settings.parameters.extra["send"]
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            if self.scorer.delay_s:
                await asyncio.sleep(self.scorer.delay_s)
            if self.send == "texts":
                texts = StringCodec.decode_input(payload.inputs[0])
                value = self.scorer.run_texts([t.decode() if isinstance(t, bytes) else t for t in texts])
            else:
                value = self.scorer.run_tokens({i.name: NumpyCodec.decode_input(i) for i in payload.inputs})
            return InferenceResponse(
                model_name=self.name,
                outputs=[NumpyCodec.encode_output(name=self.scorer.output, payload=value)],
            )
except ImportError:
    pass


def serve_kserve(http_port: int, grpc_port: int, models: List[Dict]) -> None:
    """KServe's ModelServer with one model per spec ({name, inputs, outputs, extra})."""
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxKServeModel(kserve.Model):
        def __init__(self, spec: Dict):
            super().__init__(spec["name"])
            self.spec = spec
            self.load()

        def load(self) -> bool:
            self.scorer = OnnxScorer(self.spec["extra"])
            self.ready = True
            return self.ready

        def get_input_types(self) -> List[Dict]:
            return self.spec["inputs"]

        def get_output_types(self) -> List[Dict]:
            return self.spec["outputs"]

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            if self.scorer.delay_s:
                await asyncio.sleep(self.scorer.delay_s)
            if self.spec["extra"]["send"] == "texts":
                # (InferInput.as_string expects [n, 1]; the texts come as [n].)
                texts = [t.decode() if isinstance(t, bytes) else str(t) for t in payload.inputs[0].data]
                value = self.scorer.run_texts(texts)
            else:
                value = self.scorer.run_tokens({i.name: i.as_numpy() for i in payload.inputs})
            output = InferOutput(name=self.scorer.output, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value, binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)

    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, enable_docs_url=False)
    server.start([OnnxKServeModel(spec) for spec in models])


if __name__ == "__main__":
    # python onnx_engines.py kserve SPEC.json   (SPEC: {"http_port", "grpc_port", "models": [...]})
    if len(sys.argv) == 3 and sys.argv[1] == "kserve":
        spec = json.loads(open(sys.argv[2]).read())
        sys.argv = sys.argv[:1]
        serve_kserve(spec["http_port"], spec["grpc_port"], spec["models"])
    else:
        sys.exit("usage: onnx_engines.py kserve SPEC.json")
