//! The code, `.env.example` and the README must agree on every variable Coreiix reads.

use std::collections::BTreeSet;

use coreiix::settings::{ALL, Kind};

mod support;

/// Names assigned (or shown commented out) in `.env.example`.
fn example_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(support::repo_root().join(".env.example")).unwrap();
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim_start();
            let (name, _) = l.split_once('=')?;
            (!name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn env_example_lists_exactly_the_variables_the_code_reads() {
    let documented = example_names();
    let known: BTreeSet<String> = ALL.iter().map(|s| s.name.to_owned()).collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    assert!(extra.is_empty(), ".env.example lists variables the code does not read: {extra:?}");
}

#[test]
fn env_example_parses_and_sets_nothing() {
    // Every line is a comment: copying the file changes no default.
    let path = support::repo_root().join(".env.example");
    let file = coreiix::config::EnvFile::read(&path).unwrap();
    for s in ALL {
        assert!(file.value(s).is_none(), "{} is set in .env.example", s.name);
    }
}

#[test]
fn readme_documents_every_configuration_setting() {
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    for s in ALL.iter().filter(|s| s.kind == Kind::Config) {
        assert!(readme.contains(&format!("| `{}` |", s.name)), "README's settings table lacks {}", s.name);
    }
}

/// Environment variables are read in one place only, so the catalogue sees them all.
#[test]
fn no_code_reads_the_environment_behind_the_catalogues_back() {
    let src = support::repo_root().join("src");
    let mut offenders = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let allowed = path.ends_with("config/mod.rs");
            for (n, line) in text.lines().enumerate() {
                let reads = ["env::var(", "env::var_os(", "env::vars(", "env::vars_os("]
                    .iter()
                    .any(|p| line.contains(p));
                if reads && !allowed {
                    offenders.push(format!("{}:{}", path.strip_prefix(&src).unwrap().display(), n + 1));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "environment read outside config/mod.rs: {offenders:?}");
}
