//! Column text (and binary) -> typed [`Value`] by type OID.
//!
//! SKELETON: the value helper replaces the bodies; the signatures are the contract the decoder
//! and the pipeline are written against.

use std::collections::HashMap;

use crate::event::Value;

/// What walwatch knows about a type that is not built in: looked up once on the metadata
/// connection (pg_type), because pgoutput's Type message names a type but does not say what it
/// is built on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// A domain over `base` (itself possibly a user type).
    Domain { base: u32 },
    /// An enum: values are their label text.
    Enum,
    /// An array of `elem`, with the element type's array delimiter (`,` for all but `box`).
    Array { elem: u32, delim: u8 },
    /// Anything else (composite, range, extension types): kept as text.
    Other,
}

/// Non-built-in types by OID. Built-in OIDs are known without it.
#[derive(Clone, Debug, Default)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeKind>,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, oid: u32, kind: TypeKind) {
        self.types.insert(oid, kind);
    }

    pub fn get(&self, oid: u32) -> Option<&TypeKind> {
        self.types.get(&oid)
    }

    /// Decode a column sent in text format (`t`). Never fails: text that does not parse as its
    /// type is kept as [`Value::Other`].
    pub fn parse_text(&self, _type_oid: u32, text: &str) -> Value {
        Value::Other(text.to_string())
    }

    /// Decode a column sent in binary format (`b`, only when the `binary` option is on).
    pub fn parse_binary(&self, _type_oid: u32, bytes: &[u8]) -> Value {
        Value::Bytea(bytes.to_vec())
    }
}
