//! JSON Schemas as the pipeline sees them: the root object's properties that a column can hold,
//! with their engine types, for a `format: json-schema` input whose `schema` comes from its
//! registry subject; and the JSON Schema of rows a `format: json-schema` sink registers.

use serde_json::{json, Map, Value as Json};

use crate::FieldType;

/// The engine type of a property's schema, and whether it may be null; `None` when no column
/// can hold it (objects, arrays, references, several non-null types).
fn engine_type(p: &Json) -> Option<(FieldType, bool)> {
    let format = p.get("format").and_then(Json::as_str);
    let one = |t: &str| match (t, format) {
        ("string", Some("date-time")) => Some(FieldType::Timestamp),
        ("string", _) => Some(FieldType::String),
        ("integer", _) => Some(FieldType::Long),
        ("number", _) => Some(FieldType::Double),
        ("boolean", _) => Some(FieldType::Boolean),
        _ => None,
    };
    match p.get("type") {
        Some(Json::String(t)) => Some((one(t)?, false)),
        Some(Json::Array(ts)) => {
            let mut others = ts.iter().filter_map(Json::as_str).filter(|t| *t != "null");
            let (Some(t), None) = (others.next(), others.next()) else { return None };
            Some((one(t)?, ts.len() > 1))
        }
        _ => {
            // `oneOf`/`anyOf` of null and one type, as some generators write an optional field.
            let branches = p.get("oneOf").or_else(|| p.get("anyOf"))?.as_array()?;
            let mut others = branches.iter().filter(|b| b.get("type").and_then(Json::as_str) != Some("null"));
            let (Some(b), None) = (others.next(), others.next()) else { return None };
            Some((engine_type(b)?.0, true))
        }
    }
}

/// The root object's properties that a column can hold, in the schema's order, with their
/// engine types (`string` with `format: date-time` is a timestamp; `integer` a long; `number`
/// a double); the others are left out.
pub fn json_schema_fields(text: &str) -> Result<Vec<(String, FieldType)>, String> {
    let schema: Json = serde_json::from_str(text).map_err(|e| format!("not a JSON Schema: {e}"))?;
    let is_object = schema.get("type").and_then(Json::as_str) == Some("object") || schema.get("properties").is_some();
    if !is_object {
        return Err("the JSON Schema is not of an object".into());
    }
    let props = schema.get("properties").and_then(Json::as_object).cloned().unwrap_or_default();
    Ok(props.iter().filter_map(|(n, p)| Some((n.clone(), engine_type(p)?.0))).collect())
}

/// The JSON Schema (text) of rows of `fields` as a sink writes them (JSON objects, nulls left
/// out, timestamps as epoch milliseconds): an object titled `title` whose every property is
/// optional and may be null, and that allows more (so that fields can be added and removed
/// compatibly).
pub fn json_schema_for(title: &str, fields: &[(String, FieldType)]) -> String {
    let mut props = Map::new();
    for (name, t) in fields {
        let ty = match t {
            FieldType::String => "string",
            FieldType::Long | FieldType::Timestamp => "integer",
            FieldType::Double => "number",
            FieldType::Boolean => "boolean",
        };
        props.insert(name.clone(), json!({"type": ["null", ty]}));
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": title,
        "type": "object",
        "properties": props,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_map_to_engine_types_and_the_rest_is_left_out() {
        let schema = r#"{"type": "object", "properties": {
            "id": {"type": "string"},
            "amount": {"type": "number"},
            "n": {"type": ["null", "integer"]},
            "ok": {"type": "boolean"},
            "ts": {"type": "string", "format": "date-time"},
            "merchant": {"oneOf": [{"type": "null"}, {"type": "string"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {"type": "object"},
            "either": {"type": ["string", "integer"]}}}"#;
        let got = json_schema_fields(schema).unwrap();
        let want = [
            ("amount", FieldType::Double),
            ("id", FieldType::String),
            ("merchant", FieldType::String),
            ("n", FieldType::Long),
            ("ok", FieldType::Boolean),
            ("ts", FieldType::Timestamp),
        ];
        let mut got: Vec<(&str, FieldType)> = got.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        got.sort_by_key(|(n, _)| *n);
        assert_eq!(got, want);
        assert!(json_schema_fields(r#"{"type": "string"}"#).unwrap_err().contains("not of an object"));
        assert!(json_schema_fields("{").unwrap_err().contains("not a JSON Schema"));
    }

    #[test]
    fn derived_schemas_hold_every_field_as_optional() {
        let text = json_schema_for(
            "weir.out.Row",
            &[("card_id".into(), FieldType::String), ("window_start".into(), FieldType::Timestamp)],
        );
        let v: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(v["title"], "weir.out.Row");
        assert_eq!(v["properties"]["window_start"]["type"], json!(["null", "integer"]));
        assert!(v.get("required").is_none() && v.get("additionalProperties").is_none());
        let back = json_schema_fields(&text).unwrap();
        assert_eq!(back[0], ("card_id".to_string(), FieldType::String));
    }
}
