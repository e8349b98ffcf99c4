//! `RuleSet::compile` of rule files with 100,000 and 1,000,000 IP entries
//! (plus 1,000 application and 1,000 user agent entries): the cost of a
//! reload. PRODUCT.md §5: 1,000,000 entries in under 1 s.
//!
//! Few samples and bounded times, so that the whole file runs in about a
//! minute and a half on two cores.
//!
//! Run: `cargo bench -p stsgate-benches --bench compile`

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use stsgate_benches::{Spec, generate};
use stsgate_rules::{NoFeeds, RuleSet};

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    // Flat sampling: every sample runs the same (small) number of
    // iterations, what long-running benchmarks need.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for (entries, warm_up, measure) in [(100_000usize, 1, 10), (1_000_000, 2, 30)] {
        let text = generate(&Spec::new(entries)).text;
        group.warm_up_time(Duration::from_secs(warm_up));
        group.measurement_time(Duration::from_secs(measure));
        group.throughput(Throughput::Elements(entries as u64));
        group.bench_with_input(BenchmarkId::new("ip_entries", entries), &text, |b, text| {
            // The old rule set is dropped off the request path on reload:
            // keep its drop out of the measurement.
            b.iter_with_large_drop(|| RuleSet::compile("bench.toml", black_box(text), &NoFeeds));
        });
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
