//! The crate graph, from the Cargo.toml files: it matches the README's table ("The crates"),
//! and every arrow points down (a crate uses only crates listed above it in that table).

use std::collections::BTreeMap;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// crate -> the workspace crates its `[dependencies]` name, from the Cargo.toml files.
fn manifests() -> BTreeMap<String, Vec<String>> {
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
            } else if in_deps {
                if let Some(dep) = line.strip_suffix(".workspace = true") {
                    if root().join("crates").join(dep).is_dir() {
                        deps.push(dep.to_owned());
                    }
                }
            }
        }
        deps.sort();
        graph.insert(name, deps);
    }
    graph
}

/// The README's table, in its order (bottom floor first).
fn readme() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = text
        .split("## The crates")
        .nth(1)
        .expect("README has a section \"The crates\"");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| crate |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let mut deps: Vec<String> = cells[2]
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "-")
                .map(str::to_owned)
                .collect();
            deps.sort();
            (cells[1].to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_readme_states_the_crate_graph_and_every_arrow_points_down() {
    let graph = manifests();
    let table = readme();
    let listed: BTreeMap<String, Vec<String>> = table.iter().cloned().collect();
    assert_eq!(
        listed, graph,
        "the README's crate table and the Cargo.toml files differ"
    );
    for (i, (name, deps)) in table.iter().enumerate() {
        let below: Vec<&String> = table[..i].iter().map(|(n, _)| n).collect();
        for dep in deps {
            assert!(
                below.contains(&dep),
                "{name} depends on {dep}, which is not on a floor below it"
            );
        }
    }
    // the floors the design fixes
    let pos = |n: &str| table.iter().position(|(c, _)| c == n).unwrap();
    assert!(
        pos("infer") < pos("train"),
        "train builds on infer, never the reverse"
    );
    for torch_free in ["util", "metrics", "volume", "dataset", "evaluate"] {
        let deps = &graph[torch_free];
        assert!(
            !deps
                .iter()
                .any(|d| ["model", "torchext", "infer", "train"].contains(&d.as_str())),
            "{torch_free} must not reach libtorch: {deps:?}"
        );
    }
}
