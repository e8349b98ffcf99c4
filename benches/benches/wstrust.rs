//! The username read from a WS-Trust request (11.9 % of the gate's CPU in
//! the 2026-11-25 profile): the single-pass scan behind `wstrust::username`
//! and `wstrust::credentials` against the quick-xml reader it replaced
//! (`wstrust::reference`), on the two request fixtures of `testdata/` and on
//! a name that needs unescaping. Before measuring, prints the heap
//! allocations per call of each, counted by a global allocator.
//!
//! Run: `cargo bench -p stsgate-benches --bench wstrust`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group};
use stsgate_proxy::wstrust::{credentials, reference, username};

/// Counts allocations (and reallocations) on top of the system allocator.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RST_2005: &[u8] = include_bytes!("../../testdata/wstrust/rst-2005-usernamemixed.xml");
const RST_13: &[u8] = include_bytes!("../../testdata/wstrust/rst-13-usernamemixed.xml");

fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    // The 1.3 request with a name that must be unescaped (an owned string).
    let escaped = String::from_utf8_lossy(RST_13)
        .replace("CONTOSO\\alice", "CONTOSO\\al&#105;ce")
        .into_bytes();
    vec![
        ("rst_13", RST_13.to_vec()),
        ("rst_2005", RST_2005.to_vec()),
        ("rst_13_escaped", escaped),
    ]
}

fn allocations(f: impl Fn()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn print_allocations() {
    println!("heap allocations per call (incl. the returned strings):");
    for (name, body) in fixtures() {
        let body = body.as_slice();
        println!(
            "  {name:15} scan username {}, scan credentials {}, reference username {}, reference credentials {}",
            allocations(|| drop(black_box(username(black_box(body))))),
            allocations(|| drop(black_box(credentials(black_box(body))))),
            allocations(|| drop(black_box(reference::username(black_box(body))))),
            allocations(|| drop(black_box(reference::credentials(black_box(body))))),
        );
    }
}

fn bench(c: &mut Criterion) {
    for (name, body) in fixtures() {
        let body = body.as_slice();
        assert!(username(body).is_some() && reference::username(body).is_some());
        let mut group = c.benchmark_group(format!("wstrust/{name}"));
        group.bench_function("scan_username", |b| b.iter(|| username(black_box(body))));
        group.bench_function("scan_credentials", |b| {
            b.iter(|| credentials(black_box(body)))
        });
        group.bench_function("reference_username", |b| {
            b.iter(|| reference::username(black_box(body)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);

fn main() {
    print_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
