//! The shape of the code, checked without a cluster: the module graph has no cycle (every
//! `crate::`/`super::`/`self::` arrow between the library's modules goes one way), no function
//! of the library is longer than 60 lines, and one reconcile reads as the five named steps.
//! `cargo test --test architecture -- --nocapture` prints the graph with line counts (of
//! another checkout with `JOBRETRY_ARCH_ROOT=DIR`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const MAX_FUNCTION_LINES: usize = 60;

/// A module of the library: its path (`["controller", "load"]`) and its file.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    /// The file's code, without its tests (`tests.rs` files are skipped, and everything
    /// after a top-level `#[cfg(test)]`).
    code: String,
}

/// The library's sources: this checkout's, or another's (`JOBRETRY_ARCH_ROOT`, to print the
/// graph of an earlier commit).
fn src() -> PathBuf {
    let root = std::env::var("JOBRETRY_ARCH_ROOT");
    let root = root.unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&root).join("src")
}

fn modules() -> Vec<Module> {
    let mut files = Vec::new();
    collect(&src(), &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let rel = file
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .to_string();
            let bin = rel.starts_with("bin/") || rel == "main.rs";
            if bin || rel.ends_with("tests.rs") {
                return None;
            }
            let mut path: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            let text = fs::read_to_string(&file).unwrap();
            let code = text.split("\n#[cfg(test)]").next().unwrap().to_string();
            Some(Module { path, file, code })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every path a `use` statement of `code` names, braces expanded (`a::{b, c::d}`).
fn use_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let starts = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "];
    for (at, line) in code.lines().scan(0, |at, l| {
        let here = *at;
        *at += l.len() + 1;
        Some((here, l))
    }) {
        let t = line.trim_start();
        let Some(rest) = starts.iter().find_map(|p| t.strip_prefix(p)) else {
            continue;
        };
        let from = at + (line.len() - rest.len());
        let Some(end) = code[from..].find(';') else {
            continue;
        };
        let body: String = code[from..from + end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        match ["crate", "super", "self"]
            .iter()
            .any(|p| body.starts_with(p))
        {
            true => expand("", &body, &mut out),
            // `use child::X` in a parent module, or an outside crate (not resolved).
            false => expand("self::", &body, &mut out),
        }
    }
    // Paths used inline, outside `use` statements.
    for (i, _) in code.match_indices("crate::") {
        let tail: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        // `crate::{...}` opens a `use` group, expanded above.
        if !tail.ends_with("::") {
            out.push(tail);
        }
    }
    out
}

fn expand(prefix: &str, body: &str, out: &mut Vec<String>) {
    let Some(open) = body.find('{') else {
        out.push(format!("{prefix}{body}"));
        return;
    };
    let head = &body[..open];
    let inner = &body[open + 1..body.rfind('}').unwrap()];
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&format!("{prefix}{head}"), &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&format!("{prefix}{head}"), &inner[start..], out);
    }
}

