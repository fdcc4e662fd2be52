//! The layer table in `server/src/lib.rs` is the architecture's one statement of who may
//! import whom: a module may use modules of a lower layer (and its own), never one
//! above it. This test reads every `crate::` path in the server's source and fails on
//! an import that runs up the table, and on a module that has no place in it, so a new
//! module must take its place before it lands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each top-level module, read from the table in lib.rs's doc comment.
fn layer_table(lib: &str) -> BTreeMap<String, u32> {
    let mut table = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(Ok(layer)) = cells.first().map(|c| c.parse::<u32>()) else {
            continue;
        };
        for module in cells[1].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                table.insert(module.to_string(), layer).is_none(),
                "{module} is in the layer table twice"
            );
        }
    }
    table
}

/// The modules lib.rs declares.
fn declared(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names through `crate::`: in `use crate::a::..`,
/// `use crate::{a, b::..}` (over several lines) and inline paths `crate::a::f()`.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    let mut group: Option<usize> = None;
    for (i, line) in code.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("//") {
            continue;
        }
        if let Some(depth) = group.as_mut() {
            // Inside `use crate::{ ... };`: top-level names are those at depth 1.
            collect_group(line, depth, i + 1, &mut refs);
            if *depth == 0 {
                group = None;
            }
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            let after = &rest[at + "crate::".len()..];
            // `$crate::` in macros and `foo_crate::` are not this crate.
            let standalone =
                !before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$');
            if standalone {
                if let Some(inner) = after.strip_prefix('{') {
                    let mut depth = 1;
                    collect_group(inner, &mut depth, i + 1, &mut refs);
                    if depth > 0 {
                        group = Some(depth);
                    }
                } else {
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    refs.push((i + 1, name));
                }
            }
            rest = after;
        }
    }
    refs
}

/// Top-level names of a `{...}` use group, tracking nesting across lines: the first
/// word of each item at depth 1.
fn collect_group(text: &str, depth: &mut usize, line: usize, refs: &mut Vec<(usize, String)>) {
    let mut word = String::new();
    let mut at_start = true;
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            if at_start && *depth == 1 {
                word.push(c);
            }
            continue;
        }
        if !word.is_empty() {
            refs.push((line, std::mem::take(&mut word)));
            at_start = false;
        }
        match c {
            '{' => *depth += 1,
            '}' => {
                *depth -= 1;
                if *depth == 0 {
                    return;
                }
            }
            ',' if *depth == 1 => at_start = true,
            _ => {}
        }
    }
    if !word.is_empty() {
        refs.push((line, word));
    }
}

#[test]
fn imports_never_run_up_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let table = layer_table(&lib);
    assert!(table.len() > 10, "the layer table was not found in lib.rs");
    let mut problems = Vec::new();
    for module in declared(&lib) {
        if !table.contains_key(&module) {
            problems.push(format!("module `{module}` has no layer in lib.rs's table"));
        }
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_string())
            .expect("a file name");
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = table.get(&top) else {
            problems.push(format!(
                "{}: module `{top}` has no layer",
                relative.display()
            ));
            continue;
        };
        let code = std::fs::read_to_string(&file).expect("readable source");
        for (line, name) in crate_refs(&code) {
            if name == top || name == "self" {
                continue;
            }
            match table.get(&name) {
                None => problems.push(format!(
                    "{}:{line}: `crate::{name}` is not in the layer table",
                    relative.display()
                )),
                Some(&layer) if layer >= own => problems.push(format!(
                    "{}:{line}: `{top}` (layer {own}) imports `{name}` (layer {layer})",
                    relative.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_every_form_of_import() {
    let code = "use crate::a::X;\nuse crate::{b, c::{D, E}};\nuse crate::{\n    f::G,\n    h,\n};\nlet x = crate::i::j();\n// crate::comment\nuse $crate::k;\n";
    let names: Vec<String> = crate_refs(code).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["a", "b", "c", "f", "h", "i"]);
}
