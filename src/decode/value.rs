//! Column text (and binary) -> typed [`Value`] by type OID.
//!
//! pgoutput sends each column as the type's output text (`t`), or, with the `binary` option, as
//! the type's send format (`b`). The event contract (ARCHITECTURE.md "Types") wants typed JSON, so
//! this module maps a type OID to a [`Value`] variant and checks that the text really has that
//! type's shape; anything that does not parse is kept as [`Value::Other`] with the server's text,
//! so a surprise never loses data and never panics.
//!
//! Text parsing relies on the session settings walwatch pins in its startup packet
//! (`DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC`, `extra_float_digits=3`): with those
//! the output of every built-in type is fixed and can be parsed with byte scanning, no regexes.
//!
//! Built-in OIDs (below 16384, fixed by `pg_type.dat`) are known here without any lookup. Types a
//! user created (domains, enums, their arrays, extension types) are described by a
//! [`TypeRegistry`] filled from [`TYPE_QUERY`] on the metadata connection.
//!
//! Mapping decisions the rest of walwatch relies on:
//! * inet, cidr, macaddr, macaddr8, money, xml and enums are [`Value::Text`] (known text-like);
//!   an OID that is neither built in here nor in the registry is [`Value::Other`].
//! * Temporal types keep the server's digits (fractional seconds trimmed as the server trims them)
//!   and only change the separators to ISO-8601: `T` between date and time, `Z` for UTC, `+HH:MM`
//!   offsets. Years are ISO-8601 expanded years: 1 BC is `0000`, 44 BC is `-0043`
//!   (`-0043-03-15T03:00:00Z`), years after 9999 have a `+` (`+10000-01-01`); see
//!   `value/temporal.rs`. `infinity` / `-infinity` are kept as those words.
//! * float4 is read through its shortest decimal, so `1.1` stays `1.1` in JSON (not
//!   `1.100000023841858`), in text and in binary.
//! * Registry types of kind [`TypeKind::Other`] (composites, ranges, extension base types) are
//!   [`Value::Other`] with the server's text.
//! * The binary path formats exactly the strings the text path produces for the same value;
//!   types it has no decoder for (money, geometric, ranges, ...) become [`Value::Other`] holding
//!   `\x` + hex of the bytes.

mod array;
mod binary;
mod scalar;
pub(crate) mod temporal;

use crate::event::{ColumnKind, Value};

/// The query the metadata connection runs to fill a [`TypeRegistry`] (one row per type, fed to
/// [`TypeRegistry::insert_row`]).
///
/// Columns: `oid` (oid), `typtype` (text: `b` base, `c` composite, `d` domain, `e` enum,
/// `m` multirange, `p` pseudo, `r` range), `typbasetype` (oid, the domain's base, else 0),
/// `elem` (oid, the element type when this is an array type, else 0) and `delim` (text, the
/// element type's array delimiter, `,` for all but `box`). Each is cast to the type it is read
/// as (`oid` as `u32`, `text` as `String`; `typtype` and `typdelim` are `"char"` in pg_type),
/// so that a catalog change between server versions cannot change what the query returns.
///
/// It lists every type a built-in OID table cannot know: user and extension types
/// (`oid >= 16384`, `FirstNormalObjectId`), every domain and enum (information_schema's domains
/// are below 16384), and every true array type, i.e. one that is some type's `typarray`. Arrays of
/// built-in types are included too (a few dozen rows), so arrays of built-ins walwatch does not
/// list itself (`_box`, `_point`, ...) still decode as arrays. Selecting arrays by `typarray`
/// rather than by `typelem <> 0` keeps out `int2vector`/`oidvector`/`name`, which have an element
/// type but are not printed with array syntax.
pub const TYPE_QUERY: &str = "\
SELECT t.oid::oid, t.typtype::text AS typtype, t.typbasetype::oid, \
COALESCE(e.oid, 0::oid)::oid AS elem, COALESCE(e.typdelim::text, ',')::text AS delim \
FROM pg_catalog.pg_type t \
LEFT JOIN pg_catalog.pg_type e ON e.typarray = t.oid \
WHERE t.oid >= 16384 OR t.typtype IN ('d', 'e') OR e.oid IS NOT NULL";

/// How deep domain chains, array-of-domain-over-array nesting and registry cycles may go before a
/// value is given up as [`Value::Other`]. Real schemas need a handful of hops.
const MAX_DEPTH: u8 = 16;

/// What walwatch knows about a type that is not built in: looked up once on the metadata
/// connection (pg_type), because pgoutput's Type message names a type but does not say what it
/// is built on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    types: super::OidMap<TypeKind>,
}

