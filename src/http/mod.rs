//! sluice's own client-facing HTTP/1.1 layer (DESIGN.md §1 says why not tiny_http): request heads
//! (`parse`), bodies (`body`), the buffered connection (`conn`) and response bytes (`write`).

pub mod body;
pub mod conn;
pub mod parse;
pub mod write;
