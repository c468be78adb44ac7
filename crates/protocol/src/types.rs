//! Comfy types: which values a declared type takes, and how a value is
//! brought to its declared type.
//!
//! This is the one place the rule lives. The client checks local inputs
//! with it before anything is uploaded, the worker checks every submit with
//! it, `comfy-remote run` converts its literals with it and the Remote Input
//! node (through the native module) applies it to what a job sent, so a
//! value one of them accepts is accepted by all of them. `docs/protocol.md`
//! §1.2 states it.
//!
//! - A declared `*` takes anything; a value of type `*` (unknown) is taken
//!   by any declared type whose shape it has.
//! - Otherwise the types must be equal (Comfy type names are case-sensitive),
//!   except that a `FLOAT` takes an `INT`, widened to the float of the same
//!   value (refused when the integer has no exact binary64, beyond ±2^53).
//! - The value must have the declared type's shape ([`fits`]), and types
//!   that hold live model objects never travel.

use std::fmt;

use crate::value::{ComfyType, DType, Entry, Value};

/// Largest integer magnitude every smaller one of which is an exact binary64.
const EXACT_FLOAT_INT: i64 = 1 << 53;

/// Why a value cannot be taken by a declared type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TypeError {
    /// The value's type is another one (`actual`) than the declared.
    Mismatch { declared: String, actual: String },
    /// The value does not have the declared type's shape.
    Shape { declared: String, found: String },
    /// An integer for a `FLOAT` that no binary64 holds exactly.
    Inexact { value: i64 },
    /// A type that holds live model objects.
    Untravellable { ty: String },
}

impl fmt::Display for TypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeError::Mismatch { declared, actual } => {
                write!(f, "must be {declared} but is {actual}")
            }
            TypeError::Shape { declared, found } => {
                write!(f, "is declared {declared} but its value is not one ({found})")
            }
            TypeError::Inexact { value } => write!(
                f,
                "is the integer {value}, which a FLOAT cannot hold exactly; send it as a float"
            ),
            TypeError::Untravellable { ty } => write!(
                f,
                "is a {ty}, which holds a live model object and cannot travel; run the loader on the remote side and send file names instead"
            ),
        }
    }
}

impl std::error::Error for TypeError {}

/// Does an input declared `declared` take a value of type `actual`?
pub fn accepts(declared: &str, actual: &str) -> bool {
    declared == ComfyType::ANY
        || actual == ComfyType::ANY
        || declared == actual
        || (declared == ComfyType::FLOAT && actual == ComfyType::INT)
}

/// The entry's type: the one it declares, else the inferred one.
pub fn type_of(entry: &Entry<'_>) -> ComfyType {
    entry
        .comfy_type
        .clone()
        .unwrap_or_else(|| ComfyType::infer(&entry.value))
}

/// Does `value` have the shape its Comfy type `ty` promises? Types this
/// crate does not know (custom types, `*`) fit anything.
pub fn fits(ty: &str, value: &Value<'_>) -> bool {
    let float_tensor = |v: &Value<'_>, ranks: &[usize]| {
        matches!(v, Value::Tensor(t) if ranks.contains(&t.shape.len())
            && matches!(t.dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64))
    };
    match ty {
        ComfyType::IMAGE => float_tensor(value, &[4]),
        ComfyType::MASK => float_tensor(value, &[2, 3]),
        ComfyType::LATENT => {
            matches!(value.get("samples"), Some(Value::Tensor(t)) if t.shape.len() >= 3)
        }
        ComfyType::AUDIO => {
            matches!(value.get("waveform"), Some(Value::Tensor(t)) if t.shape.len() == 3)
                && matches!(value.get("sample_rate"), Some(Value::Int(r)) if *r > 0)
        }
        ComfyType::STRING => matches!(value, Value::Str(_)),
        ComfyType::INT => matches!(value, Value::Int(_)),
        ComfyType::FLOAT => matches!(value, Value::Float(_) | Value::Int(_)),
        ComfyType::BOOLEAN => matches!(value, Value::Bool(_)),
        _ => true,
    }
}