impl FromIterator<(u32, TypeKind)> for TypeRegistry {
    fn from_iter<I: IntoIterator<Item = (u32, TypeKind)>>(iter: I) -> Self {
        TypeRegistry {
            types: iter.into_iter().collect(),
        }
    }
}

/// The built-in scalar types walwatch maps, by what their values become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Builtin {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, xml: the same bytes in text and binary.
    Text,
    /// `"char"`: one byte on the wire in binary.
    Char,
    Bytea,
    Uuid,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Inet,
    Macaddr,
    Macaddr8,
    Money,
}

/// The built-in scalar type with this OID (pg_type.dat).
fn builtin(oid: u32) -> Option<Builtin> {
    use Builtin::*;
    Some(match oid {
        16 => Bool,
        17 => Bytea,
        18 => Char,
        19 | 25 | 142 | 1042 | 1043 => Text,
        20 => Int8,
        21 => Int2,
        23 => Int4,
        26 => Oid,
        114 => Json,
        650 | 869 => Inet,
        700 => Float4,
        701 => Float8,
        774 => Macaddr8,
        790 => Money,
        829 => Macaddr,
        1082 => Date,
        1083 => Time,
        1114 => Timestamp,
        1184 => TimestampTz,
        1186 => Interval,
        1266 => TimeTz,
        1700 => Numeric,
        2950 => Uuid,
        3802 => Jsonb,
        _ => return None,
    })
}

/// The element type and delimiter of a built-in array type (pg_type.dat `typarray` of each
/// element type; checked against `pg_type` of PostgreSQL 15). `_box` (1020) is here for its `;`
/// delimiter; its elements are [`Value::Other`].
fn builtin_array(oid: u32) -> Option<(u32, u8)> {
    let elem = match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1028 => 26,
        1040 => 829,
        1041 => 869,
        651 => 650,
        775 => 774,
        791 => 790,
        143 => 142,
        199 => 114,
        3807 => 3802,
        2951 => 2950,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1231 => 1700,
        1020 => return Some((603, b';')),
        _ => return None,
    };
    Some((elem, b','))
}

