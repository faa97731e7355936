//! A client of the Confluent Schema Registry API (served by Confluent's registry, Apicurio
//! Registry's `ccompat` API, Karapace, Redpanda): schemas by id, a subject's versions, and
//! registering a schema under a subject. Schemas by id are cached: an id never changes meaning.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value as Json;

use weir_crds::registry::subject_path;

use super::avro::SchemaSource;
use crate::sink::http::HttpClient;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A registry at a base URL (`http://[user:password@]host:port[/path]`, e.g.
/// `http://registry:8080/apis/ccompat/v7` for Apicurio).
pub struct Registry {
    url: String,
    /// The URL's path, before the API's own paths.
    base: String,
    client: Mutex<HttpClient>,
    by_id: Mutex<HashMap<u32, Option<String>>>,
}

/// A subject's version: its schema's id, its version number and the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub id: u32,
    pub version: u32,
    pub schema: String,
}

impl Registry {
    pub fn new(url: &str) -> Result<Registry, String> {
        let mut client = HttpClient::new(url)?;
        // A registry answers in milliseconds; one that does not is asked again (see `request`).
        client.set_timeout(std::time::Duration::from_secs(10));
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let base = rest.find('/').map_or("", |i| &rest[i..]).trim_end_matches('/').to_string();
        Ok(Registry { url: url.to_string(), base, client: Mutex::new(client), by_id: Mutex::new(HashMap::new()) })
    }

    /// The registry of a manifest's `registry`, its password taken from the worker's
    /// environment (`${env:NAME}`).
    pub fn for_spec(spec: &weir_crds::RegistrySpec) -> Result<Registry, String> {
        let registry = Registry::new(&spec.url)?;
        if let (Some(user), Some(password)) = (&spec.username, &spec.password) {
            let password = match weir_crds::env_reference(password) {
                Some(name) => std::env::var(name).map_err(|_| {
                    format!("the registry password is ${{env:{name}}}, and the environment variable {name} is not set (spec.env, from a Secret)")
                })?,
                None => password.clone(),
            };
            registry.client.lock().expect("registry client").set_basic_auth(user, &password);
        }
        Ok(registry)
    }

