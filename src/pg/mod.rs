//! The only code that does replication I/O: the connection, the slot and the CopyBoth stream.

pub mod catalog;
pub mod conn;
pub mod error;
pub mod params;
pub mod publication;
pub mod quote;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub(crate) mod tls;
