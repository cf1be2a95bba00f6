//! Compiles the C datapath (`ebpf/*.c`) into BPF objects in OUT_DIR with
//! clang-19, `-Wall -Werror`. Re-runs whenever a `.c` or `.h` under `ebpf/`
//! changes. Fails with the Debian package to install when clang is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest
        .join("../../ebpf")
        .canonicalize()
        .expect("ebpf/ directory");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let clang = std::env::var("VTAP_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=VTAP_CLANG");

    let mut sources = Vec::new();
    watch(&ebpf, &mut sources);
    for src in sources
        .iter()
        .filter(|p| p.parent() == Some(ebpf.as_path()))
    {
        let stem = src.file_stem().unwrap().to_str().unwrap();
        let obj = out.join(format!("{stem}.o"));
        let status = Command::new(&clang)
            .args([
                "-target",
                "bpf",
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
                "-std=gnu11",
            ])
            .arg("-I")
            .arg(ebpf.join("include"))
            .args(["-I", "/usr/include/x86_64-linux-gnu"])
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed ({s}) compiling {}", src.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{clang} not found: install the Debian packages `clang-19 llvm-19 libbpf-dev` \
                 (scripts/install-deps.sh does it), or set VTAP_CLANG"
            ),
            Err(e) => panic!("cannot run {clang}: {e}"),
        }
    }
}

/// Collects the `.c` files and registers every `.c`/`.h` for rerun.
fn watch(dir: &Path, sources: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            watch(&p, sources);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", p.display());
            if p.extension().unwrap() == "c" {
                sources.push(p);
            }
        }
    }
}
