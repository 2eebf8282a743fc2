//! Micro-benchmarks of frame encoding and hub fan-out (work in progress).
fn main() {
    divan::main();
}
