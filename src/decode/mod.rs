//! Pure decoding of the `pgoutput` stream: bytes in, typed [`Event`]s out. No I/O, no tokio.
//!
//! SKELETON: the decoder helper fills this in. Contract:
//!
//! ```ignore
//! let mut dec = Decoder::new(TypeRegistry::new());
//! dec.decode(wal_start, &xlogdata_payload, &mut |event| sink(event))?;
//! ```

pub mod value;

pub use value::{TypeKind, TypeRegistry};
