use which::which;

/// Rebuilds the eBPF object when bpf-linker changes (a new linker can change the output).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
