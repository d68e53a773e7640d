//! sluice's own client-facing HTTP/1.1 wire format (README "Why not tiny_http" says why it is
//! ours): request heads (`parse`), bodies (`body`), the buffered connection (`conn`), response
//! bytes (`write`) and sluice's own answers (`answer`). Exported for the tooling crate, which
//! speaks HTTP with the same parser.

pub mod answer;
pub mod body;
pub mod conn;
pub mod parse;
pub mod write;
