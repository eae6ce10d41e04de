//! Benchmarks for cowstore; see benches/ and docs/performance.md.
