//! ONNX Runtime, loaded once per process from a shared library (ort's `load-dynamic`).
//!
//! The library path is `ORT_DYLIB_PATH` (set for cargo by `.cargo/config.toml`), else
//! `.ort/lib/libonnxruntime.so` under the working directory, where
//! `scripts/fetch-onnxruntime.sh` puts it.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;

use super::ModelError;

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Where the ONNX Runtime library is looked for.
pub fn library_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".ort/lib/libonnxruntime.so"))
}

/// The process-wide ONNX Runtime environment, loading the library on first call.
pub fn environment() -> Result<&'static Environment, ModelError> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let path = library_path();
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(ModelError::RuntimeMissing { path: shown });
    }
    let environment = ort::init_from(&path)
        .map_err(|e| ModelError::RuntimeInit {
            path: shown.clone(),
            reason: e.to_string(),
        })?
        .with_name("laser-router")
        .build()
        .map_err(|e| ModelError::RuntimeInit {
            path: shown,
            reason: e.to_string(),
        })?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}
