"""Side-by-side benchmarks: ``scripts/bench`` runs them all and writes docs/benchmarks.md."""
