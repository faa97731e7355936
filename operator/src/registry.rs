//! Validating a job whose `format: avro` inputs take their schemas from a Schema Registry: the
//! operator reads each subject as the workers will (weir_crds::registry) before it validates
//! the spec, so that an omitted schema is filled and a declared one is checked against the
//! subject, and the job is rejected with every error at once instead of failing in its Pods.
//! A registry that cannot be reached is not the spec's fault: the caller retries.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;
use weir_crds::registry::{apply_registry_schemas, schema_lookups, subject_path, SchemaLookup, SubjectSchema};
use weir_crds::{StreamJob, StreamJobSpec, ValidationErrors};

/// Why a job's spec could not be validated against its registry.
#[derive(Debug)]
pub struct Unreachable(pub String);

/// `job`'s spec, validated with its Avro inputs' schemas read from their registries (their
/// passwords from the job's Secrets). `Err` when a registry could not be asked.
pub async fn validate(client: &Client, ns: &str, job: &StreamJob) -> Result<Result<(), ValidationErrors>, Unreachable> {
    let lookups = schema_lookups(&job.spec.pipeline);
    if lookups.is_empty() {
        return Ok(weir_crds::validate_spec(&job.spec));
    }
    let mut answers = BTreeMap::new();
    for l in &lookups {
        let found = fetch(client, ns, job, l).await.map_err(|e| Unreachable(format!("{}: {e}", l.path)))?;
        answers.insert(l.path.clone(), found);
    }
    Ok(validate_with(&job.spec, &answers))
}

/// [`validate`] with the registries' answers by input path (`None`: no such subject or
/// version).
fn validate_with(
    spec: &StreamJobSpec,
    answers: &BTreeMap<String, Option<SubjectSchema>>,
) -> Result<(), ValidationErrors> {
    let mut spec = spec.clone();
    let mut errs = ValidationErrors::default();
    if let Err(e) = apply_registry_schemas(&mut spec.pipeline, |l| Ok(answers.get(&l.path).cloned().flatten())) {
        errs.0.extend(e.0);
    }
    if let Err(e) = weir_crds::validate_spec(&spec) {
        errs.0.extend(e.0);
    }
    errs.into_result()
}

/// The subject version a lookup names, from its registry's Confluent-compatible API.
async fn fetch(client: &Client, ns: &str, job: &StreamJob, l: &SchemaLookup) -> Result<Option<SubjectSchema>, String> {
    let r = &l.registry;
    let rest = r.url.strip_prefix("http://").ok_or_else(|| format!("`{}` is not an http:// URL", r.url))?;
    let (hostport, base) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    let auth = match (&r.username, &r.password) {
        (Some(user), Some(password)) => {
            let p = BTreeMap::from([("password".to_string(), password.clone())]);
            let resolved = crate::kafka::resolve(client, ns, job, &p).await?;
            format!(
                "Authorization: Basic {}\r\n",
                weir_crds::base64(format!("{user}:{}", resolved["password"]).as_bytes())
            )
        }
        _ => String::new(),
    };
    let version = l.version.map_or("latest".to_string(), |v| v.to_string());
    let path = format!("/{}/subjects/{}/versions/{version}", base.trim_matches('/'), subject_path(&l.subject));
    let path = path.replace("//", "/");
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n{auth}Accept: application/vnd.schemaregistry.v1+json\r\n\r\n"
    );
    let (status, body) = crate::workers::http_exchange(&hostport, &request, Duration::from_secs(5))
        .await
        .map_err(|e| format!("asking the registry at {}: {e}", r.url))?;
    match status {
        200 => {
            let json: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| format!("the registry at {} answered with bad JSON: {e}", r.url))?;
            match (json["version"].as_u64(), json["schema"].as_str()) {
                (Some(version), Some(schema)) => {
                    Ok(Some(SubjectSchema { version: version as u32, schema: schema.to_string() }))
                }
                _ => Err(format!("the registry at {} answered with an unexpected body: {json}", r.url)),
            }
        }
        404 => Ok(None),
        _ => Err(format!("the registry at {} answered GET {path} with {status}: {body}", r.url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schema: &str) -> StreamJobSpec {
        serde_yaml::from_str(&format!(
            r#"
pipeline:
  sources:
    p: {{kafka: {{brokers: "k:9092", topic: pay}}, format: avro, registry: {{url: "http://r:8081"}}{schema}}}
  streams:
    big: {{from: p, where: "amount > 100"}}
  sinks:
    out: {{from: big, kafka: {{brokers: "k:9092", topic: o}}}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_spec_is_validated_with_the_subjects_schema() {
        let schema = r#"{"type": "record", "name": "P", "fields": [{"name": "amount", "type": "long"}]}"#;
        let found = BTreeMap::from([(
            "spec.pipeline.sources.p".to_string(),
            Some(SubjectSchema { version: 2, schema: schema.into() }),
        )]);
        assert!(validate_with(&spec(""), &found).is_ok(), "the omitted schema is the subject's");
        let e = validate_with(&spec(", schema: {amount: string}"), &found).unwrap_err().to_string();
        assert!(
            e.contains("spec.pipeline.sources.p.schema.amount: `amount` is long in subject `pay-value` version 2"),
            "{e}"
        );
        let missing = BTreeMap::from([("spec.pipeline.sources.p".to_string(), None)]);
        let e = validate_with(&spec(""), &missing).unwrap_err().to_string();
        assert!(e.contains("the registry at http://r:8081 has no subject `pay-value`"), "{e}");
    }
}
