"""The storage service: bundles on disk, atomic writes, verified reads, scrub."""
