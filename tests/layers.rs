//! The layer check of docs/ARCHITECTURE.md: every module of `src/` belongs to one layer,
//! and no module names a module of a higher layer. Run it alone with
//! `cargo nextest run --test layers` (or `cargo test --test layers`).
//!
//! A reference is any `crate::…` path in code (comments and doc links are not
//! imports), with `use crate::{a, b::{c, d}}` groups expanded and `super::` resolved
//! against the file's own module. Each path is matched to the longest module named in
//! [`LAYERS`]; a module missing from the table fails the check, so that a new file is
//! given its layer when it is added.

use std::collections::BTreeSet;
use std::path::Path;

/// Layers, bottom up. A module may name modules of its own layer or below.
const LAYERS: &[(&str, u8)] = &[
    // 1. Foundations: what every other layer speaks.
    ("error", 1),
    ("metrics", 1),
    ("protocol", 1),
    ("config", 1),
    // 2. One connection: its frames, socket, queue and rate limit.
    ("connection", 2),
    // 3. The core: the hub (with its coalescer), the backplane contract, who a client is.
    ("hub", 3),
    ("backplane", 3),
    ("auth", 3),
    ("tokens", 3),
    // 4. The engines behind the backplane contract.
    ("backplane::memory", 4),
    ("backplane::redis", 4),
    ("backplane::log_limit", 4),
    // 5. The services a node runs on top of the core.
    ("state", 5),
    ("inbound", 5),
    ("subscriptions", 5),
    ("gaps", 5),
    ("presence", 5),
    ("publish", 5),
    ("history", 5),
    ("recovery", 5),
    ("relay", 5),
    ("streams", 5),
    ("shutdown", 5),
    // 6. The doors: the HTTP API, the WebSocket and the HTTP streaming transports, and
    //    the session behind the last two.
    ("admission", 6),
    ("api", 6),
    ("session", 6),
    ("transports", 6),
    ("ws", 6),
    // 7. The wiring.
    ("listener", 7),
    ("server", 7),
    ("lib", 7),
];

/// Narrower rules inside the layers: (modules, what they may not name, why).
const APART: &[(&str, &str, &str)] = &[
    (
        "backplane::",
        "hub",
        "an engine delivers through `backplane::Inbound`, never to the hub itself",
    ),
    (
        "backplane::",
        "auth",
        "an engine speaks the backplane contract, protocol, error and metrics only",
    ),
    (
        "backplane::",
        "tokens",
        "an engine speaks the backplane contract, protocol, error and metrics only",
    ),
];

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    module: String,
    names: String,
    why: String,
}

/// The layer of a module path: its longest prefix in the table.
fn layer_of(path: &str) -> Option<(&'static str, u8)> {
    LAYERS
        .iter()
        .filter(|(m, _)| path == *m || path.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .copied()
}

/// The module path of a file under `src/`: `src/hub/coalesce.rs` → `hub::coalesce`.
fn module_of(rel: &Path) -> String {
    let s = rel.with_extension("").to_string_lossy().replace('/', "::");
    s.trim_start_matches("src::").to_string()
}

/// The code of a file without its comments (line comments and doc comments).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal is rare in this codebase's `use` lines and
            // paths; cutting there can only hide a reference, never invent one.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let item = tree.split(" as ").next().unwrap_or("").trim();
        if !item.is_empty() && item != "self" {
            out.push(join(prefix, item.trim_end_matches("::")));
        } else if item == "self" {
            out.push(prefix.to_string());
        }
        return;
    };
    let head = tree[..open].trim().trim_end_matches("::");
    let inner = tree[open + 1..].trim_end();
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let base = join(prefix, head);
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&base, &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    expand(&base, &inner[start..], out);
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Every module path a file's code names through `crate::` or `super::`. A module's
/// own unit tests (`#[cfg(test)] mod tests`, at the end of a file) may start a whole
/// node, so they are not held to the layer.
fn references(module: &str, text: &str) -> BTreeSet<String> {
    let code = code_only(text);
    let code = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|m| code.find(m))
    .min()
    .map_or(code.as_str(), |end| &code[..end]);
    let mut found = Vec::new();
    let parent = module.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
    for (root, base) in [("crate::", ""), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(root) {
            // `self::super::` and identifiers ending in `crate` are not paths of ours.
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = if rest.starts_with('{') {
                let mut depth = 0;
                rest.char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map(|(j, _)| j + 1)
                    .unwrap_or(rest.len())
            } else {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                    .unwrap_or(rest.len())
            };
            let path = &rest[..end];
            if path.contains('{') {
                let (head, tree) = path.split_at(path.find('{').unwrap_or(0));
                expand(&join(base, head.trim_end_matches("::")), tree, &mut found);
            } else {
                found.push(join(base, path.trim_end_matches("::")));
            }
        }
    }
    found.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The check itself, over `(file under src/, its text)` pairs.
