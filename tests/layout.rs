//! The house rules of `src/` (docs/ARCHITECTURE.md "A request's path"), checked on the source:
//! no import circle between files, nor between folders (`front` → `pool` → `upstream` →
//! (`answer`, `state`) → (`observe`, `policy`) → `http`, `config` beside); every file starts with
//! a module doc and stays under 600 lines.
//!
//! An import is any path a file names into the crate: `use crate::…`, `use super::…`,
//! `use self::…`, a `use` of a child module, and the same paths written inline
//! (`crate::runnable::blocking(…)`, `crate::warn!`, which is the file defining the macro). It
//! goes to the file of the longest module the path names (`crate::http::conn::Pace` is
//! `http/conn.rs`; `crate::http::X` is `http/mod.rs`, or the file it re-exports `X` from).
//! Comments and string literals are not read; `super` inside an inline module
//! (`mod tests { … }`) is the file itself. A folder's `mod.rs` is the folder (`between_files`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Import circles known today and allowed until fixed, each as its files' module paths.
const KNOWN_CIRCLES: &[&[&str]] = &[];

/// A module path: `["http", "conn"]` for `src/http/conn.rs`, `[]` for `src/lib.rs`.
type Module = Vec<String>;

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate root (lib.rs)".into()
    } else {
        m.join("::")
    }
}

/// Every source file of the library (not `main.rs`, the binary: it uses `sluice::` from
/// outside) as (module path, text).
fn sources() -> Vec<(Module, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || p == root.join("main.rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod" || l == "lib") {
                m.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((m, rel.display().to_string() + ".rs", text));
        }
    }
    out.sort();
    out
}

/// The text with comments and string and char literals blanked out (lines kept), ASCII only.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        // The length of what starts at `rest` up to the end of `pat` found from `from`.
        let to = |from: usize, pat: &[u8]| {
            (rest.get(from..).unwrap_or_default().windows(pat.len()))
                .position(|w| w == pat)
                .map_or(rest.len(), |p| from + p + pat.len())
        };
        let word_start = i == 0 || !is_ident(b[i - 1]);
        let raw = if rest.starts_with(b"br") { 2 } else { 1 };
        let hashes = rest[raw.min(rest.len())..]
            .iter()
            .take_while(|&&c| c == b'#')
            .count();
        let len = if rest.starts_with(b"//") {
            to(2, b"\n")
        } else if rest.starts_with(b"/*") {
            to(2, b"*/")
        } else if word_start
            && (rest[0] == b'r' || rest.starts_with(b"br"))
            && rest.get(raw + hashes) == Some(&b'"')
        {
            // r"…", r#"…"#, br"…"
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            to(raw + hashes + 1, &close)
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\'', '\u{e9}', 'é'), or else a lifetime ('a).
            let n = text[i + 1..].chars().next().map_or(1, char::len_utf8);
            if rest.get(1) == Some(&b'\\') {
                to(3, b"'")
            } else if rest.get(1 + n) == Some(&b'\'') {
                2 + n
            } else {
                1
            }
        } else {
            out.push(if rest[0].is_ascii() { rest[0] } else { b' ' });
            i += 1;
            continue;
        };
        let len = len.min(rest.len());
        out.extend(
            rest[..len]
                .iter()
                .map(|&c| if c == b'\n' { c } else { b' ' }),
        );
        i += len;
    }
    String::from_utf8(out).expect("ASCII")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path,  // ::
    Open,  // {
    Close, // }
    Comma,
    Semi,
    Star,
    Bang,
    Other(u8),
}

fn tokens(code: &str) -> Vec<Tok> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let j = i + b[i..].iter().take_while(|&&c| is_ident(c)).count();
            out.push(Tok::Ident(code[i..j].to_string()));
            i = j;
        } else if b[i..].starts_with(b"::") {
            out.push(Tok::Path);
            i += 2;
        } else {
            out.push(match c {
                b'{' => Tok::Open,
                b'}' => Tok::Close,
                b',' => Tok::Comma,
                b';' => Tok::Semi,
                b'*' => Tok::Star,
                b'!' => Tok::Bang,
                _ => Tok::Other(c),
            });
            i += 1;
        }
    }
    out
}

