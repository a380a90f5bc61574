//! Schemas given as JSON Schema (Beam YAML's `schema:` config) mapped to Arrow.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

/// Converts a JSON Schema object (`type: object` with `properties`) to an Arrow schema.
///
/// Types: string → Utf8 (`format: date-time` → Timestamp(ms, UTC)), integer → Int64,
/// number → Float64, boolean → Boolean, array → List, object → Struct. Fields listed in
/// `required` are non-nullable, so a record missing one is an error record.
///
/// # Errors
/// A message naming the unsupported construct.
pub fn from_json_schema(schema: &Value) -> Result<SchemaRef, String> {
    let obj = schema
        .as_object()
        .ok_or("a schema must be a JSON Schema object")?;
    let fields = object_fields(obj)?;
    Ok(Arc::new(Schema::new(fields)))
}

fn object_fields(obj: &serde_json::Map<String, Value>) -> Result<Fields, String> {
    let props = obj
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("an object schema needs `properties`")?;
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, prop)| {
            let dt = data_type(prop).map_err(|e| format!("field `{name}`: {e}"))?;
            Ok(Field::new(name, dt, !required.contains(&name.as_str())))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Fields::from)
}

fn data_type(prop: &Value) -> Result<DataType, String> {
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // ["string", "null"]: nullable string.
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .ok_or("a type list needs a non-null type")?,
        _ => return Err("needs a `type`".into()),
    };
    Ok(match ty {
        "string" => match prop.get("format").and_then(Value::as_str) {
            Some("date-time") => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            _ => DataType::Utf8,
        },
        "integer" => DataType::Int64,
        "number" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "array" => {
            let items = prop.get("items").ok_or("an array needs `items`")?;
            DataType::List(Arc::new(Field::new("item", data_type(items)?, true)))
        }
        "object" => {
            let obj = prop.as_object().expect("checked: has a type key");
            DataType::Struct(object_fields(obj)?)
        }
        other => return Err(format!("unsupported JSON Schema type `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_types_and_required() {
        let s = from_json_schema(&serde_json::json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "n": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "at": {"type": "string", "format": "date-time"}
            },
            "required": ["id"]
        }))
        .unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Utf8);
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.field(1).data_type(), &DataType::Int64);
        assert!(s.field(1).is_nullable());
        assert!(matches!(s.field(2).data_type(), DataType::List(_)));
        assert!(matches!(
            s.field(3).data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, _)
        ));
        assert!(
            from_json_schema(
                &serde_json::json!({"type": "object", "properties": {"x": {"type": "blob"}}})
            )
            .is_err()
        );
    }
}
