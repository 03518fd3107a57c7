"""`make bench` and the start-up benchmark: run from the repository root (`python -m benchmarks.run`),
never installed with the package. A regular package, so that no installed `benchmarks` shadows it."""