/// A few words for a value in an error message (`a F32 tensor of shape [1, 8]`).
pub fn describe(value: &Value<'_>) -> String {
    match value {
        Value::Tensor(t) => format!("a {} tensor of shape {:?}", t.dtype, t.shape),
        Value::Str(_) => "a string".into(),
        Value::Int(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Dict(items) => format!(
            "a dict with keys {:?}",
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
        ),
        Value::List(_) => "a list".into(),
        Value::Tuple(_) => "a tuple".into(),
        Value::None => "None".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Pickle { .. } => "a pickle".into(),
    }
}

/// Check that an input declared `declared` takes `entry` (see the module
/// docs). Does not change anything; [`conform`] also widens.
pub fn check(declared: &str, entry: &Entry<'_>) -> Result<(), TypeError> {
    let actual = type_of(entry);
    if let Some(ty) = ComfyType::UNTRAVELLABLE
        .iter()
        .find(|t| **t == actual.as_str() || **t == declared)
    {
        return Err(TypeError::Untravellable {
            ty: (*ty).to_owned(),
        });
    }
    if !accepts(declared, actual.as_str()) {
        return Err(TypeError::Mismatch {
            declared: declared.to_owned(),
            actual: actual.0,
        });
    }
    // The shape the value must have: the declared type's, unless that is
    // `*`, then the one the sender declared.
    let shape_of = if declared == ComfyType::ANY {
        actual.as_str()
    } else {
        declared
    };
    if !fits(shape_of, &entry.value) {
        return Err(TypeError::Shape {
            declared: shape_of.to_owned(),
            found: describe(&entry.value),
        });
    }
    if declared == ComfyType::FLOAT {
        if let Value::Int(i) = entry.value {
            if !(-EXACT_FLOAT_INT..=EXACT_FLOAT_INT).contains(&i) {
                return Err(TypeError::Inexact { value: i });
            }
        }
    }
    Ok(())
}

/// [`check`], then bring the entry to the declared type: an `INT` for a
/// `FLOAT` becomes the float of the same value, and the entry carries the
/// declared type (unless that is `*`).
pub fn conform<'a>(declared: &str, mut entry: Entry<'a>) -> Result<Entry<'a>, TypeError> {
    check(declared, &entry)?;
    if declared == ComfyType::FLOAT {
        if let Value::Int(i) = entry.value {
            // Exact: `check` bounded it by 2^53.
            entry.value = Value::Float(i as f64);
        }
    }
    if declared != ComfyType::ANY {
        entry.comfy_type = Some(ComfyType::new(declared));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Tensor;

    fn entry(ty: Option<&str>, value: Value<'static>) -> Entry<'static> {
        Entry {
            name: "x".into(),
            comfy_type: ty.map(ComfyType::new),
            value,
        }
    }

    fn image() -> Value<'static> {
        Value::Tensor(Tensor::new(DType::F32, vec![1, 1, 1, 3], vec![0u8; 12]).expect("tensor"))
    }

    #[test]
    fn any_takes_everything_and_unknown_values_are_taken_by_shape() {
        assert!(accepts("*", "IMAGE"));
        assert!(accepts("IMAGE", "*"));
        assert!(!accepts("IMAGE", "image"), "type names are case-sensitive");
        check("IMAGE", &entry(Some("*"), image())).expect("a `*` image is an IMAGE");
        let e = check("IMAGE", &entry(Some("*"), Value::Int(3))).expect_err("not an image");
        assert!(matches!(e, TypeError::Shape { .. }), "{e}");
    }

    #[test]
    fn a_float_takes_an_int_widened_exactly() {
        let e = conform("FLOAT", entry(None, Value::Int(2))).expect("int for float");
        assert_eq!(e.value, Value::Float(2.0));
        assert_eq!(e.comfy_type, Some(ComfyType::new("FLOAT")));
        conform("FLOAT", entry(None, Value::Int(1 << 53))).expect("2^53 is exact");
        let e = conform("FLOAT", entry(None, Value::Int((1 << 53) + 1))).expect_err("inexact");
        assert_eq!(
            e,
            TypeError::Inexact {
                value: (1 << 53) + 1
            }
        );
        // Not the other way round.
        let e = check("INT", &entry(None, Value::Float(2.0))).expect_err("float for int");
        assert_eq!(e.to_string(), "must be INT but is FLOAT");
    }

    #[test]
    fn shapes_and_live_models_are_checked() {
        let flat = Value::Tensor(Tensor::new(DType::F32, vec![3], vec![0u8; 12]).expect("t"));
        let e = check("IMAGE", &entry(Some("IMAGE"), flat)).expect_err("rank 1");
        assert!(e.to_string().contains("shape [3]"), "{e}");
        let e = check("*", &entry(Some("MODEL"), Value::None)).expect_err("model");
        assert!(matches!(e, TypeError::Untravellable { .. }));
        check("*", &entry(None, Value::List(vec![]))).expect("a list for *");
        check("MY_CUSTOM", &entry(Some("MY_CUSTOM"), Value::None)).expect("custom types");
    }
}
