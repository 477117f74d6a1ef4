//! The README's "Your own domain" shows this example's code: each snippet marked
//! `<!-- from <path> -->` must stand in that file as it is (indentation aside), so the README
//! cannot drift from code that compiles and is tested.

use std::path::Path;

const README: &str = include_str!("../../../../README.md");

/// `(path, snippet)` of every marked snippet.
fn snippets() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .trim()
            .strip_prefix("<!-- from ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default().trim();
        assert_eq!(fence, "```rust", "a snippet of {path} starts with ```rust");
        let code: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        found.push((path.to_owned(), normalise(&code.join("\n"))));
    }
    found
}

/// The lines without their indentation and the blank ones.
fn normalise(code: &str) -> String {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_snippet_of_the_readme_is_the_example_s_code() {
    let snippets = snippets();
    assert!(snippets.len() >= 3, "the README's snippets were not found");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (path, snippet) in snippets {
        let source =
            std::fs::read_to_string(root.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            normalise(&source).contains(&snippet),
            "the README's snippet of {path} is not in it:\n{snippet}"
        );
    }
}
