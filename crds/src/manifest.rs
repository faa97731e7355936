//! Reading a StreamJob manifest from YAML outside Kubernetes (`weir-worker run -f`), with
//! parse errors that name the field path, followed by the full semantic validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::registry::{apply_registry_schemas, SchemaLookup, SubjectSchema};
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

/// How a registry subject's schema is read.
type Fetch<'a> = dyn FnMut(&SchemaLookup) -> Result<Option<SubjectSchema>, String> + 'a;

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
    /// `format: avro` inputs must declare their schemas: nothing asks a registry.
    pub fn from_yaml(text: &str, default_name: &str) -> Result<Manifest, ManifestError> {
        Self::read(text, default_name, None)
    }

    /// Parses a manifest, takes the schemas of its `format: avro` inputs from their registry
    /// subjects through `fetch` (see [`crate::registry`]), and validates it.
    pub fn from_yaml_with_registry(
        text: &str,
        default_name: &str,
        mut fetch: impl FnMut(&SchemaLookup) -> Result<Option<SubjectSchema>, String>,
    ) -> Result<Manifest, ManifestError> {
        Self::read(text, default_name, Some(&mut fetch))
    }

    /// Parses a manifest without validating its spec: the manifest, and the errors of its
    /// `kind` and `apiVersion` (for a caller that validates the spec itself, all at once).
    pub fn parse(text: &str, default_name: &str) -> Result<(Manifest, ValidationErrors), ManifestError> {
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
        Ok((m, errs))
    }

    fn read(text: &str, default_name: &str, fetch: Option<&mut Fetch>) -> Result<Manifest, ManifestError> {
        let (mut m, mut errs) = Self::parse(text, default_name)?;
        if let Some(fetch) = fetch {
            if let Err(e) = apply_registry_schemas(&mut m.spec.pipeline, fetch) {
                errs.0.extend(e.0);
            }
        }
        if let Err(e) = validate_spec(&m.spec) {
            errs.0.extend(e.0);
        }
        errs.into_result().map_err(ManifestError::Invalid)?;
        Ok(m)
    }
}
