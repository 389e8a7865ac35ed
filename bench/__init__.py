# Benchmarks: per-packet cost of the BPF datapath (`make bench`; results in bench/results/).