/// What one file names into the crate.
#[derive(Default)]
struct Names {
    /// Paths made absolute; a macro as `["!", name]`.
    paths: Vec<Module>,
    /// `pub use` (any visibility): the name it gives in this module, and the path it names.
    reexports: Vec<(String, Module)>,
}

fn crate_paths(module: &[String], children: &BTreeSet<String>, text: &str) -> Names {
    let t = tokens(&code_only(text));
    let mut out = Names::default();
    // The module the code at each point is in: the file's, then inline `mod x { … }` ones.
    let mut here: Module = module.to_vec();
    let mut inline: Vec<usize> = Vec::new(); // brace depth at which each inline module closes
    let mut depth = 0;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if inline.last() == Some(&depth) {
                    inline.pop();
                    here.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some(Tok::Ident(m)), Some(Tok::Open)) = (t.get(i + 1), t.get(i + 2)) {
                    here.push(m.clone());
                    inline.push(depth);
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let end = t[i..]
                    .iter()
                    .position(|x| *x == Tok::Semi)
                    .map_or(t.len(), |p| i + p);
                // `pub use`, `pub(crate) use`, `pub(super) use`.
                let public = (i >= 1 && t[i - 1] == Tok::Ident("pub".into()))
                    || (i >= 4
                        && t[i - 1] == Tok::Other(b')')
                        && t[i - 4] == Tok::Ident("pub".into()));
                let mut leaves = Vec::new();
                use_tree(&t[i + 1..end], Vec::new(), &mut leaves);
                for (leaf, alias) in leaves {
                    let at_child = here.len() == module.len()
                        && leaf.first().is_some_and(|s| children.contains(s));
                    let abs = if at_child {
                        Some(here.iter().chain(&leaf).cloned().collect())
                    } else {
                        absolute(&here, &leaf)
                    };
                    let Some(abs) = abs else { continue };
                    if public && here.len() == module.len() {
                        if let Some(n) = alias.or_else(|| leaf.last().cloned()) {
                            out.reexports.push((n, abs.clone()));
                        }
                    }
                    out.paths.push(abs);
                }
                i = end;
                continue;
            }
            Tok::Ident(k)
                if matches!(k.as_str(), "crate" | "super" | "self")
                    && (i == 0 || t[i - 1] != Tok::Path)
                    && t.get(i + 1) == Some(&Tok::Path) =>
            {
                let mut segs = vec![k.clone()];
                let mut j = i + 1;
                while let (Some(Tok::Path), Some(Tok::Ident(s))) = (t.get(j), t.get(j + 1)) {
                    segs.push(s.clone());
                    j += 2;
                }
                if t.get(j) == Some(&Tok::Bang) && segs.len() == 2 && segs[0] == "crate" {
                    out.paths.push(vec!["!".into(), segs[1].clone()]);
                } else if let Some(abs) = absolute(&here, &segs) {
                    out.paths.push(abs);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The leaves of a use tree (`a::b::{c, d::{e, self}}`, `a::*`, `a as b`) as paths, each
/// with the name it is given (`as`).
type Leaf = (Vec<String>, Option<String>);

fn use_tree(t: &[Tok], prefix: Vec<String>, out: &mut Vec<Leaf>) {
    let mut path = prefix;
    let mut alias = None;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Ident(s) if s == "as" => {
                if let Some(Tok::Ident(a)) = t.get(i + 1) {
                    alias = Some(a.clone());
                }
                break;
            }
            Tok::Ident(s) if s == "self" && !path.is_empty() => {}
            Tok::Ident(s) => path.push(s.clone()),
            Tok::Open => {
                // Split the group at its top-level commas.
                let mut depth = 0;
                let mut start = i + 1;
                for j in i + 1..t.len() {
                    match t[j] {
                        Tok::Open => depth += 1,
                        Tok::Close if depth == 0 => {
                            use_tree(&t[start..j], path.clone(), out);
                            return;
                        }
                        Tok::Close => depth -= 1,
                        Tok::Comma if depth == 0 => {
                            use_tree(&t[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if !path.is_empty() {
        out.push((path, alias));
    }
}

/// A path starting with `crate`, `super` or `self`, made absolute from module `here`; other
/// paths (`std::…`, other crates) are None.
fn absolute(here: &[String], segs: &[String]) -> Option<Module> {
    let mut abs: Module = match segs.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => here.to_vec(),
        _ => return None,
    };
    let mut rest = &segs[1..];
    if segs[0] == "super" {
        abs.pop()?;
    }
    while rest.first().is_some_and(|s| s == "super") {
        abs.pop()?;
        rest = &rest[1..];
    }
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// File-level import edges: (from, to), both files' module paths, never a file to itself.
fn file_edges(files: &[(Module, String)]) -> BTreeSet<(Module, Module)> {
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    // `#[macro_export] macro_rules! name` is `crate::name!`, defined by that file.
    let mut macros = BTreeMap::new();
    for (m, text) in files {
        let code = code_only(text);
        for part in code.split("#[macro_export]").skip(1) {
            if let Some(Tok::Ident(n)) = tokens(part).get(2) {
                macros.insert(n.clone(), m.clone());
            }
        }
    }
    let names: Vec<(&Module, Names)> = files
        .iter()
        .map(|(m, text)| {
            let children: BTreeSet<String> = modules
                .iter()
                .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
                .map(|c| c[m.len()].clone())
                .collect();
            (m, crate_paths(m, &children, text))
        })
        .collect();
    let reexports: BTreeMap<(&Module, &str), &Module> = names
        .iter()
        .flat_map(|(m, n)| {
            n.reexports
                .iter()
                .map(move |(k, to)| ((*m, k.as_str()), to))
        })
        .collect();
    // The file a path lands in: its longest module, or on through that module's re-export.
    let file_of = |path: &Module| {
        let mut path = path.clone();
        for _ in 0..8 {
            let module = (0..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|p| modules.contains(p))
                .expect("the crate root is a module");
            let next = path.get(module.len()).map(String::as_str);
            match next.and_then(|n| reexports.get(&(&module, n))) {
                Some(to) if **to != path[..=module.len()] => {
                    path = to
                        .iter()
                        .chain(&path[module.len() + 1..])
                        .cloned()
                        .collect();
                }
                _ => return module,
            }
        }
        panic!("re-exports that go round: {path:?}")
    };
    let mut edges = BTreeSet::new();
    for (m, n) in &names {
        for path in &n.paths {
            let to = if path[0] == "!" {
                match macros.get(&path[1]) {
                    Some(to) => to.clone(),
                    None => continue,
                }
            } else {
                file_of(path)
            };
            if to != **m {
                edges.insert(((*m).clone(), to));
            }
        }
    }
    edges
}

/// The circles of a graph: its strongly connected components of more than one node, sorted.
fn circles(edges: &BTreeSet<(Module, Module)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&Module> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (_, b) in edges.iter().filter(|(a, _)| *a == n) {
                if seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Module, BTreeSet<Module>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: BTreeSet<Vec<String>> = BTreeSet::new();
    for n in &nodes {
        if !reaches[n].contains(*n) {
            continue;
        }
        let mut circle: Vec<String> = nodes
            .iter()
            .filter(|o| reaches[n].contains(**o) && reaches[*o].contains(*n))
            .map(|o| name(o))
            .collect();
        circle.sort();
        out.insert(circle);
    }
    out.into_iter().collect()
}

/// The edges between files proper: a folder's `mod.rs` (`lib.rs` for the crate) is the folder
/// itself — its declarations, what its files share, its re-exports — so an import between it
/// and a file inside the folder is not one between two files.
fn between_files(edges: &BTreeSet<(Module, Module)>) -> BTreeSet<(Module, Module)> {
    edges
        .iter()
        .filter(|(a, b)| !a.starts_with(b) && !b.starts_with(a))
        .cloned()
        .collect()
}

/// Folder-level edges: a file's folder (its first module segment; `answer.rs` is its own) to
/// another's.
fn folder_edges(edges: &BTreeSet<(Module, Module)>) -> BTreeSet<(Module, Module)> {
    edges
        .iter()
        .map(|(a, b)| {
            (
                a.iter().take(1).cloned().collect(),
                b.iter().take(1).cloned().collect(),
            )
        })
        .filter(|(a, b): &(Module, Module)| a != b)
        .collect()
}

fn graph_of(files: &[(&str, &str)]) -> BTreeSet<(Module, Module)> {
    let files: Vec<(Module, String)> = files
        .iter()
        .map(|(m, t)| {
            let m = if m.is_empty() {
                vec![]
            } else {
                m.split("::").map(String::from).collect()
            };
            (m, t.to_string())
        })
        .collect();
    file_edges(&files)
}

#[test]
fn no_import_circle_between_files_or_folders() {
    let files: Vec<(Module, String)> = sources().into_iter().map(|(m, _, t)| (m, t)).collect();
    let edges = file_edges(&files);
    assert!(
        edges.len() > 50,
        "the parser finds the crate's imports: {edges:?}"
    );
    let known: Vec<Vec<String>> = KNOWN_CIRCLES
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let files_circles = circles(&between_files(&edges));
    let new: Vec<_> = files_circles
        .iter()
        .filter(|c| !known.contains(c))
        .collect();
    assert!(new.is_empty(), "files that import each other: {new:?}");
    let folders = circles(&folder_edges(&edges));
    assert!(
        folders.is_empty(),
        "folders that import each other: {folders:?}"
    );
    for k in &known {
        assert!(
            files_circles.contains(k),
            "{k:?} is no longer a circle: remove it from KNOWN_CIRCLES"
        );
    }
}

#[test]
fn every_source_file_has_a_module_doc_and_stays_under_600_lines() {
    for (_, path, text) in sources() {
        assert!(
            text.starts_with("//!"),
            "src/{path} starts without a module doc (//!)"
        );
        let lines = text.lines().count();
        assert!(lines < 600, "src/{path} has {lines} lines");
    }
}

#[test]
fn the_import_parser_sees_each_kind_of_path_and_finds_circles() {
    let e = graph_of(&[
        (
            "",
            "mod a; mod b; mod c; mod log;\nuse a::x::X;\npub use c::q as cq;\n",
        ),
        (
            "a",
            "pub mod x;\npub mod y;\npub use self::y::Y;\npub struct W;\n",
        ),
        (
            "a::x",
            "//! uses crate::b::z in a comment only\nuse super::{W, Y};\n\
             fn f() { let s = \"crate::b::z\"; let c = '\"'; crate::warn!(\"{}\", s); }\n\
             #[cfg(test)]\nmod tests { use super::*; use super::super::y::{self, Q as R}; }\n",
        ),
        ("a::y", "fn g() -> u8 { crate::b::z::h() }\n"),
        ("b", "pub mod z;\npub(crate) use crate::cq;\n"),
        ("c", "pub fn q() {}\n"),
        ("b::z", "use crate::{a::{x::{self}}, b};\npub fn h() {}\n"),
        (
            "log",
            "#[macro_export]\nmacro_rules! warn { () => {} }\nfn f() { crate::b::cq() }\n",
        ),
    ]);
    let has = |a: &str, b: &str| {
        let m = |s: &str| -> Module {
            if s.is_empty() {
                vec![]
            } else {
                s.split("::").map(String::from).collect()
            }
        };
        e.contains(&(m(a), m(b)))
    };
    assert!(has("", "a::x"), "a child module's relative use: {e:?}");
    assert!(has("a", "a::y"), "self:: in a mod.rs");
    assert!(has("a::x", "a"), "super:: of a file is its folder's mod.rs");
    assert!(
        has("a::x", "a::y"),
        "super::super:: inside an inline module"
    );
    assert!(
        has("a::x", "log"),
        "crate::warn! is the file that exports it"
    );
    assert!(
        !has("a::x", "b::z") && !has("a::x", "b"),
        "comments and strings are not read"
    );
    assert!(has("a::y", "b::z"), "an inline path");
    assert!(
        has("b::z", "a::x") && has("b::z", "b"),
        "nested groups, self in a group"
    );
    assert_eq!(
        circles(&between_files(&e)),
        [vec!["a::x".to_string(), "a::y".into(), "b::z".into()]],
        "{e:?}"
    );
    assert_eq!(
        circles(&folder_edges(&e)),
        [vec!["a".to_string(), "b".into()]]
    );
}