/// The module a path names, seen from `from`: the longest module prefix of it.
fn resolve(from: &[String], path: &str, known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match *segments.first()? {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    segments.remove(0);
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    let mut best = base.clone();
    for s in segments {
        base.push(s.to_string());
        if known.contains(&base) {
            best = base.clone();
        }
    }
    Some(best)
}

/// The graph between modules: which module imports which.
fn graph(mods: &[Module]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in mods {
        let arrows = g.entry(m.path.clone()).or_default();
        // A child module named inline (`claim::campaign(..)`) without a `use`.
        let children = known
            .iter()
            .filter(|k| k.len() == m.path.len() + 1 && k.starts_with(&m.path));
        for child in children {
            let name = child.last().unwrap();
            let named = m.code.match_indices(&format!("{name}::")).any(|(i, _)| {
                let before = m.code[..i].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                arrows.insert(child.clone());
            }
        }
        for p in use_paths(&m.code) {
            let to = resolve(&m.path, &p, &known);
            // The crate root only declares modules; a path that names no module of ours
            // (an outside crate) resolves to the importing module itself.
            if let Some(to) = to.filter(|to| *to != m.path && !to.is_empty()) {
                arrows.insert(to);
            }
        }
    }
    g
}

/// A cycle of `g`, if it has one.
fn cycle<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        g: &BTreeMap<N, BTreeSet<N>>,
        stack: &mut Vec<N>,
        done: &mut BTreeSet<N>,
    ) -> Option<Vec<N>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for to in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(to, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn name(path: &[String]) -> String {
    match path.is_empty() {
        true => "crate".into(),
        false => path.join("::"),
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let mods = modules();
    let g = graph(&mods);
    let lines: BTreeMap<&Vec<String>, usize> = mods
        .iter()
        .map(|m| {
            (
                &m.path,
                fs::read_to_string(&m.file).unwrap().lines().count(),
            )
        })
        .collect();
    println!("module graph (file lines, tests included; arrows: imports):");
    for (from, tos) in &g {
        let tos: Vec<String> = tos.iter().map(|t| name(t)).collect();
        println!("  {} ({}) -> {}", name(from), lines[from], tos.join(", "));
    }
    if let Some(c) = cycle(&g) {
        let c: Vec<String> = c.iter().map(|p| name(p)).collect();
        panic!("import cycle: {}", c.join(" -> "));
    }
    // The same at the level of the crate's top modules.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g {
        let f = from.first().cloned().unwrap_or_else(|| "crate".into());
        for t in tos.iter().filter_map(|t| t.first()) {
            if *t != f {
                top.entry(f.clone()).or_default().insert(t.clone());
            }
        }
    }
    if let Some(c) = cycle(&top) {
        panic!("import cycle between top modules: {}", c.join(" -> "));
    }
}

/// Every function of `code` with its length in lines (from its `fn` line to its closing
/// brace at the same indent).
fn functions(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let sig = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(super) fn ",
            "pub(crate) fn ",
            "pub(super) async fn ",
            "pub(crate) async fn ",
        ];
        let Some(rest) = sig.iter().find_map(|s| t.strip_prefix(s)) else {
            continue;
        };
        let fn_name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // A declaration without a body (`fn f();` in a trait) ends with `;` before any `{`.
        let opens = lines[i..].iter().position(|l| l.contains('{'));
        let ends = lines[i..].iter().position(|l| l.trim_end().ends_with(';'));
        if ends.is_some_and(|e| opens.is_none_or(|o| e < o)) {
            continue;
        }
        let close = " ".repeat(indent) + "}";
        if let Some(len) = lines[i..].iter().position(|l| *l == close) {
            out.push((fn_name, len + 1));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_60_lines() {
    let mut long = Vec::new();
    for m in modules() {
        for (f, n) in functions(&m.code) {
            if n > MAX_FUNCTION_LINES {
                long.push(format!("{}::{f} ({n} lines)", name(&m.path)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: {long:#?}"
    );
}

#[test]
fn one_reconcile_reads_as_the_five_named_steps() {
    let text = fs::read_to_string(src().join("controller/reconcile.rs")).unwrap();
    let body = text
        .split("async fn reconcile_once(")
        .nth(1)
        .expect("reconcile_once")
        .split("\n}\n")
        .next()
        .unwrap();
    let steps = [
        ("load::load(", "// IO"),
        ("plan::plan(", "// pure"),
        ("execute::execute(", "// IO"),
        ("machine::step(", "// pure"),
        ("record::record(", "// IO"),
    ];
    let mut at = 0;
    for (k, (call, mark)) in steps.iter().enumerate() {
        let i = at
            + body[at..]
                .find(call)
                .unwrap_or_else(|| panic!("{call} missing or out of order in:\n{body}"));
        // The step's statement runs to the next step (or the end); it carries its mark.
        let next = steps
            .get(k + 1)
            .and_then(|(c, _)| body[i..].find(c))
            .map_or(body.len(), |n| i + n);
        assert!(body[i..next].contains(mark), "{call} is not marked {mark}");
        at = i + call.len();
    }
}
