//! sluice's own client-facing HTTP/1.1 wire format (README "Why not tiny_http" says why it is
//! ours): request heads (`parse`), bodies (`body`), the buffered connection (`conn`, its read buffer `readbuf`) with the
//! minimum rate a client must keep (`pace`), response bytes (`write`) and how a worker writes
//! them without being held by its client (`delivery`). It imports nothing
//! else of sluice. Exported for the tooling crate, which speaks HTTP with the same parser.

pub mod body;
pub mod conn;
pub mod delivery;
pub mod pace;
pub mod parse;
mod readbuf;
pub mod write;
