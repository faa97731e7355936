//! Avro schemas as the pipeline sees them: parsed (named, nested and recursive types,
//! namespaces, aliases, defaults, logical types) into an arena of types, and the root record's
//! fields that a column can hold with their engine types. A `format: avro` source whose
//! `schema` is omitted takes its fields from its registry subject's schema this way, and a
//! declared schema is checked against it (`crate::registry`). Decoding lives in the worker.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::FieldType;

/// A parsed Avro schema. Its types live in an arena so that named types can be referred to
/// (and recursive ones skipped).
#[derive(Clone, Debug)]
pub struct AvroSchema {
    pub types: Vec<Type>,
    pub root: usize,
}

/// One type of a schema; other types are referred to by their index in the arena.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    Null,
    Boolean,
    Int(IntKind),
    Long(LongKind),
    Float,
    Double,
    Bytes,
    String,
    Record { name: String, fields: Vec<Field> },
    Enum { name: String, symbols: Vec<String> },
    Array(usize),
    Map(usize),
    Fixed { name: String, size: usize },
    Union(Vec<usize>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IntKind {
    Plain,
    /// Days since the epoch.
    Date,
    TimeMillis,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LongKind {
    Plain,
    TimeMicros,
    /// Since the epoch, in this many units a millisecond (1, 1000, 1000000).
    Timestamp(i64),
}

/// A record's field.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub aliases: Vec<String>,
    pub ty: usize,
    pub default: Option<Json>,
}

/// How deep nested types may go while skipping or parsing (a recursive schema's records nest as
/// deep as their data).
pub const MAX_DEPTH: usize = 64;

struct Parser {
    types: Vec<Type>,
    /// Full name of each named type to its index.
    names: HashMap<String, usize>,
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

impl Parser {
    fn push(&mut self, t: Type) -> usize {
        self.types.push(t);
        self.types.len() - 1
    }

    fn parse(&mut self, j: &Json, namespace: &str, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("types nest deeper than {MAX_DEPTH}"));
        }
        match j {
            Json::String(name) => self.named_or_primitive(name, None, namespace),
            Json::Array(branches) => {
                let mut ids = Vec::with_capacity(branches.len());
                for b in branches {
                    let id = self.parse(b, namespace, depth + 1)?;
                    if matches!(self.types[id], Type::Union(_)) {
                        return Err("a union directly inside a union".into());
                    }
                    ids.push(id);
                }
                Ok(self.push(Type::Union(ids)))
            }
            Json::Object(o) => {
                let ty = o.get("type").ok_or("a schema object without `type`")?;
                let Json::String(kind) = ty else { return self.parse(ty, namespace, depth + 1) };
                let logical = o.get("logicalType").and_then(Json::as_str);
                match kind.as_str() {
                    "record" | "error" => self.record(o, namespace, depth),
                    "enum" => {
                        let (name, _) = self.name_of(o, namespace)?;
                        let symbols = o
                            .get("symbols")
                            .and_then(Json::as_array)
                            .ok_or_else(|| format!("enum {name} has no `symbols`"))?
                            .iter()
                            .map(|s| {
                                s.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| format!("enum {name}: a symbol that is not a string"))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        self.define(name.clone(), Type::Enum { name, symbols })
                    }
                    "array" => {
                        let items =
                            self.parse(o.get("items").ok_or("an array without `items`")?, namespace, depth + 1)?;
                        Ok(self.push(Type::Array(items)))
                    }
                    "map" => {
                        let values =
                            self.parse(o.get("values").ok_or("a map without `values`")?, namespace, depth + 1)?;
                        Ok(self.push(Type::Map(values)))
                    }
                    "fixed" => {
                        let (name, _) = self.name_of(o, namespace)?;
                        let size =
                            o.get("size").and_then(Json::as_u64).ok_or_else(|| format!("fixed {name} has no `size`"))?
                                as usize;
                        self.define(name.clone(), Type::Fixed { name, size })
                    }
                    primitive => self.named_or_primitive(primitive, logical, namespace),
                }
            }
            other => Err(format!("`{other}` is not a schema")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, logical: Option<&str>, namespace: &str) -> Result<usize, String> {
        let t = match (name, logical) {
            ("null", _) => Type::Null,
            ("boolean", _) => Type::Boolean,
            ("int", Some("date")) => Type::Int(IntKind::Date),
            ("int", Some("time-millis")) => Type::Int(IntKind::TimeMillis),
            ("int", _) => Type::Int(IntKind::Plain),
            ("long", Some("timestamp-millis" | "local-timestamp-millis")) => Type::Long(LongKind::Timestamp(1)),
            ("long", Some("timestamp-micros" | "local-timestamp-micros")) => Type::Long(LongKind::Timestamp(1_000)),
            ("long", Some("timestamp-nanos" | "local-timestamp-nanos")) => Type::Long(LongKind::Timestamp(1_000_000)),
            ("long", Some("time-micros")) => Type::Long(LongKind::TimeMicros),
            ("long", _) => Type::Long(LongKind::Plain),
            ("float", _) => Type::Float,
            ("double", _) => Type::Double,
            ("bytes", _) => Type::Bytes,
            ("string", _) => Type::String,
            _ => {
                let found = self.names.get(&full_name(name, namespace)).or_else(|| self.names.get(name));
                return found.copied().ok_or_else(|| format!("unknown type `{name}`"));
            }
        };
        Ok(self.push(t))
    }

    /// The full name of a named type and the namespace its members are in.
    fn name_of(&self, o: &serde_json::Map<String, Json>, namespace: &str) -> Result<(String, String), String> {
        let name = o.get("name").and_then(Json::as_str).ok_or("a named type without `name`")?;
        let ns = o.get("namespace").and_then(Json::as_str).unwrap_or(namespace);
        let full = full_name(name, ns);
        let inner = full.rsplit_once('.').map_or(String::new(), |(ns, _)| ns.to_string());
        Ok((full, inner))
    }

    fn define(&mut self, name: String, t: Type) -> Result<usize, String> {
        if self.names.contains_key(&name) {
            return Err(format!("type {name} is defined twice"));
        }
        let id = self.push(t);
        self.names.insert(name, id);
        Ok(id)
    }

    fn record(&mut self, o: &serde_json::Map<String, Json>, namespace: &str, depth: usize) -> Result<usize, String> {
        let (name, inner) = self.name_of(o, namespace)?;
        // Defined before its fields, which may refer to it.
        let id = self.define(name.clone(), Type::Record { name: name.clone(), fields: Vec::new() })?;
        let listed =
            o.get("fields").and_then(Json::as_array).ok_or_else(|| format!("record {name} has no `fields`"))?;
        let mut fields = Vec::with_capacity(listed.len());
        for f in listed {
            let fname =
                f.get("name").and_then(Json::as_str).ok_or_else(|| format!("record {name}: a field without `name`"))?;
            if fields.iter().any(|x: &Field| x.name == fname) {
                return Err(format!("record {name}: field `{fname}` twice"));
            }
            let ty = f.get("type").ok_or_else(|| format!("record {name}: field `{fname}` has no `type`"))?;
            let ty = self.parse(ty, &inner, depth + 1).map_err(|e| format!("record {name}, field `{fname}`: {e}"))?;
            let aliases = f
                .get("aliases")
                .and_then(Json::as_array)
                .map_or(Vec::new(), |a| a.iter().filter_map(Json::as_str).map(str::to_string).collect());
            fields.push(Field { name: fname.to_string(), aliases, ty, default: f.get("default").cloned() });
        }
        self.types[id] = Type::Record { name, fields };
        Ok(id)
    }
}

impl AvroSchema {
    /// Parses a schema from its JSON text (as the registry holds it).
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let json: Json = serde_json::from_str(text).map_err(|e| format!("not a schema: {e}"))?;
        let mut p = Parser { types: Vec::new(), names: HashMap::new() };
        let root = p.parse(&json, "", 0)?;
        Ok(AvroSchema { types: p.types, root })
    }

    /// The root record's fields; an error when the root is not a record.
    pub fn record_fields(&self) -> Result<&[Field], String> {
        match &self.types[self.root] {
            Type::Record { fields, .. } => Ok(fields),
            other => Err(format!("the schema is {}, not a record", self.describe_type(other))),
        }
    }

    /// The engine's type of an Avro type, and whether it may be null; `None` when no column
    /// can hold it (records, arrays, maps, bytes, fixed, unions of several non-null types).
    pub fn engine_type(&self, id: usize) -> Option<(FieldType, bool)> {
        Some(match &self.types[id] {
            Type::Boolean => (FieldType::Boolean, false),
            Type::Int(IntKind::Date) | Type::Long(LongKind::Timestamp(_)) => (FieldType::Timestamp, false),
            Type::Int(_) | Type::Long(_) => (FieldType::Long, false),
            Type::Float | Type::Double => (FieldType::Double, false),
            Type::String | Type::Enum { .. } => (FieldType::String, false),
            Type::Union(branches) => {
                let mut others = branches.iter().filter(|&&b| self.types[b] != Type::Null);
                let (Some(&one), None) = (others.next(), others.next()) else { return None };
                (self.engine_type(one)?.0, branches.len() > 1)
            }
            _ => return None,
        })
    }

    /// The root record's fields that a column can hold, with their engine types: the pipeline's
    /// schema when it names a registry subject instead of declaring one. The others (nested
    /// records, arrays, maps, bytes) are left out.
    pub fn engine_fields(&self) -> Result<Vec<(String, FieldType)>, String> {
        Ok(self.record_fields()?.iter().filter_map(|f| Some((f.name.clone(), self.engine_type(f.ty)?.0))).collect())
    }

    /// Type `id` in words, for messages.
    pub fn describe(&self, id: usize) -> String {
        self.describe_type(&self.types[id])
    }

    pub fn describe_type(&self, t: &Type) -> String {
        match t {
            Type::Null => "null".into(),
            Type::Boolean => "boolean".into(),
            Type::Int(IntKind::Date) => "a date".into(),
            Type::Int(_) => "int".into(),
            Type::Long(LongKind::Timestamp(_)) => "a timestamp".into(),
            Type::Long(_) => "long".into(),
            Type::Float => "float".into(),
            Type::Double => "double".into(),
            Type::Bytes => "bytes".into(),
            Type::String => "string".into(),
            Type::Record { name, .. } => format!("record {name}"),
            Type::Enum { name, .. } => format!("enum {name}"),
            Type::Array(_) => "an array".into(),
            Type::Map(_) => "a map".into(),
            Type::Fixed { name, .. } => format!("fixed {name}"),
            Type::Union(bs) => {
                let names: Vec<String> = bs.iter().map(|&b| self.describe(b)).collect();
                format!("a union of {}", names.join(", "))
            }
        }
    }
}

/// An engine type as the manifest spells it.
pub fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "string",
        FieldType::Long => "long",
        FieldType::Double => "double",
        FieldType::Boolean => "boolean",
        FieldType::Timestamp => "timestamp",
    }
}
