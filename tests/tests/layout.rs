//! The crates' layout, as the house style asks for it (`../shared/style.md`, issue 28): no import
//! circle between the files of `limiter-user` or of `limiter-ebpf`, none between the folders of
//! `limiter-user` (its parts: `config` below everything, the agent above everything), and no
//! product file over 600 lines before its tests. No root needed; it reads the sources as text.
//!
//! A file's imports are every `crate::`, `super::` and `self::` path in it (in `use` trees and
//! in code), up to its `#[cfg(test)]` module: tests may reach anywhere.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;

/// The longest a product file may be before its tests.
const MAX_LINES_BEFORE_TESTS: usize = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Every `.rs` file under `dir`, by module path (`config::checker`; `mod.rs` is its folder's
/// module; `lib.rs` and `main.rs` are the crate root, left out).
fn modules(dir: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("a directory entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut module = prefix.to_vec();
            if path.is_dir() {
                module.push(name);
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                match name.as_str() {
                    "lib" | "main" if prefix.is_empty() => continue,
                    "mod" => {}
                    _ => module.push(name),
                }
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &[], &mut out);
    out
}

/// The file's text before its tests, without comments.
fn product_text(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    let comment = Regex::new(r"//[^\n]*").unwrap();
    comment.replace_all(before_tests, "").into_owned()
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    fn split_top(items: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in items.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&items[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&items[start..]);
        parts
    }
    fn walk(prefix: &str, tree: &str, out: &mut Vec<String>) {
        match tree.find('{') {
            Some(open) if tree.ends_with('}') => {
                let head = format!("{prefix}{}", &tree[..open]);
                for item in split_top(&tree[open + 1..tree.len() - 1]) {
                    if !item.is_empty() {
                        walk(&head, item, out);
                    }
                }
            }
            _ => out.push(format!("{prefix}{tree}")),
        }
    }
    walk("", &tree, &mut out);
    out
}

/// Who imports whom, file by file.
fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules(src);
    let use_statement = Regex::new(r"\buse\s+([^;]+);").unwrap();
    let path_in_code = Regex::new(r"\b(?:crate|super|self)(?:::\w+)+").unwrap();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = product_text(file);
        let mut paths: Vec<String> = use_statement
            .captures_iter(&text)
            .flat_map(|c| expand_use(&c[1]))
            .collect();
        paths.extend(path_in_code.find_iter(&text).map(|m| m.as_str().to_owned()));
        let mut imports = BTreeSet::new();
        for path in paths {
            let mut segments: Vec<&str> = path.split("::").collect();
            let mut base: Vec<String> = match segments.first() {
                Some(&"crate") => Vec::new(),
                Some(&"self") => module.clone(),
                Some(&"super") => {
                    // A file's module is named for the file, a folder's (mod.rs) for the folder:
                    // either way `super` is the module one up.
                    let mut parent = module.clone();
                    parent.pop();
                    parent
                }
                _ => continue,
            };
            segments.remove(0);
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base.extend(segments.iter().map(|s| s.to_string()));
            // The longest prefix that is a module is the file imported.
            let target = (1..=base.len())
                .rev()
                .map(|n| base[..n].to_vec())
                .find(|m| modules.contains_key(m));
            if let Some(target) = target
                && target != *module
                && !module.starts_with(&target)
            {
                imports.insert(target);
            }
        }
        graph.insert(module.clone(), imports);
    }
    graph
}

/// The circles of `graph` (strongly connected parts of more than one node), each sorted.
fn circles<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    // Kosaraju: finish order on the graph, then reach back on the reversed one.
    fn visit<N: Ord + Clone>(
        node: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        seen: &mut BTreeSet<N>,
        order: &mut Vec<N>,
    ) {
        if !seen.insert(node.clone()) {
            return;
        }
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, seen, order);
        }
        order.push(node.clone());
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<N, BTreeSet<N>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for node in order.iter().rev() {
        let mut part = Vec::new();
        let mut stack = vec![node.clone()];
        while let Some(n) = stack.pop() {
            if assigned.contains(&n) {
                continue;
            }
            assigned.insert(n.clone());
            part.push(n.clone());
            stack.extend(reversed.get(&n).into_iter().flatten().cloned());
        }
        if part.len() > 1 {
            part.sort();
            found.push(part);
        }
    }
    found
}

fn named(modules: &[Vec<String>]) -> String {
    modules
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" <-> ")
}

#[test]
fn no_import_circle_between_files() {
    for crate_dir in ["limiter-user", "limiter-ebpf"] {
        let graph = import_graph(&workspace().join(crate_dir).join("src"));
        assert!(
            graph.len() > 10,
            "{crate_dir}: found only {} files",
            graph.len()
        );
        let found = circles(&graph);
        assert!(
            found.is_empty(),
            "{crate_dir}: import circles: {}",
            found
                .iter()
                .map(|c| named(c))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

#[test]
fn no_import_circle_between_the_agents_folders() {
    let graph = import_graph(&workspace().join("limiter-user/src"));
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &graph {
        let entry = folders.entry(from[0].clone()).or_default();
        entry.extend(
            tos.iter()
                .map(|to| to[0].clone())
                .filter(|to| *to != from[0]),
        );
    }
    let found = circles(&folders);
    assert!(
        found.is_empty(),
        "limiter-user: folders that import each other: {}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // What users write is below everything, and nothing is above the agent.
    assert_eq!(
        folders.get("config").map(BTreeSet::len),
        Some(0),
        "{folders:?}"
    );
    assert!(
        folders.values().all(|tos| !tos.contains("agent")),
        "{folders:?}"
    );
}

#[test]
fn no_product_file_over_600_lines_before_its_tests() {
    let mut long = Vec::new();
    for crate_dir in ["limiter-user", "limiter-ebpf", "limiter-common"] {
        let src = workspace().join(crate_dir).join("src");
        for file in modules(&src).into_values().chain(
            ["lib.rs", "main.rs"]
                .iter()
                .map(|f| src.join(f))
                .filter(|f| f.exists()),
        ) {
            let text = fs::read_to_string(&file).unwrap();
            let lines = text
                .lines()
                .take_while(|l| !l.starts_with("#[cfg(test)]"))
                .count();
            if lines > MAX_LINES_BEFORE_TESTS {
                long.push(format!("{} ({lines})", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES_BEFORE_TESTS} lines before their tests: {long:?}"
    );
}

#[test]
fn the_checks_see_a_circle_and_a_use_tree() {
    assert_eq!(
        expand_use("crate::{a::b, c::{d, e::F}}"),
        ["crate::a::b", "crate::c::d", "crate::c::e::F"]
    );
    let graph: BTreeMap<u8, BTreeSet<u8>> = [
        (1, BTreeSet::from([2])),
        (2, BTreeSet::from([3])),
        (3, BTreeSet::from([1])),
        (4, BTreeSet::from([1])),
    ]
    .into_iter()
    .collect();
    assert_eq!(circles(&graph), vec![vec![1, 2, 3]]);
}
