//! Reading a StreamJob manifest from YAML outside Kubernetes (`weir-worker run -f`), with
//! parse errors that name the field path, followed by the full semantic validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{validate_spec, StreamJobSpec, ValidationErrors};

/// A StreamJob manifest as a file holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ManifestMeta,
    pub spec: StreamJobSpec,
}

fn api_version() -> String {
    "weir.dev/v1alpha1".into()
}

fn kind() -> String {
    "StreamJob".into()
}

/// The metadata a local run uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid YAML for a StreamJob: at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(ValidationErrors),
}

impl Manifest {
    /// Parses and validates a manifest; `default_name` is used when metadata.name is absent.
    pub fn from_yaml(text: &str, default_name: &str) -> Result<Manifest, ManifestError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            ManifestError::Parse { path: if path == "." { "(top)".into() } else { path }, message }
        })?;
        let mut errs = ValidationErrors::default();
        if m.kind != "StreamJob" {
            errs.push("kind", format!("`{}` is not StreamJob", m.kind));
        }
        if m.api_version != "weir.dev/v1alpha1" {
            errs.push("apiVersion", format!("`{}` is not weir.dev/v1alpha1", m.api_version));
        }
        if m.metadata.name.is_empty() {
            m.metadata.name = default_name.to_string();
        }
        if let Err(e) = validate_spec(&m.spec) {
            errs.0.extend(e.0);
        }
        errs.into_result().map_err(ManifestError::Invalid)?;
        Ok(m)
    }
}
