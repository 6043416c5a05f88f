//! The architecture's rules, checked on the source: data flows one way and the
//! terminal is one front end among others, so nothing outside `src/tui/` (but the
//! command in `src/main.rs`) may reach into it.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_main_imports_the_terminal_front_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("demo"), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap();
        if rel.starts_with("src/tui") || rel == Path::new("src/main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("tui::") || code.contains("ratatui") || code.contains("crossterm") {
                offenders.push(format!("{}:{}: {line}", rel.display(), n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn no_source_file_grows_past_one_idea() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("demo"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > 560).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
}

/// A service that embeds the probe (`default-features = false, features =
/// ["probe"]`) builds no terminal, CLI, report, demo or test-only crate.
#[test]
fn the_probe_alone_pulls_no_terminal_or_cli_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-e",
            "normal",
            "--no-default-features",
            "--features",
            "probe",
        ])
        .args(["--prefix", "none", "--offline", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"tokio-metrics"), "{tree}");
    for unwanted in [
        "ratatui",
        "crossterm",
        "clap",
        "pbkdf2",
        "portable-pty",
        "vt100",
        "plotters",
    ] {
        assert!(
            !crates.contains(&unwanted),
            "{unwanted} in the probe's tree:\n{tree}"
        );
    }
}
