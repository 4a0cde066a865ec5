"""Tools around natpair that are not the product: the namespace lab, demos, benchmarks."""