/// How to decode one OID after resolving domains.
enum Resolved {
    Builtin(Builtin),
    Array { elem: u32, delim: u8 },
    Enum,
    Unknown,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, oid: u32, kind: TypeKind) {
        self.types.insert(oid, kind);
    }

    /// Record one row of [`TYPE_QUERY`]: `oid`, `typtype`, `typbasetype`, `elem`, `delim`.
    /// An array (`elem != 0`) wins over its typtype; a delimiter that is not one ASCII byte is
    /// read as `,`.
    pub fn insert_row(&mut self, oid: u32, typtype: &str, basetype: u32, elem: u32, delim: &str) {
        let kind = if elem != 0 {
            let delim = match delim.as_bytes() {
                [d] if d.is_ascii() => *d,
                _ => b',',
            };
            TypeKind::Array { elem, delim }
        } else {
            match typtype {
                "d" if basetype != 0 => TypeKind::Domain { base: basetype },
                "e" => TypeKind::Enum,
                _ => TypeKind::Other,
            }
        };
        self.insert(oid, kind);
    }

    pub fn get(&self, oid: u32) -> Option<&TypeKind> {
        self.types.get(&oid)
    }

    /// Every type it knows, by OID (a stable order, for raw recordings).
    pub fn entries(&self) -> Vec<(u32, TypeKind)> {
        let mut all: Vec<_> = self.types.iter().map(|(o, k)| (*o, k.clone())).collect();
        all.sort_by_key(|(oid, _)| *oid);
        all
    }

    /// The types users and extensions created (`oid >= 16384`, FirstNormalObjectId): the ones
    /// that can be dropped, and so the ones worth remembering.
    pub fn user_types(&self) -> impl Iterator<Item = (u32, &TypeKind)> {
        self.types
            .iter()
            .filter(|(oid, _)| **oid >= 16_384)
            .map(|(oid, kind)| (*oid, kind))
    }

    /// Built-in tables first (the hot path never hashes), then the registry, following domains
    /// at most [`MAX_DEPTH`] hops.
    fn resolve(&self, mut oid: u32) -> Resolved {
        for _ in 0..MAX_DEPTH {
            if let Some(b) = builtin(oid) {
                return Resolved::Builtin(b);
            }
            if let Some((elem, delim)) = builtin_array(oid) {
                return Resolved::Array { elem, delim };
            }
            match self.types.get(&oid) {
                Some(TypeKind::Domain { base }) => oid = *base,
                Some(TypeKind::Enum) => return Resolved::Enum,
                Some(TypeKind::Array { elem, delim }) => {
                    return Resolved::Array {
                        elem: *elem,
                        delim: *delim,
                    };
                }
                Some(TypeKind::Other) | None => return Resolved::Unknown,
            }
        }
        Resolved::Unknown
    }

    /// What a column of this type is, domains resolved: what typed sinks build their schema
    /// from.
    pub fn kind_of(&self, oid: u32) -> ColumnKind {
        self.kind_at(oid, 0)
    }

    fn kind_at(&self, oid: u32, depth: u8) -> ColumnKind {
        match self.resolve(oid) {
            Resolved::Builtin(b) => match b {
                Builtin::Bool => ColumnKind::Bool,
                Builtin::Int2 => ColumnKind::Int2,
                Builtin::Int4 => ColumnKind::Int4,
                Builtin::Int8 => ColumnKind::Int8,
                Builtin::Oid => ColumnKind::Oid,
                Builtin::Float4 => ColumnKind::Float4,
                Builtin::Float8 => ColumnKind::Float8,
                Builtin::Numeric => ColumnKind::Numeric,
                Builtin::Text | Builtin::Char => ColumnKind::Text,
                Builtin::Bytea => ColumnKind::Bytea,
                Builtin::Uuid => ColumnKind::Uuid,
                Builtin::Json => ColumnKind::Json,
                Builtin::Jsonb => ColumnKind::Jsonb,
                Builtin::Date => ColumnKind::Date,
                Builtin::Time => ColumnKind::Time,
                Builtin::TimeTz => ColumnKind::TimeTz,
                Builtin::Timestamp => ColumnKind::Timestamp,
                Builtin::TimestampTz => ColumnKind::TimestampTz,
                Builtin::Interval => ColumnKind::Interval,
                Builtin::Inet | Builtin::Macaddr | Builtin::Macaddr8 | Builtin::Money => {
                    ColumnKind::Other
                }
            },
            Resolved::Enum => ColumnKind::Enum,
            Resolved::Array { elem, .. } if depth < MAX_DEPTH => {
                ColumnKind::Array(Box::new(self.kind_at(elem, depth + 1)))
            }
            Resolved::Array { .. } | Resolved::Unknown => ColumnKind::Other,
        }
    }

    /// Decode a column sent in text format (`t`). Never fails: text that does not parse as its
    /// type is kept as [`Value::Other`].
    pub fn parse_text(&self, type_oid: u32, text: &str) -> Value {
        self.text_at(type_oid, text, 0)
    }

    fn text_at(&self, oid: u32, text: &str, depth: u8) -> Value {
        let parsed = match self.resolve(oid) {
            Resolved::Builtin(b) => scalar::parse(b, text),
            Resolved::Enum => Some(Value::Text(text.to_owned())),
            Resolved::Array { elem, delim } if depth < MAX_DEPTH => {
                array::parse(text, delim, &mut |s: &str| self.text_at(elem, s, depth + 1))
            }
            Resolved::Array { .. } | Resolved::Unknown => None,
        };
        parsed.unwrap_or_else(|| Value::Other(text.to_owned()))
    }

    /// Decode a column sent in binary format (`b`, only when the `binary` option is on). Never
    /// fails: a type without a binary decoder here, or bytes that are not its send format, become
    /// [`Value::Other`] holding `\x` and the bytes in hex.
    pub fn parse_binary(&self, type_oid: u32, bytes: &[u8]) -> Value {
        self.binary_at(type_oid, bytes, 0)
    }

    fn binary_at(&self, oid: u32, bytes: &[u8], depth: u8) -> Value {
        let parsed = match self.resolve(oid) {
            Resolved::Builtin(b) => binary::parse(b, bytes),
            // enum_send: the label in the client encoding.
            Resolved::Enum => std::str::from_utf8(bytes)
                .ok()
                .map(|s| Value::Text(s.to_owned())),
            // array_send names its element type itself; that is the one to decode with (it is
            // the base type when the column's element is a domain).
            Resolved::Array { .. } if depth < MAX_DEPTH => {
                binary::array(bytes, &mut |elem, b| self.binary_at(elem, b, depth + 1))
            }
            Resolved::Array { .. } | Resolved::Unknown => None,
        };
        parsed.unwrap_or_else(|| Value::Other(crate::event::bytea_hex(bytes)))
    }
}

#[cfg(test)]
mod tests;
