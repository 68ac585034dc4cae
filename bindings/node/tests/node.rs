//! Runs the package's JavaScript tests (`test/*.test.js`, `node --test`)
//! against a debug build of the addon made by the package's own build
//! script, with the `cairn` binary for the tests that share a store with
//! the command line; and type-checks `test/types.ts` against `index.d.ts`
//! with TypeScript (installed from the package's lock file when missing).
//! Needs node (18 or later) and npm on PATH; `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn target_dir(package: &Path) -> PathBuf {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(package)
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    PathBuf::from(metadata["target_directory"].as_str().expect("a target directory"))
}

#[test]
fn javascript_tests_pass() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let addon = scratch.path().join("cairn.node");
    // The package's build script, as `npm install` runs it (debug here).
    let built = Command::new("node")
        .args(["build.js", "--debug", "--out"])
        .arg(&addon)
        .current_dir(package)
        .status()
        .expect("node is on PATH (Debian: nodejs)");
    assert!(built.success(), "node build.js failed");
    let cli = Command::new(cargo())
        .args(["build", "-p", "cairn-cli", "--bin", "cairn"])
        .current_dir(package)
        .status()
        .expect("cargo runs");
    assert!(cli.success(), "building the cairn binary failed");

    let mut tests: Vec<PathBuf> = std::fs::read_dir(package.join("test"))
        .expect("the test folder")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.js"))
        .collect();
    tests.sort();
    assert!(tests.len() >= 4, "found only {tests:?}");
    let mut node = Command::new("node")
        .arg("--test")
        .args(&tests)
        .current_dir(package)
        .env("CAIRN_NODE_ADDON", &addon)
        .env("CAIRN_BIN", target_dir(package).join("debug").join("cairn"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = node.kill();
            panic!("node --test did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "node --test failed: {status}");
}

#[test]
fn typescript_types_check() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !package.join("node_modules/typescript/bin/tsc").exists() {
        // The dev dependencies, pinned by package-lock.json; no build script.
        let installed = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(package)
            .status()
            .expect("npm is on PATH (Debian: npm)");
        assert!(installed.success(), "npm ci failed");
    }
    let output = Command::new("node")
        .args(["node_modules/typescript/bin/tsc", "--noEmit", "--strict", "--target", "es2022"])
        .args(["--module", "commonjs", "--moduleResolution", "node", "--types", "node", "test/types.ts"])
        .current_dir(package)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "index.d.ts does not type-check its use in test/types.ts:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
