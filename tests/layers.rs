//! The layer rule of docs/ARCHITECTURE.md, checked on the source text, so a forbidden import fails the build's
//! tests instead of waiting for a reviewer:
//! - `services`, `storage` and `domain` never reach up into `app`, `web` or `workers`;
//! - only `web` (and the top-level wiring: `app`, `demo`, `main`) uses actix;
//! - only `storage` uses diesel;
//! - `storage` imports neither `config` nor `services`;
//! - use cases reach the database through the typed storage API, never a `db.run` closure of their own;
//! - no function in `services` is longer than 80 lines;
//! - nothing points outside the repository (to the steering folder beside it).

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MAX_SERVICE_FN_LINES: usize = 80;
/// The folder beside the checkout that a clone does not have (spelled in two parts so this file passes).
const OUTSIDE: &str = concat!("..", "/shared");

/// One rule: files under `dirs` must not contain any of `forbidden` outside comments.
struct Rule {
    what: &'static str,
    dirs: &'static [&'static str],
    forbidden: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        what: "reaches up into app, web or workers",
        dirs: &["src/services", "src/storage", "src/domain"],
        forbidden: &["crate::app", "crate::web", "crate::workers"],
    },
    Rule {
        what: "uses actix outside the web layer",
        dirs: &["src/services", "src/storage", "src/domain", "src/workers"],
        forbidden: &["actix"],
    },
    Rule {
        what: "uses diesel outside storage",
        dirs: &["src/services", "src/web", "src/workers", "src/domain"],
        forbidden: &["diesel"],
    },
    Rule {
        what: "storage imports config or services",
        dirs: &["src/storage"],
        forbidden: &["crate::config", "crate::services"],
    },
    Rule {
        what: "a use case runs its own database closure",
        dirs: &["src/services", "src/web", "src/workers"],
        forbidden: &[".run(move |", "db.run(", ".run(|"],
    },
];

/// The files below `dir` whose extension is one of `exts`, passing over the folders named in `skip`.
fn files_below(dir: &Path, exts: &[&str], skip: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path
                .file_name()
                .is_some_and(|n| skip.iter().any(|s| n == *s))
            {
                files_below(&path, exts, skip, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| exts.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
}

/// The code of a line, without a trailing `//` comment (good enough for `use` lines and calls).
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find(" //") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every `path:line: text` of `source` that breaks `rule`.
fn violations(rule: &Rule, name: &str, source: &str) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| rule.forbidden.iter().any(|f| code(l).contains(f)))
        .map(|(i, l)| format!("{name}:{}: {} — {}", i + 1, rule.what, l.trim()))
        .collect()
}

/// Functions longer than `max` lines: from the `fn` line to the closing brace at its indentation (rustfmt puts
/// it there). Test modules are left out.
fn long_functions(name: &str, source: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("#[cfg(test)]"))
        .unwrap_or(lines.len());
    let mut out = Vec::new();
    for (i, line) in lines[..end].iter().enumerate() {
        let t = line.trim_start();
        let is_fn = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(crate) async fn ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if !is_fn || t.ends_with(';') {
            continue;
        }
        let indent = line.len() - t.len();
        let close = " ".repeat(indent) + "}";
        if let Some(len) = lines[i + 1..end].iter().position(|l| *l == close) {
            let n = len + 2;
            if n > max {
                out.push(format!("{name}:{}: {n} lines — {}", i + 1, t));
            }
        }
    }
    out
}

fn read(rel: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    files_below(&Path::new(ROOT).join(rel), &["rs"], &[], &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(ROOT).unwrap_or(&p).display().to_string();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (name, text)
        })
        .collect()
}

#[test]
fn the_layer_rule_holds_in_the_code() {
    let mut found = Vec::new();
    for rule in RULES {
        for dir in rule.dirs {
            for (name, text) in read(dir) {
                found.extend(violations(rule, &name, &text));
            }
        }
    }
    assert!(found.is_empty(), "layer rule broken:\n{}", found.join("\n"));
}

#[test]
fn no_use_case_is_longer_than_80_lines() {
    let mut found = Vec::new();
    for (name, text) in read("src/services") {
        found.extend(long_functions(&name, &text, MAX_SERVICE_FN_LINES));
    }
    assert!(
        found.is_empty(),
        "functions to split:\n{}",
        found.join("\n")
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut found = Vec::new();
    for dir in ["src", "crates", "tests", "bench", "docs", "templates"] {
        let mut files = Vec::new();
        files_below(
            &Path::new(ROOT).join(dir),
            &["rs", "md", "html", "sh"],
            &["target", "fixtures"],
            &mut files,
        );
        for p in files {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for (i, l) in text.lines().enumerate() {
                if l.contains(OUTSIDE) {
                    found.push(format!("{}:{}: {}", p.display(), i + 1, l.trim()));
                }
            }
        }
    }
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap_or_default();
    if readme.contains(OUTSIDE) {
        found.push(format!("README.md names {OUTSIDE}"));
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}

/// The checks themselves: each catches what it is for, and passes comments and clean code.
#[test]
fn the_checks_catch_what_they_are_for() {
    let up = &RULES[0];
    assert_eq!(
        violations(up, "x.rs", "use crate::app::AppState;\n").len(),
        1
    );
    assert_eq!(
        violations(up, "x.rs", "// see crate::app for wiring\n").len(),
        0
    );
    let closure = &RULES[4];
    assert_eq!(
        violations(
            closure,
            "x.rs",
            "    let n = state.db.run(move |c| f(c)).await?;\n"
        )
        .len(),
        1
    );
    assert_eq!(
        violations(
            closure,
            "x.rs",
            "    let n = state.db.orders().claim(&a).await?;\n"
        )
        .len(),
        0
    );
    let long: String = std::iter::once("pub async fn step() {\n".to_owned())
        .chain((0..85).map(|i| format!("    let x{i} = {i};\n")))
        .chain(std::iter::once("}\n".to_owned()))
        .collect();
    assert_eq!(long_functions("x.rs", &long, 80).len(), 1);
    assert_eq!(long_functions("x.rs", &long, 100).len(), 0);
}