fn check(files: &[(String, String)]) -> Vec<Violation> {
    let mut violations = BTreeSet::new();
    for (rel, text) in files {
        let module = module_of(Path::new(rel));
        if module == "main" || module.starts_with("bin::") {
            // Binaries use the library from outside, through `herald::`.
            continue;
        }
        let Some((_, own)) = layer_of(&module) else {
            violations.insert(Violation {
                module: module.clone(),
                names: String::new(),
                why: "is in no layer: add it to LAYERS in tests/layers.rs and to docs/ARCHITECTURE.md".into(),
            });
            continue;
        };
        for path in references(&module, text) {
            let Some((target, layer)) = layer_of(&path) else {
                continue;
            };
            if layer > own {
                violations.insert(Violation {
                    module: module.clone(),
                    names: path.clone(),
                    why: format!("layer {own} names `{target}` of layer {layer}"),
                });
            }
            for (from, to, why) in APART {
                if module.starts_with(from) && target == *to {
                    violations.insert(Violation {
                        module: module.clone(),
                        names: path.clone(),
                        why: (*why).to_string(),
                    });
                }
            }
        }
    }
    violations.into_iter().collect()
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            out.push((rel.to_string_lossy().into_owned(), text));
        }
    }
}

#[test]
fn no_module_names_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), root, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let violations = check(&files);
    assert!(
        violations.is_empty(),
        "imports pointing up a layer (docs/ARCHITECTURE.md):\n{}",
        violations
            .iter()
            .map(|v| format!("  {} → {}: {}", v.module, v.names, v.why))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_check_catches_an_upward_import() {
    let file = |path: &str, text: &str| (path.to_string(), text.to_string());
    let files = [
        // The hub (layer 3) reaching for the node's state (layer 5): refused.
        file("src/hub.rs", "use crate::state::AppState;\nfn f() {}\n"),
        // An engine naming the hub in a grouped import: refused.
        file(
            "src/backplane/memory.rs",
            "use crate::{error::BackplaneError, hub::{Hub, Subscriber}};\n",
        ),
        // `super::` from an engine resolves to the contract below it: allowed.
        file("src/backplane/redis.rs", "use super::{Backplane, Link};\n"),
        // Comments and doc links are not imports: allowed.
        file(
            "src/protocol.rs",
            "//! See [`crate::server`].\n/// [`crate::ws::session`]\n",
        ),
        // A path in code, not in a `use`: refused.
        file(
            "src/metrics.rs",
            "fn f() -> crate::streams::ingest::SourceMetrics { todo() }\n",
        ),
        // A file nobody placed in a layer: refused.
        file("src/mystery.rs", "fn f() {}\n"),
        // A module's own tests may start a node: allowed.
        file(
            "src/auth.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::server::Node;\n}\n",
        ),
    ];
    let found: Vec<(String, String)> = check(&files)
        .into_iter()
        .map(|v| (v.module, v.names))
        .collect();
    assert_eq!(
        found,
        vec![
            ("backplane::memory".to_string(), "hub::Hub".to_string()),
            (
                "backplane::memory".to_string(),
                "hub::Subscriber".to_string()
            ),
            ("hub".to_string(), "state::AppState".to_string()),
            (
                "metrics".to_string(),
                "streams::ingest::SourceMetrics".to_string()
            ),
            ("mystery".to_string(), String::new()),
        ]
    );
}