    /// `method path` with a JSON body: the status and the answer as JSON; `Err` when the
    /// registry cannot be reached or answers with a server error.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Json), String> {
        let path = format!("{}{path}", self.base);
        let resp = self.client.lock().expect("registry client").request(method, &path, CONTENT_TYPE, body)?;
        let json = serde_json::from_slice(&resp.body).unwrap_or(Json::Null);
        if resp.status >= 500 {
            return Err(format!(
                "the schema registry at {} answered {method} {path} with {}: {}",
                self.url,
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        Ok((resp.status, json))
    }

    /// The registry's reason in an error answer.
    fn reason(json: &Json) -> String {
        json.get("message").and_then(Json::as_str).map_or_else(|| json.to_string(), str::to_string)
    }

    /// Subject `subject`'s `version` (`None`: the latest); `Ok(None)` when the registry has no
    /// such subject or version.
    pub fn version(&self, subject: &str, version: Option<u32>) -> Result<Option<Version>, String> {
        let v = version.map_or("latest".to_string(), |v| v.to_string());
        let (status, json) = self.call("GET", &format!("/subjects/{}/versions/{v}", subject_path(subject)), b"")?;
        match status {
            200 => {
                let field = |name: &str| json.get(name).and_then(Json::as_u64).and_then(|n| u32::try_from(n).ok());
                let schema = json.get("schema").and_then(Json::as_str);
                match (field("id"), field("version"), schema) {
                    (Some(id), Some(version), Some(schema)) => {
                        Ok(Some(Version { id, version, schema: schema.to_string() }))
                    }
                    _ => Err(format!("the schema registry at {} answered with an unexpected body: {json}", self.url)),
                }
            }
            404 => Ok(None),
            _ => Err(format!(
                "subject {subject} version {v}: the schema registry answered {status}: {}",
                Self::reason(&json)
            )),
        }
    }

    /// Registers `schema` (of `kind` `AVRO` or `JSON`, as text) under `subject`, or finds it
    /// there: its id. The registry refuses a schema its compatibility rule for the subject does
    /// not allow; the error gives its reason.
    pub fn register(&self, subject: &str, schema: &str, kind: &str) -> Result<u32, String> {
        let body = serde_json::json!({"schema": schema, "schemaType": kind}).to_string();
        let (status, json) =
            self.call("POST", &format!("/subjects/{}/versions", subject_path(subject)), body.as_bytes())?;
        match (status, json.get("id").and_then(Json::as_u64)) {
            (200, Some(id)) => u32::try_from(id).map_err(|_| format!("schema id {id} is out of range")),
            (409, _) => Err(format!(
                "the schema registry refused the schema for subject {subject} as incompatible with its earlier versions: {}",
                Self::reason(&json)
            )),
            _ => Err(format!(
                "registering a schema for subject {subject}: the schema registry answered {status}: {}",
                Self::reason(&json)
            )),
        }
    }
}

impl SchemaSource for Registry {
    fn schema(&self, id: u32) -> Result<Option<String>, String> {
        if let Some(known) = self.by_id.lock().expect("schemas").get(&id) {
            return Ok(known.clone());
        }
        let (status, json) = self.call("GET", &format!("/schemas/ids/{id}"), b"")?;
        let found = match status {
            200 => Some(
                json.get("schema")
                    .and_then(Json::as_str)
                    .ok_or_else(|| {
                        format!("the schema registry at {} answered schema {id} without one: {json}", self.url)
                    })?
                    .to_string(),
            ),
            404 => None,
            _ => return Err(format!("schema id {id}: the schema registry answered {status}: {}", Self::reason(&json))),
        };
        self.by_id.lock().expect("schemas").insert(id, found.clone());
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::http::tests::serve;

    fn answer(status: &str, body: &str) -> &'static str {
        Box::leak(format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_boxed_str())
    }

    #[test]
    fn answers_are_read_and_refusals_explained() {
        let addr = serve(vec![
            answer("200 OK", r#"{"subject": "p-value", "version": 3, "id": 12, "schema": "\"long\""}"#),
            answer("404 Not Found", r#"{"error_code": 40401, "message": "Subject 'x' not found."}"#),
            answer("200 OK", r#"{"schema": "\"string\""}"#),
            answer("404 Not Found", r#"{"error_code": 40403, "message": "Schema 99 not found"}"#),
            answer("200 OK", r#"{"id": 13}"#),
            answer("409 Conflict", r#"{"error_code": 409, "message": "Incompatible schema: field `a` removed"}"#),
            answer("503 Service Unavailable", "busy"),
        ]);
        let r = Registry::new(&format!("http://{addr}/apis/ccompat/v7/")).unwrap();
        assert_eq!(r.base, "/apis/ccompat/v7");
        let v = r.version("p-value", None).unwrap().unwrap();
        assert_eq!(v, Version { id: 12, version: 3, schema: "\"long\"".into() });
        assert_eq!(r.version("x", Some(2)).unwrap(), None);
        assert_eq!(r.schema(12).unwrap().as_deref(), Some("\"string\""));
        assert_eq!(r.schema(12).unwrap().as_deref(), Some("\"string\""), "cached: no second request");
        assert_eq!(r.schema(99).unwrap(), None);
        assert_eq!(r.register("p-value", "\"long\"", "AVRO").unwrap(), 13);
        let e = r.register("p-value", "\"long\"", "AVRO").unwrap_err();
        assert!(e.contains("incompatible with its earlier versions: Incompatible schema: field `a` removed"), "{e}");
        let e = r.version("p-value", None).unwrap_err();
        assert!(e.contains("answered GET /apis/ccompat/v7/subjects/p-value/versions/latest with 503: busy"), "{e}");
        assert_eq!(subject_path("a b/c-value"), "a%20b%2Fc-value");
    }

    #[test]
    fn an_unreachable_registry_is_an_error() {
        let r = Registry::new("http://127.0.0.1:1").unwrap();
        assert!(r.schema(1).unwrap_err().contains("connecting to 127.0.0.1:1"));
    }
}
